"""What the stages' wiring modules (`*_run.py`) share: building a backbone, a text tower, a CLIP model and a
tokenizer from a run config's `model:` block, the processor saved beside a checkpoint, and the evaluation after
training. No stage imports another stage's wiring.

`from_pretrained:`, `from_llm:` and `tokenizer:` take a folder, a Hub id, or the name of a text model that ships in
a registry package (`xray_hf.convert.PACKAGED_TEXT_MODELS`): `minilm` (all-MiniLM-L6-v2) or `smollm2`.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoModel, AutoTokenizer

from ..configuration.text import XrayTextConfig
from ..configuration.visual import XrayVisualConfig
from ..convert import resolve_text_model
from ..modeling.clip import XrayCLIPModel
from ..modeling.llm2clip import XrayLLM2CLIPTextModel
from ..modeling.text import XrayTextModel
from ..modeling.visual import XrayVisualModel
from ..processing.clip import XrayCLIPProcessor
from ..processing.image_processing import XrayVisualImageProcessor
from ..processing.video_processing import XrayVisualVideoProcessor
from ..run_config.data import DataSpec
from ..run_config.model import CLIPModelSpec, TextTowerSpec, VisionSpec
from .run import RunContext

SMOLLM2 = "smollm2"


def existing_path(path: str, what: str) -> str:
    """`path`, or a `ValueError` naming the run-config key `what` when it does not exist."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist (run the previous stage first)")
    return path


# ----------------------------------------------------------------------------------------------------- models
def load_tokenizer(name_or_path: str):
    """A tokenizer from a folder, or a packaged text model's by name (`smollm2`, `minilm`)."""
    if name_or_path == SMOLLM2:
        from ..convert import smollm2_tokenizer

        return smollm2_tokenizer()  # the tokenizer alone: no need to convert the whole model
    return AutoTokenizer.from_pretrained(resolve_text_model(name_or_path))


def build_visual_model(cls: type, spec: VisionSpec, **config_kwargs: Any):
    """An XrayVisual stage model from `preset:` (random init) or `from_pretrained:` (a previous stage), with
    `config:` overrides. Loading from a previous stage keeps its encoder and drops its head (the MAE decoder, ...)."""
    overrides = {**spec.config, **config_kwargs}
    if spec.from_pretrained:
        return cls.from_pretrained(existing_path(spec.from_pretrained, "model.from_pretrained"), **overrides)
    return cls(XrayVisualConfig.from_preset(spec.preset, **overrides))


def build_backbone(vision: VisionSpec) -> XrayVisualModel:
    """The backbone of `model.vision`: `from_pretrained` (any stage's checkpoint, its head dropped; nothing may be
    missing) or `preset`, plus `config:` overrides."""
    if vision.from_pretrained:
        path = existing_path(vision.from_pretrained, "model.vision.from_pretrained")
        backbone, info = XrayVisualModel.from_pretrained(path, output_loading_info=True, **vision.config)
        if info["missing_keys"]:
            raise ValueError(f"{path} is not a complete XrayVisual backbone: missing {sorted(info['missing_keys'])[:5]}")
        return backbone
    return XrayVisualModel(XrayVisualConfig.from_preset(vision.preset, **vision.config))


def build_text_tower(spec: TextTowerSpec, projection_dim: int | None) -> tuple[Any, Any]:
    """(text tower, tokenizer) from `model.text`: `from_pretrained`, `from_llm` or `preset`, plus `config:`."""
    overrides = dict(spec.config)
    if projection_dim is not None:
        overrides.setdefault("projection_dim", projection_dim)
    if spec.from_pretrained:
        path = existing_path(spec.from_pretrained, "model.text.from_pretrained")
        return AutoModel.from_pretrained(path, **overrides), load_tokenizer(spec.tokenizer or path)
    if spec.from_llm:
        path = resolve_text_model(spec.from_llm)
        tower = XrayLLM2CLIPTextModel.from_llm(existing_path(path, "model.text.from_llm"), **overrides)
        return tower, load_tokenizer(spec.tokenizer or path)
    tokenizer = load_tokenizer(spec.tokenizer)
    overrides.setdefault("vocab_size", len(tokenizer))
    return XrayTextModel(XrayTextConfig.from_preset(spec.preset, **overrides)), tokenizer


def build_clip_model(spec: CLIPModelSpec) -> tuple[XrayCLIPModel, Any]:
    """(model, tokenizer) from the run config's `model:` block."""
    overrides = dict(spec.config)
    if spec.from_pretrained:
        path = existing_path(spec.from_pretrained, "model.from_pretrained")
        return XrayCLIPModel.from_pretrained(path, **overrides), load_tokenizer(spec.tokenizer or path)
    tower, tokenizer = build_text_tower(spec.text, overrides.get("projection_dim"))
    return XrayCLIPModel.from_stages(vision=build_backbone(spec.vision), text=tower, **overrides), tokenizer


# ------------------------------------------------------------------------------------------------- processors
def normalization(data: DataSpec) -> tuple[list[float], list[float]]:
    """The image mean and std of the run's transforms."""
    from ..data import TrainTransform

    transform = TrainTransform(data.resolution, **data.augment.kwargs())
    return transform.image_mean, transform.image_std


def image_processor_for(data: DataSpec) -> XrayVisualImageProcessor:
    """The inference-time processor matching the run's resolution and normalisation."""
    mean, std = normalization(data)
    size = data.resolution if isinstance(data.resolution, int) else tuple(data.resolution)
    return XrayVisualImageProcessor(size=size, image_mean=mean, image_std=std)


def save_clip_processor(run: RunContext, config: Any, tokenizer: Any, output_dir: str) -> None:
    """Save the `XrayCLIPProcessor` matching the run's resolution and normalisation beside a CLIP checkpoint."""
    image_processor = image_processor_for(run.data)
    mean, std = normalization(run.data)
    video_processor = XrayVisualVideoProcessor(
        size=image_processor.size, num_frames=config.vision_config.num_frames, image_mean=mean, image_std=std,
        resize_mode=image_processor.resize_mode,
    )
    XrayCLIPProcessor.for_model(config, image_processor, video_processor, tokenizer).save_pretrained(output_dir)


# --------------------------------------------------------------------------------------------- after training
def evaluate_after_training(trainer: Any, results: dict) -> None:
    """`StageRun.after_training` of the stages that evaluate their eval sets: on every rank (the evaluation shards
    the sets and gathers, FSDP-safe), into `results["eval"]`."""
    if trainer.eval_dataset:
        results["eval"] = trainer.evaluate()


__all__ = [
    "SMOLLM2", "build_backbone", "build_clip_model", "build_text_tower", "build_visual_model",
    "evaluate_after_training", "existing_path", "image_processor_for", "load_tokenizer", "normalization",
    "save_clip_processor",
]
