"""Configuration of the XrayVisual backbone: one ViT for images and videos (paper section 3)."""

from __future__ import annotations

import copy
import numbers
import operator
from typing import Any, Sequence

from transformers import PreTrainedConfig

POOLING_TYPES = ("cls", "mean", "attention")


def uniform_evit_layers(num_hidden_layers: int, num_layers: int = 3) -> list[int]:
    """`num_layers` uniformly spaced EViT layers (EViT protocol: 3, 6, 9 for a 12-layer ViT)."""
    step = num_hidden_layers / (num_layers + 1)
    return [round(step * (i + 1)) for i in range(num_layers)]


# The paper's shapes (section 3.2 and 5). EViT-2B is our choice of a ~2B shape: width 1792,
# 48 layers, 16 heads of 112, MLP 8192 (ViT-bigG/14 family proportions), 336 px, keep rate 0.5.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=32, patch_size=8, tubelet_size=2, num_frames=4, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=128, num_register_tokens=2,
    ),
    "vit-b16": dict(
        image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072,
    ),
    "vit-l16": dict(
        image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096,
    ),
    "vit-h14": dict(
        image_size=336, patch_size=14, hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
        intermediate_size=5120,
    ),
    "evit-2b": dict(
        image_size=336, patch_size=14, hidden_size=1792, num_hidden_layers=48, num_attention_heads=16,
        intermediate_size=8192, evit_layers=uniform_evit_layers(48), keep_rate=0.5,
    ),
}


def _is_int(value: Any) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class XrayConfigMixin:
    """Runs `normalize_xray` and `validate_xray` after `from_dict` / `from_pretrained` overrides (transformers
    sets those with `setattr` after `__init__`), and `validate_xray` in `save_pretrained` (catching attributes
    changed after construction). Subclasses call them at the end of their `__init__` and list this mixin
    before `PreTrainedConfig` in their bases."""

    def normalize_xray(self) -> None:
        """Bring settings to their canonical form; the default does nothing."""

    def validate_xray(self) -> None:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config.normalize_xray()
        config.validate_xray()
        return result

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs: Any) -> None:
        self.validate_xray()
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}")
    return value  # type: ignore[return-value]


