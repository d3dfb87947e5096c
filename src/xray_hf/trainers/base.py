"""What every xray_hf stage trainer shares: optimizer choice (Lion / AdamW, layer-wise decay), resumable
streaming input (a `MultimodalLoader` or `StreamingDataLoader` whose position is saved with each checkpoint), and
FSDP2 on CPU ranks and GPUs alike (`FSDPTrainerMixin`, `trainers/fsdp_trainer.py`); `XrayTrainerMixin` gathers
what every trainer of the package is.

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

from ..seams.transformers import TrainerSeams
from .fsdp_trainer import FSDPTrainerMixin
from .optim import OPTIMIZERS, build_optimizer, param_groups
from .resume import ResumableLoader, last_complete_checkpoint, load_data_state, save_data_state
from .training_args_json import JSONTrainingArgumentsMixin
from .whole_run import WholeRunMixin

logger = logging.getLogger(__name__)


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


class XrayTrainerMixin(JSONTrainingArgumentsMixin, WholeRunMixin, FSDPTrainerMixin, TrainerSeams):
    """What every trainer of the package is (the stage trainers and the LLM2Vec ones): one run across resumes
    (`WholeRunMixin`), FSDP2 when asked (`FSDPTrainerMixin`), JSON training arguments (`JSONTrainingArgumentsMixin`),
    and the public hooks over the Trainer's private methods (`xray_hf.seams.transformers.TrainerSeams`), which must
    come right before `Trainer`: list it before `Trainer` among the bases."""


class XrayTrainer(XrayTrainerMixin, Trainer):
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
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in output_dir {self.args.output_dir!r} (a save that did not "
                                 "finish does not count)")
        if resume_from_checkpoint and self.train_loader is not None:
            self.train_loader.load_state_dict(load_data_state(resume_from_checkpoint, self.args.process_index))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def before_checkpoint_save(self, checkpoint: str) -> None:
        # every rank writes its own data position first; the Trainer writes trainer_state.json last, so a folder with
        # a readable Trainer state is complete (`last_complete_checkpoint`) even when a save is killed half-way
        super().before_checkpoint_save(checkpoint)
        if self.train_loader is not None:
            save_data_state(self.train_loader.state_dict(), checkpoint, self.args.process_index)
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------- hub
    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any) -> str | None:
        """Save the model and upload `output_dir` as `xray-hf push` does (`xray_hf.hub.push_checkpoint`): weights,
        config, processor files, the model card and self-contained remote code, none of the training state. The repo
        is `args.hub_model_id` (a bare name goes to the token's namespace). Returns its URL on the main process.
        The upload is always blocking; the Trainer's model-card arguments (`tags`, `model_name`, ...) have no effect,
        the card is the package's (`xray_hf.model_card`), so passing them is an error rather than silently lost."""
        from huggingface_hub import HfApi

        from ..hub import push_checkpoint

        if kwargs:
            raise TypeError(f"push_to_hub got Trainer model-card arguments {sorted(kwargs)}, which xray_hf does not "
                            "use: its model card is built from the checkpoint (xray_hf.model_card)")
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        token = token if token is not None else self.args.hub_token
        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        if "/" not in repo_id:
            repo_id = f"{HfApi(token=token).whoami()['name']}/{repo_id}"
        return push_checkpoint(
            self.args.output_dir, repo_id, private=bool(self.args.hub_private_repo if private is None else private),
            revision=revision or self.args.hub_revision, commit_message=commit_message, token=token,
        )

    def push_checkpoint(self, checkpoint_folder: str) -> None:
        """With `push_to_hub=True`, each saved checkpoint's model goes up as `xray-hf push` uploads it (remote code,
        card, no training state), instead of the Trainer's copy of `output_dir`, which also uploads a pickled
        `training_args.bin`, logs and caches. Resumable checkpoints on the Hub (`hub_strategy` "checkpoint" or
        "all_checkpoints") are not uploaded: resume from local checkpoints."""
        from ..hub import push_checkpoint

        if not self.is_world_process_zero() or self.args.hub_strategy == "end":
            return
        if self.args.hub_strategy in ("checkpoint", "all_checkpoints") and not getattr(self, "_warned_hub", False):
            logger.warning("hub_strategy=%r: only the model of each checkpoint is pushed, not its training state",
                           self.args.hub_strategy)
            self._warned_hub = True
        push_checkpoint(checkpoint_folder, self.hub_model_id, private=bool(self.args.hub_private_repo),
                        revision=self.args.hub_revision, token=self.args.hub_token,
                        commit_message=f"Training in progress, step {self.state.global_step}")

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
        args = self.args
        if self.optimizer is None and isinstance(args, XrayTrainingArguments):
            self.shard_for_fsdp()  # the optimizer must see the sharded parameters
            groups = param_groups(self.model if model is None else model, args.learning_rate, args.weight_decay,
                                  args.layer_decay)
            if args.optimizer == "lion":
                betas = (args.lion_beta1, args.lion_beta2)
            else:
                betas = (args.adam_beta1, args.adam_beta2)
            self.optimizer = build_optimizer(args.optimizer, groups, args.learning_rate, betas, args.adam_epsilon)
        return super().create_optimizer(model)

    @staticmethod
    def model_inputs(inputs: dict[str, Any]) -> torch.Tensor:
        """The `pixel_values` of a batch, with a clear error when the collator did not provide them."""
        if "pixel_values" not in inputs:
            raise ValueError(f"batch has no 'pixel_values' (keys: {sorted(inputs)}); check the collator")
        return inputs["pixel_values"]


__all__ = ["XrayTrainer", "XrayTrainerMixin", "XrayTrainingArguments"]
