"""What every xray_hf stage trainer shares: optimizer choice (Lion / AdamW, layer-wise decay), resumable
streaming input (a `MultimodalLoader` or `StreamingDataLoader` whose position is saved with each checkpoint), and
FSDP2 on CPU ranks and GPUs alike (`FSDPTrainerMixin`, see `trainers/fsdp.py`).

The Trainer sees the stream as one endless iterator without `len()` (see `trainers/resume.py`): it counts
optimizer steps only, `max_steps` is always reached, and each checkpoint holds every rank's data position as
JSON, restored on resume so the loader continues with the batch that followed the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_pt_utils import reissue_pt_warnings
from transformers.trainer_utils import TrainOutput
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..seams.accelerate import mark_prepared
from ..seams.transformers import TrainerSeams
from .callbacks import LogEveryStepCoveredCallback
from .fsdp import (
    FSDPSettings,
    fsdp_settings,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
    meta_copy,
    shard_model,
    unshard_into,
)
from .optim import OPTIMIZERS, build_optimizer, param_groups
from .resume import (
    DATA_STATE_NAME,
    ResumableLoader,
    checkpoint_step,
    last_complete_checkpoint,
    load_data_state,
    save_data_state,
    stage_training_loss,
)

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


class FSDPTrainerMixin:
    """For `Trainer` subclasses: FSDP2 when the run asks for it (`fsdp`/`fsdp_config` training arguments, or
    `accelerate launch` with an FSDP config), on CPU processes (gloo) and GPUs alike, through `trainers/fsdp.py`.

    accelerate is told nothing about FSDP (on CPU it would silently run DDP, on GPUs wrap the model its own way);
    the model is sharded in place just before the optimizer is created, and marked prepared so that accelerate
    does not wrap it in DDP. Checkpoints hold full tensors in an unsharded run's layout (a DDP checkpoint resumes
    under FSDP2 and the other way round), gathered to rank 0's CPU one tensor at a time when saving and broadcast
    from rank 0's CPU one tensor at a time when resuming, so no device holds a full optimizer state. Gradient
    accumulation reduce-scatters once per optimizer step (`set_requires_gradient_sync`, which accelerate's `no_sync`
    does not call for a model it did not shard). After `train()` the model is a plain module with the full trained
    weights on every rank again, so what runs after training (saving, evaluation on every rank or one, merging
    LoRA) is unchanged; the sharded model, the optimizer and the accelerator's references to them are released
    first. A later `train()` shards it again with a new optimizer (resume from a checkpoint to keep optimizer
    state).
    """

    fsdp: FSDPSettings | None = None
    _fsdp_frame: Any = None  # the model's meta-device frame, filled with the trained weights after training

    def create_accelerator_and_postprocess(self) -> None:
        self.fsdp = fsdp_settings(self.args)
        if self.fsdp is None:
            return super().create_accelerator_and_postprocess()
        if self.args.save_on_each_node:
            raise ValueError("FSDP2 checkpoints are gathered on rank 0 alone: save_on_each_node is not supported")
        if self.fsdp.activation_checkpointing:
            raise ValueError("fsdp_config activation_checkpointing is FSDP1's wrapper; set the training argument "
                             "gradient_checkpointing: true (non-reentrant here) instead")
        plugin_args, env = self.args.fsdp_plugin_args, os.environ.get("ACCELERATE_USE_FSDP")
        self.args.fsdp_plugin_args = None  # accelerate would shard (GPUs) or ignore it (CPU): the mixin shards
        os.environ["ACCELERATE_USE_FSDP"] = "false"
        try:
            super().create_accelerator_and_postprocess()
        finally:
            self.args.fsdp_plugin_args = plugin_args
            if env is None:
                os.environ.pop("ACCELERATE_USE_FSDP", None)
            else:
                os.environ["ACCELERATE_USE_FSDP"] = env

    def shard_for_fsdp(self) -> None:
        """Shard `self.model` in place if the run asked for FSDP2 and it is not sharded yet."""
        if self.fsdp is None or is_sharded(self.model):
            return
        if self.args.world_size < 2:
            raise ValueError("FSDP needs several processes: launch with torchrun or accelerate launch")
        self._fsdp_frame = meta_copy(self.model)
        shard_model(self.model, self.fsdp, device=self.args.device)
        mark_prepared(self.model)  # accelerate's prepare_model then returns it as it is: no DDP around it

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        self.shard_for_fsdp()
        return super().create_optimizer(model)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        if is_sharded(model):
            # The Trainer sets `sync_gradients` before each micro-batch (True on the last of an accumulation group)
            # and wraps the others in `accelerator.no_sync`, which does nothing for a model accelerate did not shard:
            # FSDP2 would reduce-scatter every micro-batch. Unsynced micro-batches accumulate unsharded gradients.
            plugin = self.accelerator.gradient_state.plugin_kwargs
            model.set_requires_gradient_sync(self.accelerator.sync_gradients or plugin.get("sync_each_batch", False))
        return super().training_step(model, inputs, num_items_in_batch)

    def train(self, *args: Any, **kwargs: Any):
        output = super().train(*args, **kwargs)
        self._unshard_model()
        return output

    def _unshard_model(self) -> None:
        """Replace the sharded model by a plain one with its full weights, on every rank (collective)."""
        if self._fsdp_frame is None or not is_sharded(self.model):
            return
        model = unshard_into(self.model, self._fsdp_frame)
        self._fsdp_frame = None
        # drop every reference the Trainer, its callbacks and the accelerator keep to the sharded model, its
        # optimizer (the sharded state) and scheduler, so that only the plain model stays in memory
        self.model = self.model_wrapped = self.callback_handler.model = model
        self.optimizer = self.lr_scheduler = None
        self.callback_handler.optimizer = self.callback_handler.lr_scheduler = None
        self.accelerator.free_memory()

    def load_best_model(self) -> None:
        self._unshard_model()  # then the Trainer loads the best checkpoint's full weights as usual
        super().load_best_model()

    def save_weights(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is None and is_sharded(self.model):
            state_dict = full_model_state(self.model)  # every rank gathers a tensor at a time, rank 0 keeps it
        super().save_weights(output_dir, state_dict)

    def load_checkpoint_weights(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Under FSDP2, a checkpoint's `model.safetensors` (or its shards) is read by rank 0 alone, on the CPU, and
        broadcast one tensor at a time into the sharded model; other checkpoints (a LoRA adapter) load as usual."""
        files = self._full_weight_files(resume_from_checkpoint)
        if self.fsdp is None or model is not None or not files:
            return super().load_checkpoint_weights(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        self.shard_for_fsdp()
        state = None
        if dist.get_rank() == 0:
            state = {}
            for path in files:
                state.update(load_file(path, device="cpu"))
        load_full_model_state(self.model, state)

    @staticmethod
    def _full_weight_files(folder: str) -> list[str]:
        single, index = os.path.join(folder, SAFE_WEIGHTS_NAME), os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
        if os.path.isfile(single):
            return [single]
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                return [os.path.join(folder, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
        return []

    def load_optimizer_state(self, checkpoint: str | None) -> None:
        """Under FSDP2, rank 0 alone reads `optimizer.pt` (memory-mapped, on the CPU) and every rank receives its
        shards one tensor at a time: the Trainer would load the full state onto every device (`map_location`)."""
        if checkpoint is None or not is_sharded(self.model):
            return super().load_optimizer_state(checkpoint)
        optimizer_file, scheduler_file = (os.path.join(checkpoint, name) for name in (OPTIMIZER_NAME, SCHEDULER_NAME))
        if not (os.path.isfile(optimizer_file) and os.path.isfile(scheduler_file)):
            return  # as the Trainer: a checkpoint without them starts a fresh optimizer
        state = None
        if dist.get_rank() == 0:
            state = torch.load(optimizer_file, map_location="cpu", weights_only=True, mmap=True)
        load_full_optimizer_state(self.model, self.optimizer, state)
        with warnings.catch_warnings(record=True) as caught_warnings:
            self.lr_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))
        reissue_pt_warnings(caught_warnings)

    def save_optimizer_state(self, output_dir: str) -> None:
        if not is_sharded(self.model):
            return super().save_optimizer_state(output_dir)
        state = full_optimizer_state(self.model, self.optimizer)  # on rank 0 only: an unsharded run's layout
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, OPTIMIZER_NAME))
            with warnings.catch_warnings(record=True) as caught_warnings:
                torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
            reissue_pt_warnings(caught_warnings)


