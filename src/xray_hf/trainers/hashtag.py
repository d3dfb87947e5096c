"""Stage 2 trainer: hashtag classification on image and video batches (paper 4.2.2).

Batches carry `pixel_values` and the multi-hot `labels` that [`HashtagCollator`] builds from each sample's
hashtag list. Evaluation reports mean average precision over the hashtags present in the evaluation set
(`eval_mAP`) and precision at 1 and 5 (`xray_hf.eval.metrics.hashtag_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..losses import hashtag_loss
from ..modeling.hashtag import HASHTAG_LOSSES, HashtagVocabulary
from .base import XrayTrainer, XrayTrainingArguments


@dataclass
class HashtagTrainingArguments(XrayTrainingArguments):
    """Stage 2 settings; `label_smoothing_factor` (from `TrainingArguments`) smooths the hashtag target."""

    hashtag_loss: str = field(
        default="softmax", metadata={"help": "'softmax' over the normalised multi-hot target (Mahajan et al.) or 'bce'"}
    )
    freeze_backbone: bool = field(
        default=False, metadata={"help": "train the hashtag head only on an eval-mode backbone (a linear probe)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hashtag_loss not in HASHTAG_LOSSES:
            raise ValueError(f"hashtag_loss must be one of {HASHTAG_LOSSES}, got {self.hashtag_loss!r}")


class HashtagCollator:
    """Wrap a sample collator: add multi-hot `labels` from each sample's hashtag list (`column`).

    `base` collates the samples (e.g. `xray_hf.data.loader.SampleCollator()`); by default tensors are stacked.
    """

    def __init__(self, vocabulary: HashtagVocabulary, column: str = "hashtags", base: Callable | None = None):
        self.vocabulary = vocabulary
        self.column = column
        self.base = base

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        if self.column not in samples[0]:
            raise ValueError(f"samples have no {self.column!r} column (keys: {sorted(samples[0])})")
        tags = [sample[self.column] for sample in samples]
        if self.base is not None:
            batch = self.base([{k: v for k, v in s.items() if k != self.column} for s in samples])
        else:
            batch = {"pixel_values": torch.stack([torch.as_tensor(s["pixel_values"]) for s in samples])}
        batch["labels"] = self.vocabulary.encode(tags)
        return batch


class HashtagTrainer(XrayTrainer):
    """`Trainer` for [`XrayVisualForHashtagClassification`] with the loss chosen by `args.hashtag_loss`; with
    `args.freeze_backbone` only the head trains (a linear probe) and the backbone stays in eval mode."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "freeze_backbone", False):
            if not callable(getattr(self.model, "freeze_backbone", None)):
                raise ValueError(
                    f"freeze_backbone needs a head model with a freeze_backbone() method (one that keeps the frozen "
                    f"backbone in eval mode), got {type(self.model).__name__}"
                )
            self.model.freeze_backbone()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        pixel_values = self.model_inputs(inputs)
        if "labels" not in inputs:
            raise ValueError("hashtag batches need multi-hot 'labels'; use HashtagCollator")
        args = self.args
        outputs = model(pixel_values=pixel_values)
        # the loss of the global batch: labelled samples are counted over the ranks while training (collective)
        outputs.loss = hashtag_loss(outputs.logits, inputs["labels"], getattr(args, "hashtag_loss", "softmax"),
                                    args.label_smoothing_factor, world_size=args.world_size if model.training else 1)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), outputs.logits.detach(), inputs["labels"].detach()


__all__ = ["HashtagCollator", "HashtagTrainer", "HashtagTrainingArguments"]
