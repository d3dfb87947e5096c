"""The stage-3 processor: captions through the text tower's tokenizer, images and videos through the XrayVisual
processors, in one call (as transformers' `CLIPProcessor` / `Siglip2Processor`).

Tokenizer defaults (`max_length`, truncation, padding side) come from the text tower's config, the same settings the
LLM2CLIP embedding cache fingerprints, so what the processor feeds the model matches what the cache stored.
"""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature, ProcessorMixin

from ..tokenization import tokenize_texts
from .hub_mixin import XrayProcessorHubMixin


class XrayCLIPProcessor(XrayProcessorHubMixin, ProcessorMixin):
    r"""
    [`XrayVisualImageProcessor`] + [`XrayVisualVideoProcessor`] + a tokenizer.

    `processor(text=..., images=..., videos=..., return_tensors="pt")` returns `input_ids`, `attention_mask` and
    `pixel_values` (images `(B, C, H, W)` or videos `(B, T, C, H, W)`; pass images or videos, not both).

    Args:
        image_processor ([`XrayVisualImageProcessor`]): images.
        video_processor ([`XrayVisualVideoProcessor`]): videos.
        tokenizer ([`PreTrainedTokenizerBase`]): captions.
        max_text_length (`int`, *optional*, defaults to 77): tokens per caption (longer ones are truncated).
        padding_side (`str`, *optional*, defaults to `"right"`): side the tokenizer pads on.
    """

    def __init__(self, image_processor=None, video_processor=None, tokenizer=None, max_text_length: int = 77,
                 padding_side: str = "right", **kwargs: Any):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not isinstance(max_text_length, int) or max_text_length < 1:
            raise ValueError(f"max_text_length must be a positive int, got {max_text_length!r}")
        self.max_text_length = max_text_length
        self.padding_side = padding_side
        super().__init__(image_processor, video_processor, tokenizer, **kwargs)

    @classmethod
    def for_model(cls, config: Any, image_processor, video_processor, tokenizer) -> "XrayCLIPProcessor":
        """A processor whose tokenizer settings follow an `XrayCLIPConfig`'s text tower."""
        text = config.text_config
        return cls(image_processor, video_processor, tokenizer, max_text_length=int(text.max_text_length),
                   padding_side=text.padding_side)

    def __call__(self, images=None, text=None, videos=None, return_tensors: str | None = "pt",
                 **kwargs: Any) -> BatchFeature:
        if images is None and text is None and videos is None:
            raise ValueError("pass text, images or videos")
        if images is not None and videos is not None:
            raise ValueError("pass images or videos, not both: a batch holds one modality")
        # transformers 5's per-modality form (`text_kwargs=`, `images_kwargs=`, ...; sentence-transformers uses it)
        nested = {key: dict(kwargs.pop(key, None) or {}) for key in
                  ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs", "common_kwargs")}
        return_tensors = nested["common_kwargs"].pop("return_tensors", return_tensors)
        kwargs.update(nested["common_kwargs"])
        data: dict[str, Any] = {}
        if text is not None:
            given = {**kwargs, **nested["text_kwargs"]}
            overrides = {k: given[k] for k in ("padding", "truncation", "max_length", "padding_side") if k in given}
            kwargs = {k: v for k, v in kwargs.items() if k not in overrides}
            settings = {"max_length": self.max_text_length, "padding_side": self.padding_side, **overrides}
            data.update(tokenize_texts(self.tokenizer, text, return_tensors=return_tensors, **settings))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors,
                                             **{**kwargs, **nested["images_kwargs"]}))
        if videos is not None:
            processed = self.video_processor(videos, return_tensors=return_tensors,
                                             **{**kwargs, **nested["videos_kwargs"]})
            data["pixel_values"] = processed["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["XrayCLIPProcessor"]
