"""FSDP2 for the package's trainers (`FSDPTrainerMixin`): the model sharded in place before the optimizer is made,
checkpoints in an unsharded run's layout; the sharding itself is `trainers/fsdp.py`."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_pt_utils import reissue_pt_warnings
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..seams.accelerate import mark_prepared
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


__all__ = ["FSDPTrainerMixin"]
