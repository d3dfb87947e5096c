"""The `compress` stage (paper 6.3-6.4): train a CLIP checkpoint's compressed embeddings on its own frozen
embeddings. The towers never run during training: the training set's images (and videos) and texts are embedded
once, the int8 ranges are calibrated on a sample of those embeddings, and `CompressionTrainer` fits the learned
projection (Matryoshka sizes included) with `SimilarityDistillationLoss`. The saved checkpoint is the CLIP model
with `compression_config` in its config and the projection and int8 ranges in `model.safetensors`, plus the
source checkpoint's processor; `results.json` holds the retention on the eval sets (`xray_hf.eval.compression`).
The stage's wiring from a run config is in `compression_run.py`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..losses.compression import SimilarityDistillationLoss
from ..modeling.compression import XrayEmbeddingCompression
from .base import XrayTrainer, XrayTrainingArguments
from .training_args_json import write_training_args
from .fsdp import full_model_state, is_sharded, load_full_model_state

logger = logging.getLogger(__name__)

COMPRESSION_PREFIX = "embedding_compression."  # where an XrayCLIPModel holds its XrayEmbeddingCompression


@dataclass
class CompressionTrainingArguments(XrayTrainingArguments):
    """The compress stage's settings beside `TrainingArguments`."""

    similarity_temperature: float = field(
        default=0.2, metadata={"help": "temperature of the similarity KL term, in units of each row's cosine spread"}
    )
    kl_weight: float = field(default=1.0, metadata={"help": "weight of the neighbour-distribution (KL) term"})
    mse_weight: float = field(default=1.0, metadata={"help": "weight of the cosine-matrix (MSE) term"})
    calibration_samples: int = field(
        default=10000, metadata={"help": "embeddings drawn (without replacement) to calibrate the int8 ranges"}
    )
    balance_modalities: bool = field(
        default=True, metadata={"help": "repeat the texts up to the number of items, so batches mix both"}
    )
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "drop a last partial batch (similarities need a full batch of pairs)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.similarity_temperature <= 0:
            raise ValueError(f"similarity_temperature must be > 0, got {self.similarity_temperature}")
        if self.kl_weight < 0 or self.mse_weight < 0 or self.kl_weight + self.mse_weight == 0:
            raise ValueError(f"kl_weight and mse_weight must be >= 0, not both 0; got {self.kl_weight}, {self.mse_weight}")
        if self.calibration_samples < 2:
            raise ValueError(f"calibration_samples must be >= 2, got {self.calibration_samples}")


class EmbeddingDataset(torch.utils.data.Dataset):
    """Rows of a (N, D) tensor of frozen embeddings as `{"embeds": row}` samples."""

    def __init__(self, embeds: torch.Tensor):
        if embeds.ndim != 2 or embeds.shape[0] < 2:
            raise ValueError(f"embeds must be (N >= 2, D), got {tuple(embeds.shape)}")
        self.embeds = embeds.detach().float().cpu()

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"embeds": self.embeds[index]}