class WholeRunMixin:
    """For `Trainer` subclasses: a run resumed any number of times is still one run.

    - Its logs cover every step (`LogEveryStepCoveredCallback`), so the stage's training loss over all its steps is
      read from `state.log_history` (`stage_training_loss`), not only over the steps since the last resume.
    - Resuming from a checkpoint saved at `max_steps` (a finished run: `--resume last`, or a pipeline rerun after an
      interruption in evaluation or reporting) trains nothing and leaves the model with the checkpoint's weights and
      the Trainer with its state. The Trainer itself would enter its epoch loop and take one more optimizer step
      before checking whether to stop (always with the endless streams, which have no `len()`; with a map-style
      dataset when `max_steps` ends mid-epoch).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_callback(LogEveryStepCoveredCallback())

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = last_complete_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, (str, os.PathLike)) and self.args.max_steps > 0:
            step = checkpoint_step(checkpoint)
            if step is not None and step >= self.args.max_steps:
                return self._finished_run(os.fspath(checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _finished_run(self, checkpoint: str) -> TrainOutput:
        """Load a finished run's checkpoint (weights and Trainer state) instead of training."""
        logger.warning("%s was saved at step %d of max_steps %d: nothing left to train, the run is its checkpoint",
                       checkpoint, checkpoint_step(checkpoint), self.args.max_steps)
        self.load_checkpoint_weights(checkpoint)
        unshard = getattr(self, "_unshard_model", None)
        if unshard is not None:
            unshard()  # FSDP2 loads into the sharded model: back to a plain one, as after training
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        loss = stage_training_loss(self.state.log_history)
        loss = float("nan") if loss is None else loss
        return TrainOutput(self.state.global_step, loss, {"train_loss": loss})


