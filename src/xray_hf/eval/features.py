"""Embed images, videos and texts with a CLIP-shaped model, frozen and batched, for every evaluation task.

The model interface is transformers 5's `CLIPModel` (which `XrayCLIPModel` follows): `get_image_features(
pixel_values)` (and `get_video_features` for 5-D input when the model has it) and `get_text_features(
input_ids, attention_mask)` return a `ModelOutput` whose `pooler_output` is the projected embedding. A vision
backbone alone (`XrayVisualModel`, `CLIPVisionModel`) gives its pooled output through `feature="pooled"`.

Inputs are a tensor of pixel values, or a map-style dataset / iterable of dicts holding `pixel_values` (e.g.
`data.tables.DecodedDataset`); other columns (labels, captions) are gathered in the same pass, so every
sample is decoded once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

# defined once, with the adapter config (which records the feature an adapter reads and stays free of eval code)
from ..configuration.adapters import ADAPTER_FEATURES as FEATURES
from ..configuration.adapters import ADAPTER_VIDEO_MODES as VIDEO_MODES

TextEncoder = Callable[[list[str]], torch.Tensor]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` under `torch.no_grad()`, restoring the training mode afterwards (safe inside a Trainer)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where `model`'s inputs go: its parameters' device and floating dtype (CPU float32 for a model without
    parameters, e.g. onnxruntime sessions)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    floating = next((p for p in model.parameters() if p.is_floating_point()), parameter)
    return parameter.device, floating.dtype


def _pooled(output: Any, what: str) -> torch.Tensor:
    pooled = output if isinstance(output, torch.Tensor) else getattr(output, "pooler_output", None)
    if pooled is None:
        raise ValueError(f"{what} returned no pooler_output; expected a ModelOutput with the pooled embedding")
    return pooled


def vision_backbone(model: nn.Module) -> nn.Module:
    """The vision tower whose pooled output `feature="pooled"` reads: `model.xray_visual` (XrayCLIPModel),
    `model.vision_model` (CLIPModel), or the model itself when it is a vision backbone."""
    for attribute in ("xray_visual", "vision_model"):
        tower = getattr(model, attribute, None)
        if isinstance(tower, nn.Module):
            return tower
    if hasattr(model, "get_image_features"):
        raise ValueError(
            f"cannot find the vision backbone of {type(model).__name__} (no 'xray_visual' or 'vision_model'); "
            "use feature='embedding'"
        )
    return model


def feature_dim(config: Any, feature: str = "embedding") -> int | None:
    """Width of `image_features(model, ..., feature)` for the model `AutoModel` builds from `config`, read from the
    config alone (before any weights load), as `vision_backbone` picks the tower: a composite config's
    `projection_dim` for `"embedding"` and its `vision_config.hidden_size` for `"pooled"`; a backbone's own
    `hidden_size` for `"pooled"`. None when the config does not say (a backbone has no `"embedding"`)."""
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    vision = getattr(config, "vision_config", None)
    if feature == "embedding":
        width = getattr(config, "projection_dim", None) if vision is not None else None
    else:
        width = getattr(vision if vision is not None else config, "hidden_size", None)
    return width if isinstance(width, int) and not isinstance(width, bool) else None


def image_features(
    model: nn.Module, pixel_values: torch.Tensor, feature: str = "embedding", video_mode: str = "native"
) -> torch.Tensor:
    """Float32 features of one batch: (B, C, H, W) images or (B, T, C, H, W) videos -> (B, D).

    `feature="embedding"`: the projected embedding (`get_image_features`, or `get_video_features` for 5-D
    input when the model has it). `feature="pooled"`: the backbone's pooled output, before the projection.
    `video_mode="frame-mean"` embeds each frame as an image and averages (for image-only models, e.g. CLIP).
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    if video_mode not in VIDEO_MODES:
        raise ValueError(f"video_mode must be one of {VIDEO_MODES}, got {video_mode!r}")
    if pixel_values.ndim not in (4, 5):
        raise ValueError(f"pixel_values must be (B, C, H, W) or (B, T, C, H, W), got {tuple(pixel_values.shape)}")
    if pixel_values.ndim == 5 and video_mode == "frame-mean":
        batch, frames = pixel_values.shape[:2]
        per_frame = image_features(model, pixel_values.flatten(0, 1), feature)
        return per_frame.view(batch, frames, -1).mean(1)
    if feature == "pooled":
        return _pooled(vision_backbone(model)(pixel_values=pixel_values), "the vision backbone").float()
    if pixel_values.ndim == 5 and hasattr(model, "get_video_features"):
        return _pooled(model.get_video_features(pixel_values=pixel_values), "get_video_features").float()
    if not hasattr(model, "get_image_features"):
        raise ValueError(f"{type(model).__name__} has no get_image_features; use feature='pooled' for a backbone")
    return _pooled(model.get_image_features(pixel_values=pixel_values), "get_image_features").float()


