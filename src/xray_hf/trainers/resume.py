"""Resumable streaming input for the stage trainers: an endless stream of batches and its JSON state.

`transformers.Trainer` counts epochs as `global_step // len(dataloader)` and resumes by skipping batches. For a
stream, `len()` is only an estimate: a skipped corrupt sample, shards that divide unevenly over workers or a
`MultimodalLoader` whose smaller loader runs dry all end a real epoch early, and the Trainer would then stop
before `max_steps`, replay an epoch on resume, or train nothing. So the Trainer gets a `ResumableLoader`: no
`len()` (it counts optimizer steps only) and one endless stream in which the wrapped loader's epochs follow each
other. The epoch counter and the position are the loader's own; they are saved as JSON with every checkpoint
(`data_state-rank{rank}.json`) and restored on resume, so a resumed run continues with the batch that followed
the checkpoint, bitwise as the uninterrupted run, however often it is resumed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..atomic_io import write_json_atomic

logger = logging.getLogger(__name__)

DATA_STATE_NAME = "data_state-rank{rank}.json"
_END = object()
LEGACY_DATA_STATE_NAME = "data_state-rank{rank}.pt"  # pickled by xray_hf 0.1.0: refused


class ResumableLoader:
    """One endless stream of batches over the epochs of a stateful loader (`StreamingDataLoader`,
    `MultimodalLoader`, or anything with `state_dict`, `load_state_dict`, `__iter__` and optionally `set_epoch`).

    An epoch ends when the wrapped loader stops; the next one starts at once. An epoch that yields no batch at all
    is an error (the stream could never reach `max_steps`). Fetching a batch or the state leaves the process's global
    RNGs as they were (a new DataLoader iterator draws its base seed from torch's), so the model's random draws
    (dropout, DropPath) do not depend on where in the stream a run was resumed.
    """

    def __init__(self, loader: Any):
        for method in ("state_dict", "load_state_dict", "__iter__"):
            if not hasattr(loader, method):
                raise TypeError(f"train_loader must have {method}() (a StreamingDataLoader or MultimodalLoader)")
        self.loader = loader
        self.epoch = 0
        self._batches = 0  # batches yielded so far in `epoch`
        self._restored = False  # the loader holds a loaded position in `epoch`: continue it, do not restart
        self._iterated = False

    def estimated_len(self) -> int | None:
        """Batches per epoch as the wrapped loader estimates them, or None if it has no estimate."""
        try:
            return len(self.loader)
        except TypeError:
            return None

    @property
    def batches_in_epoch(self) -> int:
        return self._batches

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:  # iterated again (another `train()` call): continue where the last iteration stopped
            self.load_state_dict(self.state_dict())
        self._iterated = True
        while True:
            if not self._restored:
                if hasattr(self.loader, "set_epoch"):
                    self.loader.set_epoch(self.epoch)
                self._batches = 0
            self._restored = False
            iterator = iter(self.loader)
            while True:
                with _global_rng_untouched():
                    batch = next(iterator, _END)
                if batch is _END:
                    break
                self._batches += 1
                yield batch
            if self._batches == 0:
                raise RuntimeError(
                    f"epoch {self.epoch} of the training stream yielded no batch: every sample was skipped or the "
                    "source holds less than one batch per rank (check the source, batch_size and the skip counts "
                    "in the log)"
                )
            self.epoch += 1

    def state_dict(self) -> dict:
        # reading a StatefulDataLoader's state can create its iterator, which draws a base seed from torch's RNG
        with _global_rng_untouched():
            return {"epoch": self.epoch, "batches": self._batches, "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue at `state` on the next iteration."""
        missing = {"epoch", "batches", "loader"} - set(state)
        if missing:
            raise ValueError(f"not a ResumableLoader state: missing {sorted(missing)}")
        self.loader.load_state_dict(state["loader"])
        self.epoch, self._batches = int(state["epoch"]), int(state["batches"])
        self._restored = True


@contextlib.contextmanager
def _global_rng_untouched():
    """Restore torch's CPU, NumPy's and Python's global RNG states on exit."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def check_json_state(value: Any, where: str = "state") -> None:
    """Raise a `TypeError` naming the first part of `value` that JSON would not give back unchanged in meaning."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the non-string key {key!r}, which JSON would turn into a string")
            check_json_state(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json_state(item, f"{where}[{index}]")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"{where} is a {type(value).__name__}, which a JSON data state cannot hold")


def save_data_state(state: dict, checkpoint: str, rank: int) -> str:
    """Write one rank's loader state into `checkpoint` as JSON (atomically); returns the path."""
    check_json_state(state, "data state")
    os.makedirs(checkpoint, exist_ok=True)
    path = os.path.join(checkpoint, DATA_STATE_NAME.format(rank=rank))
    write_json_atomic(path, state)
    return path


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` of `output_dir` whose save finished, or None.

    `XrayTrainer` writes every rank's data position first and the Trainer state (`trainer_state.json`) last, so a
    folder whose Trainer state parses is complete; a process killed while saving leaves one without it (or with a
    torn one), which is skipped. Data positions, when there are any, must be there for every rank that wrote one.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := pattern.match(name))),
                   reverse=True)
    for _, name in steps:
        folder = os.path.join(output_dir, name)
        try:
            with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError):
            logger.warning("skipping %s: its save did not finish (no readable trainer_state.json)", folder)
            continue
        ranks = sorted(int(m.group(1)) for f in os.listdir(folder) if (m := re.match(r"^data_state-rank(\d+)\.json$", f)))
        if ranks and ranks != list(range(len(ranks))):
            logger.warning("skipping %s: data positions of ranks %s only", folder, ranks)
            continue
        return folder
    return None


def stage_training_loss(log_history: list[dict[str, Any]]) -> float | None:
    """The mean training loss over every step the logs cover, across resumes (a resumed run's history starts with
    its checkpoint's): each logged `loss` is the mean over the steps since the log before it, so it counts that many
    times. None when no loss was logged. With `LogEveryStepCoveredCallback` the logs cover every step."""
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total += entry["loss"] * (entry["step"] - last)
            steps, last = steps + entry["step"] - last, entry["step"]
    return total / steps if steps else None


def checkpoint_step(checkpoint: str | os.PathLike) -> int | None:
    """The global step a checkpoint was saved at (its `trainer_state.json`), or None if it has no readable one."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_data_state(checkpoint: str, rank: int) -> dict:
    """Read one rank's loader state from `checkpoint`. Pickled states are refused, never unpickled."""
    path = os.path.join(checkpoint, DATA_STATE_NAME.format(rank=rank))
    if not os.path.isfile(path):
        legacy = os.path.join(checkpoint, LEGACY_DATA_STATE_NAME.format(rank=rank))
        if os.path.isfile(legacy):
            raise ValueError(
                f"{checkpoint} holds its data position as a pickle ({os.path.basename(legacy)}, written before data "
                "states were JSON); unpickling can run arbitrary code, so it is refused. Start a new run from the "
                "checkpoint's weights instead of resuming it"
            )
        raise ValueError(
            f"{checkpoint} has no {os.path.basename(path)}: it was not written by a run with a train_loader on this "
            "rank, so the data position cannot be restored"
        )
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a JSON data state ({error}); refusing to guess at it") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a JSON data state (top level is {type(state).__name__}, not an object)")
    return state


__all__ = [
    "DATA_STATE_NAME", "ResumableLoader", "check_json_state", "checkpoint_step", "last_complete_checkpoint",
    "load_data_state", "save_data_state", "stage_training_loss",
]
