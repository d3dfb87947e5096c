"""The `clip` entry of the stage table: build stage 3 from a run config.

```yaml
stage: clip
model:
  vision: {from_pretrained: runs/tiny/hashtag}       # or {preset: tiny, config: {...}}; the head is dropped
  text: {from_llm: minilm, config: {projection_dim: 128}}    # LLM2CLIP tower on a frozen text model
  #   or {from_pretrained: DIR} (a trained text tower), or {preset: tiny} (the plain XrayTextModel, from scratch)
  config: {slip_weight: 1.0, lambda_den: 1.0}         # XrayCLIPConfig settings
  # from_pretrained: runs/tiny/clip                   # instead of vision/text: continue a CLIP checkpoint
captions: {column: caption, hashtag_column: hashtags, sentence_p: 0.3}
text_cache: {enabled: true}                          # pooled LLM outputs cached once (frozen LLM only)
slip: {crop_scale: [0.08, 1.0], blur_p: 0.5}          # SimCLR view augmentation (when slip_weight > 0);
                                                      # videos: false keeps SLIP to image batches
data: {...}
training: {...}                                      # CLIPTrainingArguments
```

`from_llm` and `tokenizer` take a folder, a Hub id, or the name of a text model that ships in a registry package
(`xray_hf.convert.PACKAGED_TEXT_MODELS`): `minilm` (all-MiniLM-L6-v2, a sentence-transformers folder: its pooling,
normalisation and max length come with it) or `smollm2` (SmolLM2-135M-Instruct, converted once from its GGUF file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import datasets
from transformers import AutoModel, AutoTokenizer

from ..caches.common import load_or_build, text_sha256
from ..caches.text import TextEmbeddingCache
from ..configuration.text import XrayTextConfig
from ..configuration.visual import XrayVisualConfig
from ..convert import resolve_text_model
from ..data import SampleCollator, SimCLRViews, TrainTransform, WithSimCLRViews
from ..data.captions import CaptionSampler
from ..data.inputs import build_eval_datasets, build_train_loader, check_keys, open_stream_source, source_table
from ..data.transforms import Resolution
from ..modeling.clip import XrayCLIPModel
from ..modeling.llm2clip import XrayLLM2CLIPTextModel
from ..modeling.text import XrayTextModel
from ..modeling.visual import XrayVisualModel
from ..processing.clip import XrayCLIPProcessor
from ..processing.video_processing import XrayVisualVideoProcessor
from .clip import CachedTexts, CLIPCollator, CLIPTrainer, TokenizedTexts
from .run import RunContext, StageRun, check_model_keys, image_processor_for, normalization


SMOLLM2 = "smollm2"


@dataclass
class CaptionSpec:
    """`captions:`: which columns hold the caption and the hashtags, and how often a single sentence is used; or
    `templates` (e.g. ["a photo of a {}"]) to caption a labelled set with its `label_column`'s class names."""

    column: str = "caption"
    hashtag_column: str | None = None
    sentence_p: float = 0.0
    templates: list[str] | None = None
    label_column: str = "label"


@dataclass
class TextCacheSpec:
    """`text_cache:`: cache the frozen LLM's pooled outputs (default when the tower has a frozen LLM)."""

    enabled: bool = True
    dir: str | None = None  # default: <output_dir>/text_cache
    batch_size: int = 64


@dataclass
class CLIPRunExtras:
    captions: dict[str, Any] = field(default_factory=dict)
    text_cache: dict[str, Any] = field(default_factory=dict)
    slip: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CLIPRunExtras":
        out = cls(**values)
        check_keys(CaptionSpec, out.captions, "captions keys")
        check_keys(TextCacheSpec, out.text_cache, "text_cache keys")
        unknown = set(out.slip) - {"crop_scale", "blur_p", "flip_p", "brightness", "saturation", "resize", "videos"}
        if unknown:
            raise ValueError(f"unknown slip keys {sorted(unknown)}; known: videos and TrainTransform's augmentation "
                             "arguments")
        return out


# ----------------------------------------------------------------------------------------------------- model
def load_tokenizer(name_or_path: str):
    """A tokenizer from a folder, or a packaged text model's by name (`smollm2`, `minilm`)."""
    if name_or_path == SMOLLM2:
        from ..convert import smollm2_tokenizer

        return smollm2_tokenizer()  # the tokenizer alone: no need to convert the whole model
    return AutoTokenizer.from_pretrained(resolve_text_model(name_or_path))


