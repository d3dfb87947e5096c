"""Stage 3 trainer: CLIP + SLIP + denoising + siamese captions on image and video batches (paper 4.2.3-4.2.5, 4.3,
4.7.1), with the LLM2CLIP text tower fed from its embedding cache when the LLM is frozen.

Batches come from the multimodal loader (one modality per batch); `CLIPCollator` turns each sample's sampled
caption (`text`) and hashtag text (`hashtag_text`, see `xray_hf.data.CaptionSampler`) into the text tower's
input: tokens, or cached pooled LLM outputs. `CLIPTrainer.compute_loss` runs the model for features and applies
`CLIPStageLoss` across ranks (local loss, gather with gradients); identical captions in a batch share a group id
and are not each other's negatives. `gradient_cache_chunk_size` trains a large contrastive batch in chunks with
gradient caching. Evaluation reports zero-shot and retrieval metrics on the eval split.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from torch import nn

from ..caches.common import text_sha256
from ..caches.text import TextEmbeddingCache
from ..eval.training import clip_eval_metrics
from ..losses import CLIPStageLoss
from .base import XrayTrainer, XrayTrainingArguments
from .callbacks import LogitScaleClampCallback, ProgressiveResolutionCallback, parse_schedule
from .grad_cache import cached_encode, split_batch

logger = logging.getLogger(__name__)

# batch keys the model takes, and the model-output fields the loss takes
MODEL_INPUTS = (
    "pixel_values", "input_ids", "attention_mask", "llm_pooled_output", "hashtag_input_ids",
    "hashtag_attention_mask", "hashtag_llm_pooled_output", "hashtag_mask", "simclr_view_1", "simclr_view_2",
)
FEATURES = (
    "image_embeds", "text_embeds", "logit_scale", "hashtag_embeds", "hashtag_mask", "slip_embeds_1", "slip_embeds_2",
    "denoised_embeds", "denoise_target",
)


@dataclass
class CLIPTrainingArguments(XrayTrainingArguments):
    """Stage 3 settings beside `TrainingArguments` (Lion by default, paper 4.5)."""

    resolution_schedule: list[list[Any]] | None = field(
        default=None, metadata={"help": "progressive resolution (paper 4.3): [[start_step, size], ...] from step 0"}
    )
    gradient_cache_chunk_size: int | None = field(
        default=None, metadata={"help": "embed the batch in chunks of this size with gradient caching (None: off)"}
    )
    group_identical_captions: bool = field(
        default=True, metadata={"help": "identical captions in a batch are not each other's negatives"}
    )
    zero_shot_templates: list[str] | None = field(
        default=None, metadata={"help": "zero-shot prompt templates for evaluation ({} = class name)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution_schedule is not None:
            parse_schedule(self.resolution_schedule)
        if self.gradient_cache_chunk_size is not None and self.gradient_cache_chunk_size < 1:
            raise ValueError(f"gradient_cache_chunk_size must be >= 1 or None, got {self.gradient_cache_chunk_size}")
        if self.gradient_accumulation_steps > 1:
            raise ValueError(
                "gradient_accumulation_steps > 1 would shrink the contrastive batch to each micro-batch (fewer "
                "negatives); for a batch larger than memory use gradient_cache_chunk_size, which keeps every negative"
            )


# ------------------------------------------------------------------------------------------------- text inputs
class TokenizedTexts:
    """Texts -> `input_ids` / `attention_mask` with the text tower's tokenization (`text_config.tokenize`)."""

    def __init__(self, tokenizer: Any, text_config: Any):
        self.tokenizer, self.text_config = tokenizer, text_config

    @classmethod
    def for_config(cls, tokenizer: Any, text_config: Any) -> "TokenizedTexts":
        return cls(tokenizer, text_config)

    def __call__(self, texts: Sequence[str], prefix: str = "") -> dict[str, torch.Tensor]:
        tokens = self.text_config.tokenize(self.tokenizer, texts)
        return {f"{prefix}input_ids": tokens["input_ids"], f"{prefix}attention_mask": tokens["attention_mask"]}


