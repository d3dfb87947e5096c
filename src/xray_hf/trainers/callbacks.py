"""Trainer callbacks of the CLIP stage: the logit-scale clamp and progressive resolution (paper 4.3)."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence

from transformers import TrainerCallback

from ..data.transforms import Resolution

logger = logging.getLogger(__name__)

LOGIT_SCALE_MAX = math.log(100)


class LogitScaleClampCallback(TrainerCallback):
    """Clamp the model's `logit_scale` to [0, log 100] after every optimizer step (CLIP, open_clip), so the
    temperature never leaves the range however large a step was."""

    def __init__(self, max_value: float = LOGIT_SCALE_MAX):
        self.max_value = max_value

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        target = _unwrap(model)
        clamp = getattr(target, "clamp_logit_scale", None)
        if clamp is None:
            raise ValueError(f"{type(target).__name__} has no clamp_logit_scale(): not a CLIP model")
        clamp(self.max_value)
        return control


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def parse_schedule(schedule: Sequence[Sequence[int]]) -> list[tuple[int, tuple[int, int]]]:
    """`[[start_step, size], ...]` (size an int or `[height, width]`) -> sorted `(step, (h, w))`, checked."""
    parsed = []
    for entry in schedule:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"each resolution_schedule entry must be [start_step, size], got {entry!r}")
        step, size = entry
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"resolution_schedule start steps must be ints >= 0, got {step!r}")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"resolution_schedule sizes must be positive ints or [height, width], got {entry[1]!r}")
        parsed.append((step, size))
    parsed.sort()
    if not parsed or parsed[0][0] != 0:
        raise ValueError("resolution_schedule must start at step 0")
    if len({step for step, _ in parsed}) != len(parsed):
        raise ValueError(f"resolution_schedule has two entries for one step: {schedule}")
    return parsed


class ProgressiveResolutionCallback(TrainerCallback):
    """Walk a resolution schedule (paper 4.3: 98 -> 154 -> 224 -> 336 -> 448) by setting the shared `Resolution`
    the training transforms read; the backbone interpolates its position embeddings to any size.

    The size for step `s` is the last schedule entry starting at or before `s`. It is set when training begins (so
    a resumed run continues at the resolution of its step) and after every step for the next one. Batches that
    DataLoader workers had already prepared keep their size (a step or two late); `SampleCollator(resolution=...)`
    resizes the stragglers of a batch that straddles the change.
    """

    def __init__(self, resolution: Resolution, schedule: Sequence[Sequence[int]], patch_size: int | None = None):
        self.resolution = resolution
        self.schedule = parse_schedule(schedule)
        if patch_size is not None:
            for _, size in self.schedule:
                if size[0] % patch_size or size[1] % patch_size:
                    raise ValueError(f"resolution_schedule size {size} is not divisible by the patch size {patch_size}")
        self._starts = [step for step, _ in self.schedule]

    def size_at(self, step: int) -> tuple[int, int]:
        return self.schedule[bisect.bisect_right(self._starts, step) - 1][1]

    def _apply(self, step: int) -> None:
        size = self.size_at(step)
        if self.resolution.size != size:
            logger.info("progressive resolution: %s from step %d", size, step)
            self.resolution.set(size)

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(state.global_step)
        return control


__all__ = ["LOGIT_SCALE_MAX", "LogitScaleClampCallback", "ProgressiveResolutionCallback", "parse_schedule"]