def _exists(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist (run the previous stage first)")
    return path


def build_text_tower(spec: dict[str, Any], projection_dim: int | None) -> tuple[Any, Any]:
    """(text tower, tokenizer) from `model.text`: `from_pretrained`, `from_llm` or `preset`, plus `config:`."""
    check_model_keys(spec, ("from_pretrained", "from_llm", "preset", "config", "tokenizer"))
    sources = [key for key in ("from_pretrained", "from_llm", "preset") if spec.get(key)]
    if len(sources) != 1:
        raise ValueError(f"model.text needs exactly one of from_pretrained, from_llm or preset, got {sources or spec}")
    overrides = dict(spec.get("config", {}))
    if projection_dim is not None:
        overrides.setdefault("projection_dim", projection_dim)
    if spec.get("from_pretrained"):
        path = _exists(spec["from_pretrained"], "model.text.from_pretrained")
        return AutoModel.from_pretrained(path, **overrides), load_tokenizer(spec.get("tokenizer", path))
    if spec.get("from_llm"):
        path = resolve_text_model(spec["from_llm"])
        tower = XrayLLM2CLIPTextModel.from_llm(_exists(path, "model.text.from_llm"), **overrides)
        return tower, load_tokenizer(spec.get("tokenizer", path))
    if "tokenizer" not in spec:
        raise ValueError("model.text.preset (a text tower trained from scratch) needs a tokenizer: (e.g. smollm2)")
    tokenizer = load_tokenizer(spec["tokenizer"])
    overrides.setdefault("vocab_size", len(tokenizer))
    return XrayTextModel(XrayTextConfig.from_preset(spec["preset"], **overrides)), tokenizer


def build_clip_model(spec: dict[str, Any]) -> tuple[XrayCLIPModel, Any]:
    """(model, tokenizer) from the run config's `model:` block."""
    check_model_keys(spec, ("vision", "text", "config", "from_pretrained", "tokenizer"))
    overrides = dict(spec.get("config", {}))
    if spec.get("from_pretrained"):
        path = _exists(spec["from_pretrained"], "model.from_pretrained")
        return XrayCLIPModel.from_pretrained(path, **overrides), load_tokenizer(spec.get("tokenizer", path))
    if not isinstance(spec.get("vision"), dict) or not isinstance(spec.get("text"), dict):
        raise ValueError("model needs vision: and text: blocks (or from_pretrained: a CLIP checkpoint)")
    tower, tokenizer = build_text_tower(spec["text"], overrides.get("projection_dim"))
    return XrayCLIPModel.from_stages(vision=build_backbone(spec["vision"]), text=tower, **overrides), tokenizer


def build_backbone(vision: dict[str, Any]) -> XrayVisualModel:
    """The backbone of `model.vision`: `from_pretrained` (any stage's checkpoint, its head dropped; nothing may be
    missing) or `preset`, plus `config:` overrides."""
    check_model_keys(vision)
    if vision.get("from_pretrained"):
        path = _exists(vision["from_pretrained"], "model.vision.from_pretrained")
        backbone, info = XrayVisualModel.from_pretrained(path, output_loading_info=True, **vision.get("config", {}))
        if info["missing_keys"]:
            raise ValueError(f"{path} is not a complete XrayVisual backbone: missing {sorted(info['missing_keys'])[:5]}")
        return backbone
    return XrayVisualModel(XrayVisualConfig.from_preset(vision.get("preset", "tiny"), **vision.get("config", {})))


# ------------------------------------------------------------------------------------------------------ text
def caption_records(run: RunContext, captions: CaptionSpec) -> list[tuple[Any, list[dict]]]:
    """(source, records) of every training source: the caption (or label) and hashtag columns, no media decoded."""
    first = captions.label_column if captions.templates is not None else captions.column
    columns = [c for c in (first, captions.hashtag_column) if c]
    records: list[tuple[Any, list[dict]]] = []
    for spec in (run.data.image, run.data.video):
        if spec is None:
            continue
        if spec.name is not None:
            table = source_table(spec)
        else:
            table, _ = open_stream_source(spec)
        missing = [c for c in columns if c not in (table.column_names or [])]
        if missing:
            raise ValueError(f"the training source {spec.name or spec.path!r} has no column {missing}")
        records.append((spec, list(table.select_columns(columns))))
    return records


def prepare_text_cache(run: RunContext, model: XrayCLIPModel, tokenizer: Any, texts: list[str],
                       spec: TextCacheSpec, main_process_first: Any) -> TextEmbeddingCache:
    """Open the text cache over `texts` for the model's frozen LLM, building it (once, on the main process first)
    when it is missing or stale."""
    path = spec.dir or os.path.join(run.output_dir, "text_cache")
    captions = datasets.Dataset.from_dict({"caption_id": [text_sha256(t) for t in texts], "caption": texts})
    tower = model.text_model
    with main_process_first(desc="text cache"):
        return load_or_build(
            lambda: TextEmbeddingCache.load(path, tower, tokenizer, captions=captions),
            lambda: TextEmbeddingCache.build(tower, tokenizer, captions, path, batch_size=spec.batch_size),
            path, "text cache",
        )


def caption_sampler(captions: CaptionSpec):
    """`wrap_decoder` for `build_train_loader`: a `CaptionSampler` around each source's decoder (template captions
    over a labelled source's class names when `captions.templates` is set)."""

    def wrap(decoder, spec):
        classnames = None
        if captions.templates is not None:
            features = (source_table(spec) if spec.name else open_stream_source(spec)[0]).features or {}
            label = features.get(captions.label_column)
            if not isinstance(label, datasets.ClassLabel):
                raise ValueError(f"captions.templates need a ClassLabel column {captions.label_column!r} in {spec}")
            classnames = label.names
        return CaptionSampler(decoder, captions.column, captions.hashtag_column, captions.sentence_p,
                              captions.templates, classnames, captions.label_column)

    return wrap


def has_frozen_llm(model: XrayCLIPModel) -> bool:
    return isinstance(model.text_model, XrayLLM2CLIPTextModel) and model.config.text_config.freeze_llm


def text_inputs_for(run: RunContext, model: XrayCLIPModel, tokenizer: Any, captions: CaptionSpec,
                    cache_spec: TextCacheSpec, main_process_first: Any) -> TokenizedTexts | CachedTexts:
    """How training texts reach `model`'s text tower: cached pooled LLM outputs (frozen LLM, cache enabled; the
    cache covers every text the caption sampler can draw), else tokens."""
    if not (has_frozen_llm(model) and cache_spec.enabled):
        return TokenizedTexts.for_config(tokenizer, model.config.text_config)
    wrap = caption_sampler(captions)
    texts = list(dict.fromkeys(
        text for spec, records in caption_records(run, captions) for text in wrap(None, spec).candidate_texts(records)
    ))
    return CachedTexts(prepare_text_cache(run, model, tokenizer, texts, cache_spec, main_process_first))


def save_clip_processor(run: RunContext, config: Any, tokenizer: Any, output_dir: str) -> None:
    """Save the `XrayCLIPProcessor` matching the run's resolution and normalisation beside a CLIP checkpoint."""
    image_processor = image_processor_for(run.data)
    mean, std = normalization(run.data)
    video_processor = XrayVisualVideoProcessor(
        size=image_processor.size, num_frames=config.vision_config.num_frames, image_mean=mean, image_std=std,
        resize_mode=image_processor.resize_mode,
    )
    XrayCLIPProcessor.for_model(config, image_processor, video_processor, tokenizer).save_pretrained(output_dir)


# ---------------------------------------------------------------------------------------------------- stage
def prepare_clip(run: RunContext) -> StageRun:
    """The `clip` stage of the run-config table (`xray_hf.stages`)."""
    extras: CLIPRunExtras = run.extras or CLIPRunExtras()
    captions, cache_spec = CaptionSpec(**extras.captions), TextCacheSpec(**extras.text_cache)
    model, tokenizer = build_clip_model(run.config["model"])
    args = run.training_args()
    resolution = Resolution(run.data.resolution)
    slip = model.config.slip_weight > 0
    mean, std = normalization(run.data)
    slip_spec = dict(extras.slip)
    slip_videos = bool(slip_spec.pop("videos", True))  # SLIP's two-frame views of clips too (paper 4.2.4)
    view_kwargs = {"crop_scale": (0.08, 1.0), "blur_p": 0.5, **{k: tuple(v) if isinstance(v, list) else v
                                                                 for k, v in slip_spec.items()}}

    def wrap_transform(transform):
        views = SimCLRViews(TrainTransform(resolution, image_mean=mean, image_std=std, **view_kwargs))
        return WithSimCLRViews(transform, views, video_views=slip_videos)

    text_inputs = text_inputs_for(run, model, tokenizer, captions, cache_spec, args.main_process_first)
    collator = CLIPCollator(text_inputs, base=SampleCollator(resolution=resolution),
                            hashtags=captions.hashtag_column is not None,
                            group_identical_captions=args.group_identical_captions)
    loader = build_train_loader(
        run.data, run.seed, collate_fn=collator, rank=args.process_index, world_size=args.world_size,
        resolution=resolution, wrap_transform=wrap_transform if slip else None, wrap_decoder=caption_sampler(captions),
    )
    eval_sets = build_eval_datasets(run.data)
    trainer = CLIPTrainer(
        model=model, args=args, train_loader=loader, eval_dataset=eval_sets or None, resolution=resolution,
        tokenizer=tokenizer, text_inputs=text_inputs, eval_caption_column=captions.column, slip_videos=slip_videos,
    )

    config = model.config  # not the model: a closure over it would keep an FSDP2-sharded copy alive after training

    def save_artifacts(trainer: CLIPTrainer, results: dict, output_dir: str) -> None:
        save_clip_processor(run, config, tokenizer, output_dir)

    return StageRun(trainer, results={"slip": slip, "text_cache": isinstance(text_inputs, CachedTexts)},
                    after_training=evaluate_after_training, save_artifacts=save_artifacts)


def evaluate_after_training(trainer: CLIPTrainer, results: dict) -> None:
    if trainer.eval_dataset:
        results["eval"] = trainer.evaluate()  # every rank computes it (FSDP-safe)


__all__ = [
    "CLIPRunExtras", "CaptionSpec", "TextCacheSpec", "build_backbone", "build_clip_model", "build_text_tower",
    "caption_sampler", "prepare_clip", "save_clip_processor", "text_inputs_for",
]
