"""What every xray_hf stage trainer shares: optimizer choice (Lion / AdamW, layer-wise decay) and resumable
streaming input (a `MultimodalLoader` or `StreamingDataLoader` whose position is saved with each checkpoint).

The Trainer sees the stream as one endless iterator without `len()` (see `trainers/resume.py`): it counts
optimizer steps only, `max_steps` is always reached, and each checkpoint holds every rank's data position as
JSON, restored on resume so the loader continues with the batch that followed the checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .optim import OPTIMIZERS, build_optimizer, param_groups
from .resume import DATA_STATE_NAME, ResumableLoader, load_data_state, save_data_state


logger = logging.getLogger(__name__)

TRAINING_ARGS_JSON = "training_args.json"


def _multi_process_without_accelerator() -> bool:
    """A multi-process launch (`torchrun`, `accelerate launch`) on a machine with no accelerator."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


@dataclass
class XrayTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the recipe's optimizer settings. `optimizer` replaces transformers' `optim`."""

    optimizer: str = field(default="lion", metadata={"help": f"one of {OPTIMIZERS}; Lion is the paper's (4.5)"})
    lion_beta1: float = field(default=0.9, metadata={"help": "Lion beta1 (paper: 0.9)"})
    lion_beta2: float = field(default=0.99, metadata={"help": "Lion beta2 (paper: 0.99)"})
    layer_decay: float | None = field(
        default=None, metadata={"help": "layer-wise lr decay for fine-tuning, e.g. 0.75; None disables it"}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "kept False: xray_hf collators and losses pick their own columns"}
    )

    def __post_init__(self) -> None:
        if not self.use_cpu and _multi_process_without_accelerator():
            # accelerate sets up gloo DDP for a CPU-only torchrun launch only with `use_cpu`; without it every rank
            # trains alone as rank 0 of 1 (same data, same files) while torch.distributed is initialised
            self.use_cpu = True
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


class JSONTrainingArgumentsMixin:
    """For `Trainer` subclasses: save the training arguments as JSON (`training_args.json`) instead of the Trainer's
    pickled `training_args.bin`, so nothing this package writes needs pickle to read."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            pickled = os.path.join(output_dir, TRAINING_ARGS_NAME)
            if os.path.isfile(pickled):
                os.remove(pickled)
            with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string())


class XrayTrainer(JSONTrainingArgumentsMixin, Trainer):
    """`Trainer` with the recipe's optimizers and resumable streaming input.

    Args (beyond `Trainer`'s):
        train_loader: a stateful loader (`xray_hf.data` `MultimodalLoader` or `StreamingDataLoader`) used instead
            of `train_dataset`; it shards ranks itself, so accelerate does not wrap it.
    """

    def __init__(self, *args: Any, train_loader: Any | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() != self.args.world_size:
            raise ValueError(
                f"torch.distributed has {dist.get_world_size()} processes but the Trainer sees world_size "
                f"{self.args.world_size}: each rank would train alone on the same data. Without accelerators, "
                "set use_cpu=True (accelerate then runs DDP over gloo)"
            )
        if getattr(self.args, "fsdp_plugin_args", None) is not None and not self.is_fsdp_enabled:
            raise ValueError(
                f"FSDP was requested (fsdp={self.args.fsdp!r}) but accelerate did not enable it for "
                f"{self.accelerator.distributed_type}: accelerate shards only on accelerators (GPUs and the like); on "
                "CPU processes the run would silently train unsharded under DDP. Drop `fsdp` to train with DDP"
            )
        # xray_hf losses are per-batch means; the Trainer must not rescale them by token counts
        self.model_accepts_loss_kwargs = False
        self._terms: dict[str, list] = {}  # named per-step values summed until the next log (`record_terms`)
        self.train_loader = ResumableLoader(train_loader) if train_loader is not None else None
        if self.train_loader is not None:
            self.args.ignore_data_skip = True  # the loader's own state positions the data
            if self.args.max_steps <= 0:
                self.args.max_steps = self._steps_from_epochs()

    def _steps_from_epochs(self) -> int:
        """`max_steps` for a run given in epochs: the stream has no exact length, so the loader's estimate of
        batches per epoch sets the number of optimizer steps, which is then always reached."""
        estimate = self.train_loader.estimated_len()
        if estimate is None:
            raise ValueError("a streaming train_loader without a length estimate needs max_steps > 0")
        steps = math.ceil(self.args.num_train_epochs * estimate / self.args.gradient_accumulation_steps)
        logger.info("num_train_epochs=%s with about %d batches per epoch: training for %d optimizer steps",
                    self.args.num_train_epochs, estimate, steps)
        return max(1, steps)

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self):
        if self.train_loader is not None:
            return self.train_loader
        return super().get_train_dataloader()

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in output_dir {self.args.output_dir!r}")
        if resume_from_checkpoint and self.train_loader is not None:
            self.train_loader.load_state_dict(load_data_state(resume_from_checkpoint, self.args.process_index))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.train_loader is not None:  # every rank writes its own position
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_data_state(self.train_loader.state_dict(), folder, self.args.process_index)

    def record_terms(self, values: dict[str, torch.Tensor]) -> None:
        """Add named per-step values (loss terms, the logit scale) to sums kept as tensors (no device sync per step);
        the next training log reports their means."""
        for key, value in values.items():
            total = self._terms.setdefault(key, [0.0, 0])
            total[0], total[1] = total[0] + value.detach(), total[1] + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for key, (total, count) in self._terms.items():
                if count:
                    logs[key] = round(float(total) / count, 6)
            self._terms = {}
        if self.train_loader is not None and "epoch" in logs:
            # the Trainer's epoch is a fraction of max_steps here; report the stream's own epoch instead
            estimate = self.train_loader.estimated_len()
            done = self.train_loader.batches_in_epoch
            fraction = min(done / estimate, 0.999) if estimate else 0.0
            logs["epoch"] = round(self.train_loader.epoch + fraction, 4)
        super().log(logs, start_time)

    # ------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            args = self.args
            if not isinstance(args, XrayTrainingArguments):
                return super().create_optimizer(model)
            groups = param_groups(self.model if model is None else model, args.learning_rate, args.weight_decay,
                                  args.layer_decay)
            if args.optimizer == "lion":
                betas = (args.lion_beta1, args.lion_beta2)
            else:
                betas = (args.adam_beta1, args.adam_beta2)
            self.optimizer = build_optimizer(args.optimizer, groups, args.learning_rate, betas, args.adam_epsilon)
        return self.optimizer

    @staticmethod
    def model_inputs(inputs: dict[str, Any]) -> torch.Tensor:
        """The `pixel_values` of a batch, with a clear error when the collator did not provide them."""
        if "pixel_values" not in inputs:
            raise ValueError(f"batch has no 'pixel_values' (keys: {sorted(inputs)}); check the collator")
        return inputs["pixel_values"]


__all__ = ["DATA_STATE_NAME", "JSONTrainingArgumentsMixin", "ResumableLoader", "XrayTrainer", "XrayTrainingArguments"]