class CachedTexts:
    """Texts -> cached pooled LLM outputs (`llm_pooled_output`), looked up by the text's sha256, for the LLM2CLIP
    tower with a frozen LLM: a training step then runs only the adapter and projection."""

    def __init__(self, cache: TextEmbeddingCache):
        self.cache = cache

    def __call__(self, texts: Sequence[str], prefix: str = "") -> dict[str, torch.Tensor]:
        try:
            pooled = self.cache.lookup([text_sha256(text) for text in texts])
        except KeyError:
            missing = [text for text in texts if text_sha256(text) not in self.cache][:3]
            raise ValueError(
                f"texts not in the text cache at {self.cache.path}: {missing}; rebuild it over every text the "
                "caption sampler can draw (CaptionSampler.candidate_texts)"
            ) from None
        return {f"{prefix}llm_pooled_output": pooled}


def text_group_ids(texts: Sequence[str]) -> torch.Tensor:
    """An int64 id per distinct text (identical texts share one, on every rank)."""
    return torch.tensor([int(hashlib.sha256(t.encode()).hexdigest()[:15], 16) for t in texts], dtype=torch.int64)


class CLIPCollator:
    """Collate decoded samples (`base`, e.g. `SampleCollator(resolution)`) and add the text tower's inputs for
    their `text` (and, with `hashtags`, their `hashtag_text`, plus `hashtag_mask` for items that have one) and
    `group_ids`: one per distinct caption, or per `caption_group` (a class, for template captions), and
    `hashtag_group_ids`: one per distinct hashtag text."""

    def __init__(self, texts: TokenizedTexts | CachedTexts, base: Any = None, hashtags: bool = False,
                 group_identical_captions: bool = True):
        from ..data import SampleCollator

        self.texts, self.base = texts, base or SampleCollator()
        self.hashtags, self.group_identical_captions = hashtags, group_identical_captions

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        if "text" not in samples[0]:
            raise ValueError(f"samples have no 'text' (keys: {sorted(samples[0])}); decode them with CaptionSampler")
        texts = [sample["text"] for sample in samples]
        batch = self.base([{k: v for k, v in s.items() if k not in ("text", "hashtag_text", "caption_group")}
                           for s in samples])
        batch.update(self.texts(texts))
        if self.group_identical_captions:  # identical captions, or captions of one class (CaptionSampler)
            batch["group_ids"] = text_group_ids([sample.get("caption_group", text) for sample, text in zip(samples, texts)])
        if self.hashtags:
            tags = [sample.get("hashtag_text") or "" for sample in samples]
            batch["hashtag_mask"] = torch.tensor([bool(tag) for tag in tags])
            # an item without hashtags is masked out of the hashtag term: any text may stand in for it
            batch.update(self.texts([tag or text for tag, text in zip(tags, texts)], prefix="hashtag_"))
            if self.group_identical_captions:  # identical hashtag texts are not each other's negatives
                batch["hashtag_group_ids"] = text_group_ids(tags)
        return batch