def training_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor | None = None,
                        balance: bool = True) -> torch.Tensor:
    """Items' and texts' embeddings as one training set; with `balance`, the smaller side repeated (whole copies,
    then a prefix) up to the larger side's count, so cross-modal similarities are in every batch."""
    if text_embeds is None or text_embeds.shape[0] == 0:
        return image_embeds
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image and text embeddings differ in size: {image_embeds.shape[1]} vs {text_embeds.shape[1]}")
    if balance:
        small, large = sorted((image_embeds, text_embeds), key=len)
        repeats = -(-len(large) // len(small))
        small = small.repeat(repeats, 1)[: len(large)]
        return torch.cat([large, small])
    return torch.cat([image_embeds, text_embeds])


def compression_of(model: nn.Module) -> XrayEmbeddingCompression:
    """The model's compression module (or `model` itself when it is one), with a clear error when it has none."""
    if isinstance(model, XrayEmbeddingCompression):
        return model
    module = getattr(model, "embedding_compression", None)
    if module is None:
        raise ValueError(
            f"{type(model).__name__} has no embedding_compression: give its config a compression_config "
            "(or call add_embedding_compression())"
        )
    return module


def calibrate_int8(model: nn.Module, embeds: torch.Tensor, samples: int = 10000, seed: int = 0) -> torch.Tensor:
    """Calibrate the model's int8 ranges on up to `samples` rows of `embeds`, drawn without replacement."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(embeds.shape[0], generator=generator)[:samples]
    return compression_of(model).calibrate_int8(embeds[rows])


class CompressionTrainer(XrayTrainer):
    """Fits `model.embedding_compression.projection` on frozen embeddings (`{"embeds": (B, D)}` batches, e.g. from
    `EmbeddingDataset`); every other parameter of the model is frozen. The loss (default: from the compression
    config and the arguments' weights, over every rank's batch) logs its terms beside `loss`.

    The Trainer's model is the compression module itself: DDP and FSDP2 wrap it alone (the frozen towers never run
    here), and the loss calls it through the wrapper, so its gradients are synchronised. Saving (the final model
    and every checkpoint) writes the whole model it belongs to, a `from_pretrained` CLIP checkpoint; resuming reads
    the module's weights back from one.
    """

    def __init__(self, model: nn.Module, args: XrayTrainingArguments, *trainer_args: Any,
                 loss: nn.Module | None = None, **kwargs: Any):
        module = compression_of(model)
        self.owner = None if model is module else model  # the model saved around the trained module
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        module.projection.weight.requires_grad_(True)
        super().__init__(module, args, *trainer_args, **kwargs)
        self.loss = loss or SimilarityDistillationLoss.from_config(
            module.config,
            temperature=getattr(args, "similarity_temperature", 0.2),
            kl_weight=getattr(args, "kl_weight", 1.0),
            mse_weight=getattr(args, "mse_weight", 1.0),
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        if "embeds" not in inputs:
            raise ValueError(f"batch has no 'embeds' (keys: {sorted(inputs)}); use EmbeddingDataset")
        embeds = inputs["embeds"].float()
        compressed = model(embeds, "projection")  # through the DDP / FSDP2 wrapper: gradients are synchronised
        terms = self.loss(compressed, embeds, output_dict=True)
        if model.training:
            self.record_terms({key: value for key, value in terms.items() if key != "loss"})
        return (terms["loss"], {"compressed_embeds": compressed, **terms}) if return_outputs else terms["loss"]

    def train(self, *args: Any, **kwargs: Any):
        output = super().train(*args, **kwargs)
        self.trained_model()  # the owner now holds the trained plain module, not the sharded one it lent
        return output

    def trained_model(self) -> nn.Module:
        """The model to save and evaluate: the owner (a CLIP model) holding the trained module, or the module."""
        module = self.accelerator.unwrap_model(self.model)
        if self.owner is None:
            return module
        if not is_sharded(module):  # after training under FSDP2 the Trainer's module is a new, plain one
            self.owner.embedding_compression = module
        return self.owner

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the owner model with the trained module (a CLIP checkpoint; also each checkpoint's model)."""
        if self.owner is None:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        module = self.accelerator.unwrap_model(self.model)
        state = full_model_state(module) if is_sharded(module) else module.state_dict()  # collective when sharded
        if self.args.should_save:
            owner = self.trained_model()
            weights = {key: value for key, value in owner.state_dict().items() if not key.startswith(COMPRESSION_PREFIX)}
            weights.update({COMPRESSION_PREFIX + key: value.detach().cpu() for key, value in state.items()})
            owner.save_pretrained(output_dir, state_dict=weights)
            write_training_args(self.args, output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def load_checkpoint_weights(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume the module from a checkpoint of its owner (`embedding_compression.*` of its weights)."""
        if self.owner is None or model is not None:
            return super().load_checkpoint_weights(resume_from_checkpoint, model)
        from safetensors import safe_open

        keys = {}
        for path in self._full_weight_files(resume_from_checkpoint):  # the headers only, on every rank
            with safe_open(path, framework="pt") as f:
                keys[path] = [key for key in f.keys() if key.startswith(COMPRESSION_PREFIX)]
        if not any(keys.values()):
            raise ValueError(f"{resume_from_checkpoint} holds no {COMPRESSION_PREFIX}* weights (model.safetensors of "
                             "a compress checkpoint) to resume the compression from")
        self.shard_for_fsdp()
        sharded = is_sharded(self.model)
        state = None
        if not sharded or dist.get_rank() == 0:  # under FSDP2 rank 0 alone reads the tensors, then broadcasts
            state = {}
            for path, names in keys.items():
                with safe_open(path, framework="pt") as f:
                    state.update({key.removeprefix(COMPRESSION_PREFIX): f.get_tensor(key) for key in names})
        if sharded:
            load_full_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)


def fit_embedding_compression(
    model: nn.Module,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor | None = None,
    *,
    output_dir: str | None = None,
    calibrate: bool = True,
    **training: Any,
) -> dict[str, Any]:
    """Train the model's compression on precomputed embeddings outside a run config (tests, scripts): calibrate
    int8 on them, then `CompressionTrainer` with `CompressionTrainingArguments(**training)` (defaults: AdamW,
    lr 1e-3, 300 steps, batch 256, no checkpoints or reports). Returns the Trainer's log history and loss."""
    defaults = {"optimizer": "adamw", "learning_rate": 1e-3, "max_steps": 300, "per_device_train_batch_size": 256,
                "weight_decay": 0.0, "warmup_steps": 10, "lr_scheduler_type": "cosine", "logging_steps": 50,
                "save_strategy": "no", "report_to": [], "disable_tqdm": True, "use_cpu": not torch.cuda.is_available()}
    settings = {**defaults, **training}
    with tempfile.TemporaryDirectory() as scratch:
        args = CompressionTrainingArguments(output_dir=output_dir or scratch, **settings)
        embeds = training_embeddings(image_embeds, text_embeds, args.balance_modalities)
        if calibrate:
            calibrate_int8(model, embeds, args.calibration_samples, args.seed)
        trainer = CompressionTrainer(model, args, train_dataset=EmbeddingDataset(embeds))
        output = trainer.train()
    model.eval()
    return {"train_loss": output.training_loss, "log_history": trainer.state.log_history}


__all__ = [
    "CompressionTrainer", "CompressionTrainingArguments", "EmbeddingDataset", "calibrate_int8", "compression_of",
    "fit_embedding_compression", "training_embeddings",
]