class XrayVisualConfig(XrayConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an [`XrayVisualModel`]: a ViT whose tokens are 3D tubelets, so images and videos
    share one backbone (paper section 3.1), with registers, EViT token pruning and ToMe token merging.

    Args:
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            Native input resolution; the position embeddings are learned at this size and interpolated
            for any other size.
        patch_size (`int`, *optional*, defaults to 16):
            Spatial size of a patch.
        tubelet_size (`int`, *optional*, defaults to 2):
            Temporal size of a tubelet. An image is repeated along time to fill one tubelet.
        num_frames (`int`, *optional*, defaults to 16):
            Native number of video frames; must be divisible by `tubelet_size`.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the transformer.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Depth of the transformer.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads.
        intermediate_size (`int`, *optional*):
            Width of the MLP; defaults to `mlp_ratio * hidden_size`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Used only when `intermediate_size` is not given.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Bias in the query/key/value projection.
        num_register_tokens (`int`, *optional*, defaults to 4):
            Learnable tokens after CLS, independent of the input and without position embedding
            (paper section 4.4). Dropped from `last_hidden_state`, returned as `register_tokens`.
        pooling (`str`, *optional*, defaults to `"cls"`):
            `"cls"`, `"mean"` (size-weighted mean of patch tokens) or `"attention"` (a learned query).
        evit_layers (`list[int]`, *optional*, defaults to `[]`):
            0-based indices of the layers that reorganise tokens with EViT (keep the patch tokens with the
            highest CLS attention, fuse the rest into one token). The paper uses 3 uniformly spaced layers,
            see [`uniform_evit_layers`]. Stored sorted, each layer with its own `keep_rate`.
        keep_rate (`float` or `list[float]`, *optional*, defaults to 1.0):
            Fraction of patch tokens kept at each EViT layer (one value for all, or one per entry of
            `evit_layers`, in the same order); 0.7 for ViT-B/16 at 288 px, 0.5 at 336 px in the paper.
            1.0 equals the dense model.
        tome_r (`int`, *optional*, defaults to 0):
            Tokens merged per layer by ToMe bipartite soft matching (paper section 4.7). 0 disables it.
        tome_in_training (`bool`, *optional*, defaults to `False`):
            ToMe is applied at inference only (as in the paper) unless this is set.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate, increasing linearly over the layers.
        decoder_hidden_size (`int`, *optional*, defaults to 512):
            Width of the MAE decoder (stage 1 only; dropped with the decoder after pretraining).
        decoder_num_hidden_layers (`int`, *optional*, defaults to 8):
            Depth of the MAE decoder.
        decoder_num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads of the MAE decoder.
        decoder_intermediate_size (`int`, *optional*):
            MLP width of the MAE decoder; defaults to 4 x `decoder_hidden_size`.
        mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of image patches the MAE masks (paper 4.2.1).
        video_mask_ratio (`float`, *optional*, defaults to 0.9):
            Fraction of video tubelets the MAE masks (paper 4.2.1, after Feichtenhofer et al. 2022).
        norm_pix_loss (`bool`, *optional*, defaults to `True`):
            MAE targets are pixels normalised by each patch's mean and standard deviation.
    """

    model_type = "xray_visual"

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        mlp_ratio: float = 4.0,
        hidden_act: str = "gelu",
        qkv_bias: bool = True,
        num_register_tokens: int = 4,
        pooling: str = "cls",
        evit_layers: Sequence[int] | None = None,
        keep_rate: float | Sequence[float] = 1.0,
        tome_r: int = 0,
        tome_in_training: bool = False,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        drop_path_rate: float = 0.0,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 16,
        decoder_intermediate_size: int | None = None,
        mask_ratio: float = 0.75,
        video_mask_ratio: float = 0.9,
        norm_pix_loss: bool = True,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.num_frames = num_frames
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else int(mlp_ratio * hidden_size)
        self.hidden_act = hidden_act
        self.qkv_bias = qkv_bias
        self.num_register_tokens = num_register_tokens
        self.pooling = pooling
        self.evit_layers = evit_layers
        self.keep_rate = keep_rate
        self.tome_r = tome_r
        self.tome_in_training = tome_in_training
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.drop_path_rate = drop_path_rate
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = (
            decoder_intermediate_size if decoder_intermediate_size is not None else 4 * decoder_hidden_size
        )
        self.mask_ratio = mask_ratio
        self.video_mask_ratio = video_mask_ratio
        self.norm_pix_loss = norm_pix_loss
        super().__init__(**kwargs)
        self.normalize_xray()
        self.validate_xray()

    def normalize_xray(self) -> None:
        """`image_size` as an int or a [height, width] list; `evit_layers` sorted, moving a per-layer
        `keep_rate` list along so that each layer keeps its own rate."""
        if not isinstance(self.image_size, int):
            self.image_size = list(_pair(self.image_size, "image_size"))
        layers, rates = [] if self.evit_layers is None else self.evit_layers, self.keep_rate
        if not isinstance(layers, (list, tuple)) or not all(_is_int(i) for i in layers):
            raise ValueError(f"evit_layers must be a list of ints, got {self.evit_layers!r}")
        layers = [operator.index(i) for i in layers]
        if isinstance(rates, (list, tuple)) and all(_is_number(r) for r in rates):
            rates = [float(r) for r in rates]
            if len(rates) == len(layers):
                pairs = sorted(zip(layers, rates))
                layers, rates = [layer for layer, _ in pairs], [rate for _, rate in pairs]
        elif _is_number(rates):
            rates = float(rates)
        else:
            raise ValueError(f"keep_rate must be a float or a list of floats, got {self.keep_rate!r}")
        self.evit_layers, self.keep_rate = sorted(layers), rates

    @property
    def mlp_ratio(self) -> float:
        return self.intermediate_size / self.hidden_size

    @property
    def image_size_hw(self) -> tuple[int, int]:
        return _pair(self.image_size, "image_size")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Native token grid (time, height, width)."""
        h, w = self.image_size_hw
        return (self.num_frames // self.tubelet_size, h // self.patch_size, w // self.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus registers: the tokens that are never pruned or merged."""
        return 1 + self.num_register_tokens

    def keep_rate_for_layer(self, layer: int) -> float:
        """EViT keep rate at `layer`, 1.0 where the layer does not reorganise tokens."""
        if layer not in self.evit_layers:
            return 1.0
        if isinstance(self.keep_rate, (list, tuple)):
            return float(self.keep_rate[list(self.evit_layers).index(layer)])
        return float(self.keep_rate)

    def validate_xray(self) -> None:
        """Raise a `ValueError` naming the first inconsistent setting."""
        h, w = self.image_size_hw
        for name, value in (("patch_size", self.patch_size), ("tubelet_size", self.tubelet_size),
                            ("num_frames", self.num_frames), ("num_channels", self.num_channels),
                            ("hidden_size", self.hidden_size), ("num_hidden_layers", self.num_hidden_layers),
                            ("num_attention_heads", self.num_attention_heads),
                            ("intermediate_size", self.intermediate_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image_size {(h, w)} must be divisible by patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} must be divisible by tubelet_size {self.tubelet_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads {self.num_attention_heads}"
            )
        if not isinstance(self.num_register_tokens, int) or self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be an int >= 0, got {self.num_register_tokens!r}")
        if self.pooling not in POOLING_TYPES:
            raise ValueError(f"pooling must be one of {POOLING_TYPES}, got {self.pooling!r}")
        for layer in self.evit_layers:
            if not _is_int(layer) or not 0 <= layer < self.num_hidden_layers:
                raise ValueError(f"evit_layers entry {layer} is outside [0, {self.num_hidden_layers})")
        if len(set(self.evit_layers)) != len(self.evit_layers):
            raise ValueError(f"evit_layers has duplicates: {self.evit_layers}")
        per_layer = isinstance(self.keep_rate, (list, tuple))
        rates = self.keep_rate if per_layer else [self.keep_rate]
        if per_layer and len(self.keep_rate) != len(self.evit_layers):
            raise ValueError(
                f"keep_rate has {len(self.keep_rate)} values but evit_layers has {len(self.evit_layers)} layers"
            )
        for rate in rates:
            if not _is_number(rate) or not 0.0 < rate <= 1.0:
                raise ValueError(f"keep_rate must be in (0, 1], got {rate}")
        if not isinstance(self.tome_r, int) or self.tome_r < 0:
            raise ValueError(f"tome_r must be an int >= 0, got {self.tome_r!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        self.validate_mae()

    def validate_mae(self) -> None:
        """Raise a `ValueError` for an inconsistent MAE decoder or mask setting."""
        for name in ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                     "decoder_intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by "
                f"decoder_num_attention_heads {self.decoder_num_attention_heads}"
            )
        for name in ("mask_ratio", "video_mask_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "XrayVisualConfig":
        """A config with one of the paper's shapes: `tiny`, `vit-b16`, `vit-l16`, `vit-h14`, `evit-2b`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = ["XrayVisualConfig", "XrayConfigMixin", "PRESETS", "uniform_evit_layers"]
