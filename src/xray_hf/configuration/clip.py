"""Configuration of the stage-3 model: an XrayVisual backbone and a text tower aligned CLIP-style (paper 4.2.3-4.2.5,
4.6, 4.7.1), with the SLIP, denoising and siamese-caption objectives' settings."""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .compression import XrayCompressionConfig
from .text import XrayLLM2CLIPTextConfig, XrayTextConfig
from .visual import XrayConfigMixin, XrayVisualConfig, _is_number

LOGIT_SCALE_MAX = math.log(100)  # the largest logit scale (log of the inverse temperature), as in CLIP

TEXT_CONFIG_CLASSES = {cls.model_type: cls for cls in (XrayLLM2CLIPTextConfig, XrayTextConfig)}


class _TextConfigSpec(SubConfigSpec):
    """`SubConfigSpec(AutoConfig, ...)` that resolves this package's text towers by `model_type` without the Auto
    registry, so the config also loads as Hub remote code (where `xray_hf` registered nothing)."""

    def get_config_class(self, model_type: str | None = None) -> type[PreTrainedConfig]:
        return TEXT_CONFIG_CLASSES.get(model_type) or super().get_config_class(model_type)


def _sub_config(value: Any, cls: type[PreTrainedConfig] | None, name: str, default_type: str) -> PreTrainedConfig:
    """A sub-config from a config (copied), a dict (resolved by its `model_type`) or None (the default)."""
    if isinstance(value, PreTrainedConfig):
        return copy.deepcopy(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a config, a dict or None, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", default_type)
    config_class = cls or TEXT_CONFIG_CLASSES.get(model_type)
    if config_class is None:
        raise ValueError(f"{name} has model_type {model_type!r}; expected one of {sorted(TEXT_CONFIG_CLASSES)}")
    if config_class.model_type != model_type:
        raise ValueError(f"{name} has model_type {model_type!r}; expected {config_class.model_type!r}")
    return config_class(**value)


class XrayCLIPConfig(XrayConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an [`XrayCLIPModel`]: the XrayVisual backbone plus a text tower, projected into one space.

    Args:
        vision_config (`dict` or `XrayVisualConfig`, *optional*):
            The backbone's config (defaults to the `vit-b16` shape).
        text_config (`dict`, `XrayLLM2CLIPTextConfig` or `XrayTextConfig`, *optional*):
            The text tower's config, chosen by its `model_type` (`xray_llm2clip_text`, the paper's LLM2CLIP tower,
            or `xray_text`, the plain CLIP-style one). A dict without `projection_dim` takes this config's.
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the shared embedding space; the text tower's `projection_dim` must equal it.
        logit_scale_init_value (`float`, *optional*, defaults to log(1/0.07)):
            Initial log temperature of the contrastive logits (CLIP). Training clamps it to [0, log 100].
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the contrastive cross-entropy (paper 2.1 smooths against noisy pairs).
        hashtag_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the siamese hashtag-caption contrastive term (paper 4.7.1: 1:1 with the caption term); used
            when a batch carries hashtag texts.
        slip_weight (`float`, *optional*, defaults to 1.0):
            Weight of the SLIP (SimCLR) term (paper 4.2.4); used when a batch carries two SimCLR views. 0 disables
            the projection head's use (the head is built only when > 0).
        slip_hidden_size (`int`, *optional*):
            Width of the SLIP projection MLP; defaults to 4 x the backbone width (SLIP: 4096 for ViT-B).
        slip_projection_dim (`int`, *optional*, defaults to 256):
            Output size of the SLIP projection MLP (SLIP: 256).
        slip_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the NT-Xent loss (SLIP: 0.1).
        lambda_den (`float`, *optional*, defaults to 1.0):
            Weight of the denoising loss (paper 4.2.5: 1 is best). 0 disables the denoiser.
        denoise_ratio (`float`, *optional*, defaults to 0.1):
            Bottleneck width of the denoiser relative to the backbone width (paper: 0.1x).
        denoise_noise_std (`float`, *optional*, defaults to 0.5):
            Standard deviation of the zero-mean Gaussian noise added to the (layer-normalised) bottleneck; the
            paper does not give it.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the projections' and heads' initialisation.
        compression_config (`dict` or `XrayCompressionConfig`, *optional*):
            Compressed embeddings (paper 6.3-6.4): the learned low-dimensional projection's size (100-d by
            default) and Matryoshka sizes; stored as a plain dict. None (the default) builds no compression module.
    """

    model_type = "xray_clip"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=XrayVisualConfig),
        "text_config": _TextConfigSpec(config_class=AutoConfig, model_type=XrayLLM2CLIPTextConfig.model_type),
    }

    def __init__(
        self,
        vision_config: dict | XrayVisualConfig | None = None,
        text_config: dict | PreTrainedConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = math.log(1 / 0.07),
        label_smoothing: float = 0.0,
        hashtag_loss_weight: float = 1.0,
        slip_weight: float = 1.0,
        slip_hidden_size: int | None = None,
        slip_projection_dim: int = 256,
        slip_temperature: float = 0.1,
        lambda_den: float = 1.0,
        denoise_ratio: float = 0.1,
        denoise_noise_std: float = 0.5,
        initializer_range: float = 0.02,
        compression_config: dict | XrayCompressionConfig | None = None,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = XrayVisualConfig.from_preset("vit-b16")
        self.vision_config = _sub_config(vision_config, XrayVisualConfig, "vision_config", XrayVisualConfig.model_type)
        if isinstance(text_config, dict) and "projection_dim" not in text_config:
            text_config = {**text_config, "projection_dim": projection_dim}
        elif text_config is None:
            text_config = {"projection_dim": projection_dim}
        self.text_config = _sub_config(text_config, None, "text_config", XrayLLM2CLIPTextConfig.model_type)
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.label_smoothing = label_smoothing
        self.hashtag_loss_weight = hashtag_loss_weight
        self.slip_weight = slip_weight
        self.slip_hidden_size = slip_hidden_size if slip_hidden_size is not None else 4 * self.vision_config.hidden_size
        self.slip_projection_dim = slip_projection_dim
        self.slip_temperature = slip_temperature
        self.lambda_den = lambda_den
        self.denoise_ratio = denoise_ratio
        self.denoise_noise_std = denoise_noise_std
        self.initializer_range = initializer_range
        self.compression_config = compression_config
        super().__init__(**kwargs)
        self.normalize_xray()
        self.validate_xray()

    def normalize_xray(self) -> None:
        """Sub-configs given as dicts (e.g. `from_dict` overrides) become config objects."""
        if isinstance(self.vision_config, dict):
            self.vision_config = _sub_config(self.vision_config, XrayVisualConfig, "vision_config", "xray_visual")
        if isinstance(self.text_config, dict):
            self.text_config = _sub_config(self.text_config, None, "text_config", XrayLLM2CLIPTextConfig.model_type)
        if self.compression_config is not None:  # canonical JSON form, unknown keys refused
            self.compression_config = XrayCompressionConfig.from_dict(self.compression_config).to_dict()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:  # transformers only warns, then builds the default shape
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {found!r} checkpoint, not {cls.model_type!r}; start stage 3 "
                "from earlier stages with XrayCLIPModel.from_stages(vision=..., text=...)"
            )
        return config_dict, kwargs

    @property
    def denoise_hidden_size(self) -> int:
        """Width of the denoiser's bottleneck: `denoise_ratio` x the backbone width, at least 1."""
        return max(1, round(self.denoise_ratio * self.vision_config.hidden_size))

    def validate_xray(self) -> None:
        """Raise a `ValueError` naming the first inconsistent setting; the sub-configs are checked too."""
        self.vision_config.validate_xray()
        if not isinstance(self.text_config, tuple(TEXT_CONFIG_CLASSES.values())):
            raise ValueError(
                f"text_config must be one of {sorted(TEXT_CONFIG_CLASSES)}, got {type(self.text_config).__name__}"
            )
        self.text_config.validate_xray()
        for name in ("projection_dim", "slip_hidden_size", "slip_projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.text_config.projection_dim != self.projection_dim:
            raise ValueError(
                f"text_config.projection_dim ({self.text_config.projection_dim}) differs from projection_dim "
                f"({self.projection_dim}): both towers must project into the same space"
            )
        if not _is_number(self.logit_scale_init_value) or not 0.0 <= self.logit_scale_init_value <= LOGIT_SCALE_MAX:
            raise ValueError(f"logit_scale_init_value must be in [0, log 100], got {self.logit_scale_init_value!r}")
        if not _is_number(self.label_smoothing) or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        for name in ("hashtag_loss_weight", "slip_weight", "lambda_den", "denoise_noise_std"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not _is_number(self.slip_temperature) or self.slip_temperature <= 0:
            raise ValueError(f"slip_temperature must be > 0, got {self.slip_temperature!r}")
        if not _is_number(self.denoise_ratio) or not 0.0 < self.denoise_ratio <= 1.0:
            raise ValueError(f"denoise_ratio must be in (0, 1], got {self.denoise_ratio!r}")
        if self.compression_config is not None:
            XrayCompressionConfig.from_dict(self.compression_config).validate(self.projection_dim)


__all__ = ["XrayCLIPConfig", "LOGIT_SCALE_MAX", "TEXT_CONFIG_CLASSES"]
