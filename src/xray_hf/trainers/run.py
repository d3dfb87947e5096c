"""Run one stage from a YAML run config: `xray-hf train <stage> --config configs/<stage>_tiny.yaml`.

A run config has the stage, a seed, the model (a preset or a previous stage's checkpoint, plus config overrides),
the data, the `training:` arguments of the stage's `TrainingArguments` subclass, and the stage's own keys (e.g.
`vocabulary:` for hashtags); `xray_hf.run_config` documents every key and parses it once, before the stage's
`prepare` receives the typed blocks in a `RunContext`. Stages come from the table in
`xray_hf.stages`: this module has no per-stage branch. The run saves the model, its processor and a
`results.json` into `training.output_dir`, plus the stage's artifacts.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import set_seed

from ..run_config import RunConfig
from ..stages import Stage, get_stage
from .resume import stage_training_loss

logger = logging.getLogger(__name__)


def load_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML run config (a mapping; `RunConfig.from_dict` parses it)."""
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping, got {type(config).__name__}")
    return config


@dataclass
class RunContext:
    """What a stage's `prepare` gets: its table entry and its run config, parsed (`xray_hf.run_config`)."""

    stage: Stage
    config: RunConfig

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def model(self) -> Any:
        """The stage's `model:` block (e.g. a `VisionSpec`, a `CLIPModelSpec`)."""
        return self.config.model

    @property
    def data(self) -> Any:
        """The stage's `data:` block: a `DataSpec`, or a `TextDataSpec` for the text stages."""
        return self.config.data

    @property
    def extras(self) -> Any:
        """The stage's own blocks (its `extras` dataclass), or None."""
        return self.config.extras

    @property
    def output_dir(self) -> str:
        return self.config.output_dir

    def training_args(self, **extra: Any):
        """The stage's `TrainingArguments` from `training:` (TensorBoard logging and the run's seed by default)."""
        cls = self.stage.arguments_class()
        return cls(**{"seed": self.seed, "report_to": ["tensorboard"], **self.config.training, **extra})


@dataclass
class StageRun:
    """What a stage's `prepare` returns: the Trainer, results known before training, and what to do after.

    `save_model(trainer, output_dir)` replaces `trainer.save_model` (e.g. to save a LoRA model merged);
    `after_training(trainer, results)` runs on every rank after the model is saved (e.g. a sharded evaluation);
    `save_artifacts(trainer, results, output_dir)` runs on the main process only (processor, plots, files).
    """

    trainer: Any
    results: dict[str, Any] = field(default_factory=dict)
    after_training: Callable[[Any, dict], None] | None = None
    save_artifacts: Callable[[Any, dict, str], None] | None = None
    save_model: Callable[[Any, str], None] | None = None


def run_stage(
    stage: str | Stage, config: Mapping[str, Any] | RunConfig, resume_from_checkpoint: str | bool | None = None
) -> dict[str, Any]:
    """Train one stage as the run config says (a YAML mapping, parsed here, or a `RunConfig` parsed already, e.g. by
    `xray-hf pipeline` at load); returns (and saves as results.json) its numbers."""
    entry = stage if isinstance(stage, Stage) else get_stage(stage)
    if isinstance(config, RunConfig):
        if config.stage != entry.name:
            raise ValueError(f"run_stage({entry.name!r}) got a run config of stage {config.stage!r}")
    else:
        config = RunConfig.from_dict(copy.deepcopy(config), entry)
    context = RunContext(entry, config)
    set_seed(context.seed)
    run = entry.prepare_fn()(context)
    trainer, output_dir = run.trainer, context.output_dir
    results: dict[str, Any] = {"stage": entry.name, **run.results}
    train_output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    # the stage's own loss over all its steps (across resumes), not only over the steps of this call
    whole = stage_training_loss(trainer.state.log_history)
    results["train_loss"] = whole if whole is not None else train_output.training_loss
    results["global_step"] = train_output.global_step
    results["log_history"] = trainer.state.log_history
    if run.save_model is not None:
        run.save_model(trainer, output_dir)
    else:
        trainer.save_model(output_dir)
    if run.after_training is not None:
        run.after_training(trainer, results)
    if trainer.is_world_process_zero():
        if run.save_artifacts is not None:
            run.save_artifacts(trainer, results, output_dir)
        with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
    # the main process saves alone (merged LoRA towers, processors, results): no rank may start reading the
    # output (a next stage in the same launch) before it is complete
    trainer.accelerator.wait_for_everyone()
    return results


def train_from_file(stage: str, path: str | os.PathLike, overrides: dict[str, Any] | None = None,
                    resume_from_checkpoint: str | bool | None = None) -> dict[str, Any]:
    """`xray-hf train <stage> --config <path>`: load the YAML, apply `training:` overrides, run."""
    config = load_run_config(path)
    if overrides:
        config.setdefault("training", {}).update(overrides)
    return run_stage(stage, config, resume_from_checkpoint=resume_from_checkpoint)


__all__ = [
    "RunContext", "StageRun", "load_run_config", "run_stage", "train_from_file",
]
