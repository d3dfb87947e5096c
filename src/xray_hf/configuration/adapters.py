"""Configuration of a linear adapter (paper section 6.2): a linear classifier on frozen embeddings of a model,
saved beside it."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .visual import XrayConfigMixin, _is_int, _is_number

# the embedding an adapter reads; the names of `xray_hf.eval.features.FEATURES` and `VIDEO_MODES`
ADAPTER_FEATURES = ("embedding", "pooled")
ADAPTER_VIDEO_MODES = ("native", "frame-mean")


class XrayLinearAdapterConfig(XrayConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an [`XrayLinearAdapter`]. The classes are `id2label` (so `num_labels`), as in any
    transformers classification head.

    Args:
        embedding_dim (`int`, *optional*, defaults to 512):
            Width D of the embeddings the adapter reads.
        feature (`str`, *optional*, defaults to `"pooled"`):
            Which embedding of the base model: `"embedding"` (the projected CLIP embedding, `get_image_features`)
            or `"pooled"` (the vision backbone's pooled output, before the projection).
        video_mode (`str`, *optional*, defaults to `"native"`):
            How clips were embedded: `"native"` (the model's video path) or `"frame-mean"` (mean of per-frame
            image embeddings).
        base_model_type (`str`, *optional*):
            `model_type` of the model whose embeddings the adapter was fitted on (e.g. `"xray_clip"`); applying
            it through a model of another type is refused.
        regularization_C (`float`, *optional*):
            Inverse L2 strength of the logistic fit (scikit-learn's `C`), chosen on validation data; a record.
        fit_info (`dict`, *optional*):
            Where the adapter was fitted (dataset, splits, sample counts, validation accuracy); a record.
    """

    model_type = "xray_linear_adapter"

    def __init__(
        self,
        embedding_dim: int = 512,
        feature: str = "pooled",
        video_mode: str = "native",
        base_model_type: str | None = None,
        regularization_C: float | None = None,
        fit_info: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.embedding_dim = embedding_dim
        self.feature = feature
        self.video_mode = video_mode
        self.base_model_type = base_model_type
        self.regularization_C = regularization_C
        self.fit_info = dict(fit_info or {})
        super().__init__(**kwargs)
        self.validate_xray()

    def validate_xray(self) -> None:
        if not _is_int(self.embedding_dim) or self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be an integer >= 1, got {self.embedding_dim!r}")
        if self.feature not in ADAPTER_FEATURES:
            raise ValueError(f"feature must be one of {ADAPTER_FEATURES}, got {self.feature!r}")
        if self.video_mode not in ADAPTER_VIDEO_MODES:
            raise ValueError(f"video_mode must be one of {ADAPTER_VIDEO_MODES}, got {self.video_mode!r}")
        if self.num_labels < 2:
            raise ValueError(f"a linear adapter needs at least 2 classes (id2label), got {self.num_labels}")
        if self.regularization_C is not None and (not _is_number(self.regularization_C) or self.regularization_C <= 0):
            raise ValueError(f"regularization_C must be a positive number, got {self.regularization_C!r}")


__all__ = ["ADAPTER_FEATURES", "ADAPTER_VIDEO_MODES", "XrayLinearAdapterConfig"]