class JSONTrainingArgumentsMixin(WholeRunMixin, FSDPTrainerMixin, TrainerSeams):
    """For `Trainer` subclasses: save the training arguments as JSON (`training_args.json`) instead of the Trainer's
    pickled `training_args.bin`, so nothing this package writes needs pickle to read. Every trainer of the package
    derives from it (the LLM2Vec ones too), so it also brings `WholeRunMixin`, `FSDPTrainerMixin` and the public
    hooks over the Trainer's private methods (`xray_hf.seams.transformers.TrainerSeams`), which must come right
    before `Trainer`: list it before `Trainer` among the bases."""

    def save_weights(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super().save_weights(output_dir, state_dict)
        if self.args.should_save:
            write_training_args(self.args, output_dir if output_dir is not None else self.args.output_dir)


def write_training_args(args: TrainingArguments, output_dir: str) -> None:
    """`training_args.json` in `output_dir`, and no pickled `training_args.bin` (removed if the Trainer wrote it)."""
    pickled = os.path.join(output_dir, TRAINING_ARGS_NAME)
    if os.path.isfile(pickled):
        os.remove(pickled)
    with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
        f.write(args.to_json_string())


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


__all__ = [
    "DATA_STATE_NAME", "FSDPTrainerMixin", "JSONTrainingArgumentsMixin", "ResumableLoader", "WholeRunMixin",
    "XrayTrainer", "XrayTrainingArguments", "write_training_args",
]