# ---------------------------------------------------------------------------------------------------- trainer
class CLIPTrainer(XrayTrainer):
    """`Trainer` for [`XrayCLIPModel`] (see the module docstring).

    Args (beyond `XrayTrainer`'s):
        resolution: the shared `Resolution` of the training transforms, walked by `args.resolution_schedule`.
        tokenizer: the text tower's tokenizer (evaluation texts; saved with the model as its processing class).
        text_inputs: how evaluation texts reach the text tower (`TokenizedTexts`, or `CachedTexts` with the
            tokenizer as fallback for texts that are not cached); defaults to tokens.
        eval_caption_column: the caption column of the eval sets, for retrieval where a set has it. Zero-shot runs
            where a set has a `ClassLabel` column `label`, over its class names.

    `eval_dataset` may be one set or a dict of named sets (metrics then named `eval_<name>_...`).
    """

    def __init__(self, *args: Any, resolution: Any = None, tokenizer: Any = None, text_inputs: Any = None,
                 eval_caption_column: str = "caption", slip_videos: bool = True, **kwargs: Any):
        if tokenizer is not None:
            kwargs.setdefault("processing_class", tokenizer)
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.text_inputs = text_inputs
        self.eval_caption_column = eval_caption_column
        self.slip_videos = slip_videos
        self.add_callback(LogitScaleClampCallback())
        schedule = getattr(self.args, "resolution_schedule", None)
        self.progressive: ProgressiveResolutionCallback | None = None
        if schedule:
            if resolution is None:
                raise ValueError("resolution_schedule needs the training transforms' shared `resolution`")
            config = self.model.config
            patch = getattr(config, "vision_config", config).patch_size  # a CLIP model, or a backbone (distillation)
            self.progressive = ProgressiveResolutionCallback(resolution, schedule, patch_size=patch)
            self.add_callback(self.progressive)
        self._loss_fn: CLIPStageLoss | None = None
        self._warned_hashtags = False

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        if self.progressive is not None:  # the size of the step this batch is for, whenever it was prepared
            inputs = self.progressive.resize_batch(inputs, self.state.global_step)
        return super().training_step(model, inputs, num_items_in_batch)

    # -------------------------------------------------------------------------------------------------- loss
    @property
    def loss_fn(self) -> CLIPStageLoss:
        """The stage's loss, distributed over this run's ranks (built on first use, after accelerate set up)."""
        if self._loss_fn is None:
            config = self.accelerator.unwrap_model(self.model).config
            self._loss_fn = CLIPStageLoss.from_config(
                config, rank=self.args.process_index, world_size=self.args.world_size
            )
        return self._loss_fn

    def _model_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        self.model_inputs(inputs)  # pixel_values present
        if "input_ids" not in inputs and "llm_pooled_output" not in inputs:
            raise ValueError(f"batch has no text (input_ids or llm_pooled_output; keys: {sorted(inputs)}): use CLIPCollator")
        config = self.accelerator.unwrap_model(model).config
        is_video = inputs["pixel_values"].dim() == 5
        if config.slip_weight > 0 and "simclr_view_1" not in inputs and (self.slip_videos or not is_video):
            kind = "clip" if is_video else "image"
            raise ValueError(f"slip_weight > 0 but the {kind} batch has no SimCLR views: decode with "
                             "WithSimCLRViews, set the model's slip_weight to 0"
                             + (", or train with slip_videos=False (run config: slip: {videos: false})" if is_video else ""))
        if config.hashtag_loss_weight > 0 and "hashtag_mask" not in inputs and not self._warned_hashtags:
            logger.warning("hashtag_loss_weight > 0 but batches carry no hashtag texts: the siamese term is off")
            self._warned_hashtags = True
        return {key: inputs[key] for key in MODEL_INPUTS if key in inputs}

    def features(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """The model's output fields the loss takes, for one batch; in chunks with gradient caching when
        `gradient_cache_chunk_size` is smaller than the batch (the loss and gradients stay the whole batch's)."""
        model_inputs = self._model_inputs(model, inputs)

        def encode(chunk: dict[str, Any]) -> dict[str, Any]:
            outputs = model(**chunk, return_dict=True)
            return {key: outputs.get(key) for key in FEATURES}

        chunk_size = self.args.gradient_cache_chunk_size
        if model.training and chunk_size and inputs["pixel_values"].shape[0] > chunk_size:
            features = cached_encode(encode, split_batch(model_inputs, chunk_size), no_sync=getattr(model, "no_sync", None))
        else:
            features = encode(model_inputs)
        return {key: value for key, value in features.items() if value is not None}

    def loss_terms(self, features: dict[str, Any], inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Every weighted loss term and `loss` (fp32, also under autocast), over all ranks."""
        return self.loss_fn(**features, group_ids=inputs.get("group_ids"),
                            hashtag_group_ids=inputs.get("hashtag_group_ids"), output_dict=True)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        features = self.features(model, inputs)
        terms = self.loss_terms(features, inputs)
        if model.training:
            self._record(terms, features["logit_scale"], inputs["pixel_values"].ndim == 5)
        return (terms["loss"], {**features, **terms}) if return_outputs else terms["loss"]

    def _record(self, terms: dict[str, torch.Tensor], logit_scale: torch.Tensor | None, video: bool) -> None:
        """Log each term, the loss per modality and the logit scale (means over the steps between logs)."""
        values = {key: value for key, value in terms.items() if key != "loss"}
        values[f"loss_{'video' if video else 'image'}"] = terms["loss"]
        if logit_scale is not None:
            values["logit_scale"] = logit_scale
        self.record_terms(values)

    # ----------------------------------------------------------------------------------------- evaluation
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Projected text embeddings for evaluation: cached pooled LLM outputs where the cache has the text, the
        tokenizer and the tower elsewhere."""
        model = self.accelerator.unwrap_model(self.model)
        device = next(model.parameters()).device
        out = torch.empty(len(texts), model.config.projection_dim)
        cached = [i for i, t in enumerate(texts)
                  if isinstance(self.text_inputs, CachedTexts) and text_sha256(t) in self.text_inputs.cache]
        rest = [i for i in range(len(texts)) if i not in set(cached)]
        if cached:
            pooled = self.text_inputs([texts[i] for i in cached])["llm_pooled_output"].to(device)
            out[cached] = model.get_text_features(llm_pooled_output=pooled).pooler_output.float().cpu()
        if rest:
            if self.tokenizer is None:
                raise ValueError("evaluating texts needs the tokenizer (CLIPTrainer(tokenizer=...))")
            tokens = TokenizedTexts.for_config(self.tokenizer, model.config.text_config)([texts[i] for i in rest])
            tokens = {k: v.to(device) for k, v in tokens.items()}
            out[rest] = model.get_text_features(**tokens).pooler_output.float().cpu()
        return out

    def eval_metrics(self, dataset: Any) -> dict[str, float]:
        """Zero-shot and/or retrieval metrics of one eval set (see the class docstring)."""
        table = getattr(dataset, "dataset", None)  # a DecodedDataset's datasets.Dataset
        features = getattr(table, "features", None) or {}
        label = features.get("label")
        classnames = label.names if isinstance(label, datasets.ClassLabel) else None
        caption = self.eval_caption_column if self.eval_caption_column in features else None
        if classnames is None and caption is None:
            raise ValueError(f"an eval set needs a ClassLabel 'label' or a {self.eval_caption_column!r} column, "
                             f"got {sorted(features)}")
        model = self.accelerator.unwrap_model(self.model)
        with self.compute_loss_context_manager():
            return clip_eval_metrics(
                model, dataset, encode_text=self.encode_text, classnames=classnames,
                templates=self.args.zero_shot_templates, caption_column=caption,
                batch_size=self.args.per_device_eval_batch_size,
            )

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Zero-shot and retrieval metrics on the eval set(s), on every rank (each computes the same numbers;
        FSDP-safe), logged with stable names."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("CLIPTrainer.evaluate needs an eval_dataset")
        sets = dataset if isinstance(dataset, dict) else {None: dataset}
        metrics = {}
        for name, one in sets.items():
            prefix = metric_key_prefix if name is None else f"{metric_key_prefix}_{name}"
            metrics.update({f"{prefix}_{key}": value for key, value in self.eval_metrics(one).items()})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


__all__ = [
    "CLIPCollator", "CLIPTrainer", "CLIPTrainingArguments", "CachedTexts", "TokenizedTexts", "text_group_ids",
]