def _batches(images: Any, batch_size: int, num_workers: int, pixel_key: str) -> Iterable[dict]:
    if isinstance(images, torch.Tensor):
        for start in range(0, images.shape[0], batch_size):
            yield {pixel_key: images[start : start + batch_size]}
        return
    if isinstance(images, torch.utils.data.DataLoader):
        yield from images
        return
    if hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        loader = torch.utils.data.DataLoader(
            images, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_samples
        )
        yield from loader
        return
    batch: list[dict] = []
    for sample in images:  # an iterable of samples
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate_samples(batch)
            batch = []
    if batch:
        yield collate_samples(batch)


def collate_samples(samples: Sequence[dict]) -> dict[str, Any]:
    """Stack tensors that share a shape (pixel values), keep everything else (labels, caption lists) as lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        tensors = all(isinstance(v, torch.Tensor) for v in values)
        out[key] = torch.stack(values) if tensors and len({v.shape for v in values}) == 1 else values
    return out


def embed_images(
    model: nn.Module,
    images: Any,
    *,
    columns: Sequence[str] = (),
    feature: str = "embedding",
    video_mode: str = "native",
    batch_size: int = 64,
    num_workers: int = 0,
    pixel_key: str = "pixel_values",
) -> tuple[torch.Tensor, dict[str, list]]:
    """Features (N, D) of every sample, plus the values of `columns` gathered in the same pass.

    `images`: a pixel tensor (N, C, H, W) / (N, T, C, H, W), a map-style dataset or iterable of dicts with
    `pixel_key`, or a DataLoader yielding such dict batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, dtype = device_and_dtype(model)
    chunks: list[torch.Tensor] = []
    gathered: dict[str, list] = {column: [] for column in columns}
    with frozen(model):
        for batch in _batches(images, batch_size, num_workers, pixel_key):
            if pixel_key not in batch:
                raise ValueError(f"a batch has no {pixel_key!r}: keys {sorted(batch)}")
            pixels = batch[pixel_key]
            if not isinstance(pixels, torch.Tensor):
                shapes = sorted({tuple(p.shape) for p in pixels})
                raise ValueError(f"samples of one batch have different pixel shapes {shapes}; resize them equally")
            pixels = pixels.to(device=device, dtype=dtype if pixels.is_floating_point() else None)
            chunks.append(image_features(model, pixels, feature, video_mode).cpu())
            for column in columns:
                if column not in batch:
                    raise ValueError(f"samples have no column {column!r}: keys {sorted(batch)}")
                values = batch[column]
                gathered[column].extend(values.tolist() if isinstance(values, torch.Tensor) else values)
    if not chunks:
        raise ValueError("no samples to embed")
    return torch.cat(chunks), gathered


def encode_images(model: nn.Module, images: Any, **options: Any) -> torch.Tensor:
    """Features (N, D) of every sample; `options` as in `embed_images`."""
    return embed_images(model, images, **options)[0]


def text_encoder(model: nn.Module, tokenizer: Any) -> TextEncoder:
    """The default text encoder: the text tower's own tokenization (`text_config.tokenize`: its max length and
    padding side, as in training) -> `get_text_features`."""
    if tokenizer is None:
        raise ValueError("text encoding needs a tokenizer (or pass encode_text=...)")
    if not hasattr(model, "get_text_features"):
        raise ValueError(f"{type(model).__name__} has no get_text_features; pass encode_text=...")
    text_config = getattr(model.config, "text_config", model.config)

    def encode(texts: list[str]) -> torch.Tensor:
        if hasattr(text_config, "tokenize"):
            tokens = text_config.tokenize(tokenizer, texts)
        else:  # another library's model (e.g. transformers' CLIPModel): the tokenizer's own limit
            tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        device, _ = device_and_dtype(model)
        inputs = {key: tokens[key].to(device) for key in ("input_ids", "attention_mask") if key in tokens}
        return _pooled(model.get_text_features(**inputs), "get_text_features")

    return encode


def encode_texts(
    texts: Sequence[str],
    model: nn.Module | None = None,
    tokenizer: Any = None,
    *,
    encode_text: TextEncoder | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Float32 text embeddings (N, D), batched; `encode_text` (e.g. LLM2CLIP from cached LLM outputs) replaces
    the default `model` + `tokenizer` path."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    if not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be strings")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if encode_text is None:
        if model is None:
            raise ValueError("pass a model and tokenizer, or encode_text=...")
        encode_text = text_encoder(model, tokenizer)
    context = frozen(model) if model is not None else torch.no_grad()
    with context:
        chunks = [encode_text(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    out = torch.cat([torch.as_tensor(chunk).float().cpu() for chunk in chunks])
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"the text encoder returned shape {tuple(out.shape)} for {len(texts)} texts")
    return out


__all__ = [
    "FEATURES",
    "VIDEO_MODES",
    "TextEncoder",
    "collate_samples",
    "device_and_dtype",
    "embed_images",
    "encode_images",
    "encode_texts",
    "feature_dim",
    "frozen",
    "image_features",
    "text_encoder",
    "vision_backbone",
]
