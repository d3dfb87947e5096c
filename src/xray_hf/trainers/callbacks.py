"""Trainer callbacks: logs that cover every step (all stages), the logit-scale clamp and progressive resolution
(paper 4.3) of the CLIP stage."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ..configuration.clip import LOGIT_SCALE_MAX
from ..data.transforms import Resolution

logger = logging.getLogger(__name__)

PIXEL_KEYS = ("pixel_values", "simclr_view_1", "simclr_view_2")  # the batch entries progressive resolution sizes


class LogEveryStepCoveredCallback(TrainerCallback):
    """Log the training loss at every checkpoint and at the last step too (when logging is on), so that the logs
    cover every step: a checkpoint's `log_history` then holds the loss of each step before it (a resumed run
    starts counting after the checkpoint; the steps since the last log would otherwise be lost), and the stage's
    training loss over all its steps can be read from the logs (`xray_hf.trainers.resume.stage_training_loss`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.logging_strategy != "no" and (control.should_save or state.global_step >= state.max_steps):
            control.should_log = True
        return control


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
    """Walk a resolution schedule (paper 4.3: 98 -> 154 -> 224 -> 336 -> 448); the backbone interpolates its position
    embeddings to any size. The batch of step `s` has the size of the last schedule entry starting at or before `s`.

    A batch's size is a function of the step it is for, never of when it was prepared: the training transforms decode
    at one fixed size, the schedule's largest (`decode_size`, set on the shared `Resolution` when training begins),
    and the trainer resizes each batch in the main process to `size_at(step)` just before its forward
    (`resize_batch`). DataLoader workers prepare batches steps ahead of their use: had they followed the schedule, an
    uninterrupted run would train several steps after a change on batches of the old size, and a run resumed after
    the change would not, so it could not resume exactly.
    """

    def __init__(self, resolution: Resolution, schedule: Sequence[Sequence[int]], patch_size: int | None = None):
        self.resolution = resolution
        self.schedule = parse_schedule(schedule)
        if patch_size is not None:
            for _, size in self.schedule:
                if size[0] % patch_size or size[1] % patch_size:
                    raise ValueError(f"resolution_schedule size {size} is not divisible by the patch size {patch_size}")
        self._starts = [step for step, _ in self.schedule]
        self.decode_size = (max(h for _, (h, _) in self.schedule), max(w for _, (_, w) in self.schedule))

    def size_at(self, step: int) -> tuple[int, int]:
        return self.schedule[bisect.bisect_right(self._starts, step) - 1][1]

    def resize_batch(self, inputs: dict[str, Any], step: int, keys: Sequence[str] = PIXEL_KEYS) -> dict[str, Any]:
        """`inputs` with its image / video tensors (`keys`: (B, C, H, W) or (B, T, C, H, W)) resized to the size of
        `step` (bilinear with antialiasing, as the training transforms resize); other entries as they are."""
        size = self.size_at(step)
        out = dict(inputs)
        for key in keys:
            value = inputs.get(key)
            if not (torch.is_tensor(value) and value.is_floating_point() and value.ndim in (4, 5)):
                continue
            if tuple(value.shape[-2:]) != size:
                flat = value.reshape(-1, *value.shape[-3:]).float()
                resized = F.interpolate(flat, size=size, mode="bilinear", antialias=True, align_corners=False)
                out[key] = resized.to(value.dtype).reshape(*value.shape[:-2], *size)
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resolution.size != self.decode_size:
            logger.info("progressive resolution: batches decoded at %s, resized to the schedule's size per step",
                        self.decode_size)
            self.resolution.set(self.decode_size)
        return control


__all__ = [
    "PIXEL_KEYS", "LogEveryStepCoveredCallback", "LogitScaleClampCallback", "ProgressiveResolutionCallback",
    "parse_schedule",
]
