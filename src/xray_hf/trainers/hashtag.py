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

from ..data.inputs import SourceSpec, build_eval_dataset, build_train_loader, source_table
from ..eval.metrics import hashtag_metrics
from ..losses import hashtag_loss
from ..modeling.hashtag import HASHTAG_LOSSES, HashtagVocabulary
from .base import XrayTrainer, XrayTrainingArguments
from .run import RunContext, StageRun, build_visual_model, image_processor_for


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


@dataclass
class HashtagRunExtras:
    """The hashtag stage's own run-config keys: `vocabulary:` (`source:` a data source to count tags in, default
    the training sources; `column:`, default `hashtags`; plus `HashtagVocabulary.from_tag_lists` arguments)."""

    vocabulary: dict[str, Any] = field(default_factory=dict)


def prepare_hashtag(run: RunContext) -> StageRun:
    """The `hashtag` stage of the run-config table (`xray_hf.stages`)."""
    import os

    from ..data import SampleCollator
    from ..modeling.hashtag import XrayVisualForHashtagClassification

    vocab_spec = dict((run.extras.vocabulary if run.extras else None) or {})
    source = vocab_spec.pop("source", None)
    data = run.data
    vocab_sources = [SourceSpec.from_dict(source)] if source else [s for s in (data.image, data.video) if s]
    column = vocab_spec.pop("column", "hashtags")
    tag_lists = [tags for spec in vocab_sources for tags in source_table(spec)[column]]
    vocabulary = HashtagVocabulary.from_tag_lists(tag_lists, **vocab_spec)
    model = build_visual_model(XrayVisualForHashtagClassification, run.config["model"], **vocabulary.config_kwargs())
    args = run.training_args()
    loader = build_train_loader(data, run.seed, collate_fn=HashtagCollator(vocabulary, base=SampleCollator()),
                                rank=args.process_index, world_size=args.world_size)
    trainer = HashtagTrainer(
        model=model, args=args, data_collator=HashtagCollator(vocabulary), train_loader=loader,
        eval_dataset=build_eval_dataset(data), compute_metrics=hashtag_metrics,
    )

    def after_training(trainer: HashtagTrainer, results: dict) -> None:
        if trainer.eval_dataset is not None:
            results["eval"] = trainer.evaluate()  # on every rank: it shards the set and gathers the predictions

    def save_artifacts(trainer: HashtagTrainer, results: dict, output_dir: str) -> None:
        image_processor_for(data).save_pretrained(output_dir)
        vocabulary.save(os.path.join(output_dir, "hashtag_vocabulary.json"))  # with counts; labels are in config

    return StageRun(trainer, results={"vocabulary_size": len(vocabulary)}, after_training=after_training,
                    save_artifacts=save_artifacts)


__all__ = [
    "HashtagCollator", "HashtagRunExtras", "HashtagTrainer", "HashtagTrainingArguments",
    "prepare_hashtag",
]
