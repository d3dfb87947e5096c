"""The run of a pipeline: its directory and `pipeline_state.json` (which steps finished, with the fingerprint of
their settings), the processes of a distributed launch, restarts, and the progress display."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..atomic_io import write_json_atomic
from .config import digest

logger = logging.getLogger(__name__)


STATE_FILE = "pipeline_state.json"


class Ranks:
    """How the processes of a distributed launch (torchrun / accelerate launch) agree. The main process decides
    (which steps are done, where a stage resumes) and alone runs the steps that do not train; the others receive
    its answer or its failure over a gloo group with a long timeout, so a long evaluation does not trip NCCL's
    10-minute one. One process: every call runs directly."""

    def __init__(self, timeout_hours: float = 24.0):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.group = None
        if self.world_size > 1:
            import torch.distributed as dist
            from accelerate import PartialState

            PartialState()  # joins the process group of the launch (the Trainers use the same one)
            self.group = dist.new_group(backend="gloo", timeout=timedelta(hours=timeout_hours))

    def _share(self, value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def on_main(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()` on the main process; its result (or its failure, raised as a `RuntimeError`) on every process."""
        if self.group is None:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException as error:
                self._share(("error", f"{type(error).__name__}: {error}"))
                raise
            return self._share(("ok", result))[1]
        status, value = self._share(None)
        if status == "error":
            raise RuntimeError(f"the main process failed in {what}: {value}")
        return value


@dataclass
class Pipeline:
    """The run directory and its state; what each step reads and writes."""

    output: str
    config: dict[str, Any]
    ranks: Ranks
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    def path(self, *parts: str) -> str:
        return os.path.join(self.output, *parts)

    def save_state(self) -> None:
        if self.is_main:
            write_json_atomic(self.path(STATE_FILE), self.state, indent=1, default=str)


class Progress:
    """The whole run's progress display (one tick per step); each Trainer shows its own below it."""

    def __init__(self, total: int, done: int, show: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc="pipeline", unit="step", position=0, leave=True,
                        disable=not show)

    def write(self, message: str) -> None:
        if not self.bar.disable:
            self.bar.write(message)

    def step(self, name: str) -> None:
        self.bar.set_postfix_str(name)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def apply_restart(pipeline: Pipeline, names: list[str], restart: list[str]) -> None:
    """Forget `restart` steps and every step after the first of them; their stage folders are moved aside."""
    unknown = [name for name in restart if name not in names]
    if unknown:
        raise ValueError(f"--restart {unknown}: not steps of this pipeline ({names})")
    if not restart:
        return
    first = min(names.index(name) for name in restart)
    for name in names[first:]:
        pipeline.state["steps"].pop(name, None)
        folder = pipeline.path(name)
        if pipeline.is_main and os.path.isdir(folder) and name in pipeline.config["stages"]:
            aside = folder + ".previous"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(folder, aside)
            logger.info("restart: moved %s aside to %s", folder, aside)
    if pipeline.is_main and os.path.isdir(pipeline.path("eval")) and "eval" in names[first:]:
        shutil.rmtree(pipeline.path("eval"))
    pipeline.save_state()


def check_finished(pipeline: Pipeline, settings: dict[str, Any]) -> set[str]:
    """The steps a rerun keeps, from each step's settings by name; a finished step whose settings changed since is an
    error naming it."""
    done: set[str] = set()
    for name, step_settings in settings.items():
        record = pipeline.state["steps"].get(name)
        if not record:
            continue
        if record.get("digest") != digest(step_settings):
            raise ValueError(f"the settings of step {name!r} changed since it ran in {pipeline.output}; "
                             f"rerun with --restart {name} to redo it (and the steps after it), or use a new "
                             "--output")
        if record.get("status") == "done":
            done.add(name)
    return done


__all__ = [
    "STATE_FILE", "Pipeline", "Progress", "Ranks", "apply_restart", "check_finished", "read_json",
]
