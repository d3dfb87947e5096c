"""Configurations of the two text towers (paper section 4.6).

`XrayLLM2CLIPTextConfig`: a frozen text model (nested config) pooled, then a residual MLP adapter and a projection
(LLM2CLIP, section 4.6.2). The text model is any transformers text model: an encoder (BERT, RoBERTa, XLM-R,
MPNet, ... e.g. a sentence-transformers embedder such as all-MiniLM-L6-v2) or a decoder LLM of the LLaMA, Qwen2,
Mistral and Gemma families, made bidirectional (LLM2Vec) or causal with last-token pooling (e5-mistral style).
`XrayTextConfig`: a plain CLIP-style text transformer, with the shapes of the paper's Table 7 (section 4.6.1).

Every setting that changes an embedding (pooling, normalisation, bidirectional attention, max length, padding
side, adapter, projection) lives here and round-trips through `save_pretrained`. Both configs share one text
contract (`XrayTextTowerConfigMixin`): `max_text_length`, `padding_side` and `tokenize(tokenizer, texts)`, the one
function through which captions become tokens everywhere (processor, trainers, text cache, eval, compress,
curation).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..tokenization import tokenize_texts
from .visual import XrayConfigMixin

LLM2CLIP_POOLING_TYPES = ("mean", "eos", "weighted_mean", "cls")
# sentence-transformers' names for the same poolings (`1_Pooling/config.json`: `pooling_mode_<name>: true` in
# folders written by sentence-transformers < 6, `pooling_mode: <name>` since)
SENTENCE_TRANSFORMERS_POOLING = {"mean_tokens": "mean", "cls_token": "cls", "lasttoken": "eos",
                                 "weightedmean_tokens": "weighted_mean", "mean": "mean", "cls": "cls",
                                 "weightedmean": "weighted_mean"}
TEXT_POOLING_TYPES = ("eos", "mean")
PADDING_SIDES = ("right", "left")

# Decoder LLM model types whose transformers base model honours `is_causal=False`
# (`merge_with_config_defaults` turns it into a padding-only mask and a non-causal SDPA call).
# Each one is checked by tests/modeling/test_llm2clip.py; add a type only together with a test.
BIDIRECTIONAL_LLM_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text")


def embedder_kind(llm_config: PreTrainedConfig) -> str | None:
    """How the tower runs and loads its frozen text model: `"decoder"` (a causal LLM of `BIDIRECTIONAL_LLM_TYPES`,
    run causal or made bidirectional), `"encoder"` (bidirectional by design: the model types transformers has a
    masked-LM head for, i.e. BERT, RoBERTa, XLM-R, MPNet, DeBERTa, ModernBERT, ...), else None (not supported: e.g.
    GPT-2, whose attention cannot be made bidirectional)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(llm_config, "model_type", None)
    if model_type in BIDIRECTIONAL_LLM_TYPES:
        return "decoder"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(llm_config, "is_encoder_decoder", False):
        return "encoder"
    return None


class XrayTextTowerConfigMixin:
    """The contract both text towers' configs keep: a token limit, a padding side and `tokenize`."""

    max_text_length: int
    padding_side: str

    def tokenize(self, tokenizer: Any, texts: Any, return_tensors: str | None = "pt", **overrides: Any):
        """`tokenizer(texts)` with this tower's max length and padding side: what the tower was trained on."""
        return tokenize_texts(tokenizer, texts, max_length=self.max_text_length, padding_side=self.padding_side,
                              return_tensors=return_tensors, **overrides)

# The architecture of SmolLM2-135M-Instruct (the LLM shipped here, see `xray-hf convert smollm2`): the default
# nested LLM config, so `XrayLLM2CLIPTextConfig()` describes a real model. The paper uses LLaMA-1B.
SMOLLM2_135M_LLM_CONFIG: dict[str, Any] = dict(
    model_type="llama",
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def _llm_config_from(value: dict | PreTrainedConfig | None) -> PreTrainedConfig:
    """A config object for the nested LLM: a config as given (copied), a dict resolved by `model_type`."""
    if value is None:
        value = SMOLLM2_135M_LLM_CONFIG
    if isinstance(value, PreTrainedConfig):
        return copy.deepcopy(value)
    if not isinstance(value, dict):
        raise TypeError(f"llm_config must be a PreTrainedConfig or a dict, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type is None:
        raise ValueError("llm_config dict needs a 'model_type' (e.g. 'llama')")
    return AutoConfig.for_model(model_type, **value)


def _refuse_foreign_checkpoint(cls: type[PreTrainedConfig], config_dict: dict, source) -> None:
    """Loading another model's config into ours would silently give a default-shaped model: refuse."""
    found = config_dict.get("model_type")
    if found is not None and found != cls.model_type:
        hint = ""
        if found in BIDIRECTIONAL_LLM_TYPES:
            hint = " (a plain LLM: build the tower with XrayLLM2CLIPTextModel.from_llm)"
        raise ValueError(f"{source} holds a {found!r} checkpoint, not {cls.model_type!r}{hint}")


class XrayLLM2CLIPTextConfig(XrayTextTowerConfigMixin, XrayConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an [`XrayLLM2CLIPTextModel`]: frozen text model -> pooling -> residual MLP adapter ->
    projection.

    Args:
        llm_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the frozen text model: a decoder LLM (model types in `BIDIRECTIONAL_LLM_TYPES`) or any
            transformers text encoder (BERT, RoBERTa, XLM-R, MPNet, ...; `AutoModel`). Defaults to the shape of
            SmolLM2-135M. For a decoder with `bidirectional` set, its `is_causal` is set to `False`, so
            transformers' own classes built from it are bidirectional too.
        pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"` over non-padding tokens, `"eos"` (last non-padding token; sentence-transformers' `lasttoken`),
            `"cls"` (first token) or `"weighted_mean"` (position-weighted mean, later tokens weigh more).
        normalize_pooled (`bool`, *optional*, defaults to `False`):
            L2-normalise the pooled output (a sentence-transformers `Normalize` module): the pooled output is then
            what `SentenceTransformer(folder).encode` returns.
        bidirectional (`bool`, *optional*, defaults to `True`):
            Attention over all non-padding tokens (LLM2Vec) instead of causal attention. Encoders are
            bidirectional by design (`False` is refused for them).
        max_text_length (`int`, *optional*, defaults to 128):
            Maximum number of tokens per caption (longer captions are truncated by the tokenizer).
        padding_side (`str`, *optional*, defaults to `"right"`):
            Side the tokenizer pads on. The embedding does not depend on it (positions follow the attention
            mask), but it is recorded because the embedding cache tokenizes with it.
        adapter_depth (`int`, *optional*, defaults to 4):
            Number of residual MLP blocks after pooling (LLM2CLIP uses 4).
        adapter_hidden_size (`int`, *optional*):
            Width of the adapter; defaults to the LLM's hidden size (then no input projection is needed).
        adapter_mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP expansion inside each adapter block.
        adapter_dropout (`float`, *optional*, defaults to 0.0):
            Dropout inside the adapter blocks.
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the output embedding shared with the vision tower.
        freeze_llm (`bool`, *optional*, defaults to `True`):
            The LLM's parameters do not train (CLIP stage): only the adapter and projection do.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the adapter's layer norms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the adapter's and projection's initialisation.
    """

    model_type = "xray_llm2clip_text"
    sub_configs_defaults = {"llm_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    def __init__(
        self,
        llm_config: dict | PreTrainedConfig | None = None,
        pooling: str = "mean",
        normalize_pooled: bool = False,
        bidirectional: bool = True,
        max_text_length: int = 128,
        padding_side: str = "right",
        adapter_depth: int = 4,
        adapter_hidden_size: int | None = None,
        adapter_mlp_ratio: float = 4.0,
        adapter_dropout: float = 0.0,
        projection_dim: int = 512,
        freeze_llm: bool = True,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.llm_config = _llm_config_from(llm_config)
        self.pooling = SENTENCE_TRANSFORMERS_POOLING.get(pooling, pooling)
        self.normalize_pooled = bool(normalize_pooled)
        self.bidirectional = bool(bidirectional)
        self.max_text_length = max_text_length
        self.padding_side = padding_side
        self.adapter_depth = adapter_depth
        self.adapter_hidden_size = (
            adapter_hidden_size if adapter_hidden_size is not None else self.llm_config.hidden_size
        )
        self.adapter_mlp_ratio = float(adapter_mlp_ratio)
        self.adapter_dropout = float(adapter_dropout)
        self.projection_dim = projection_dim
        self.freeze_llm = bool(freeze_llm)
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_xray()

    def validate_xray(self) -> None:
        """Raise a `ValueError` naming the first inconsistent setting; mark the nested LLM config bidirectional."""
        llm_type = getattr(self.llm_config, "model_type", None)
        if self.kind is None:
            raise ValueError(
                f"llm_config.model_type {llm_type!r} is not a supported text model: use an encoder (BERT, RoBERTa, "
                f"XLM-R, MPNet, ...: a type with a masked-LM head) or a decoder LLM whose bidirectional attention "
                f"is verified: {BIDIRECTIONAL_LLM_TYPES}"
            )
        if self.pooling not in LLM2CLIP_POOLING_TYPES:
            raise ValueError(f"pooling must be one of {LLM2CLIP_POOLING_TYPES}, got {self.pooling!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        for name in ("max_text_length", "adapter_hidden_size", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.adapter_depth, int) or self.adapter_depth < 0:
            raise ValueError(f"adapter_depth must be an int >= 0, got {self.adapter_depth!r}")
        if self.adapter_mlp_ratio <= 0:
            raise ValueError(f"adapter_mlp_ratio must be > 0, got {self.adapter_mlp_ratio}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        if self.kind == "encoder":
            if not self.bidirectional:
                raise ValueError(f"bidirectional=False: a {llm_type!r} encoder is bidirectional by design")
            if self.padding_side != "right":
                raise ValueError(
                    f"padding_side={self.padding_side!r}: a {llm_type!r} encoder numbers positions from the first "
                    "token, so left padding would shift them; use 'right'"
                )
            return
        llm_is_causal = getattr(self.llm_config, "is_causal", True)
        if self.bidirectional:
            # transformers >= 5 reads `is_causal` from the config: LlamaModel & co. built from this nested
            # config (extracted, or saved on its own) are then bidirectional as well, never silently causal.
            self.llm_config.is_causal = False
        elif llm_is_causal is False:
            raise ValueError(
                "llm_config has is_causal=False (an LLM trained with bidirectional attention) but "
                "bidirectional=False: set bidirectional=True, or give a causal llm_config"
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        _refuse_foreign_checkpoint(cls, config_dict, pretrained_model_name_or_path)
        return config_dict, kwargs

    @property
    def llm_hidden_size(self) -> int:
        return self.llm_config.hidden_size

    @property
    def kind(self) -> str | None:
        """`"encoder"` or `"decoder"`: see `embedder_kind`."""
        return embedder_kind(self.llm_config)

    def embedding_settings(self) -> dict[str, Any]:
        """The settings that change the pooled LLM output (used to key the embedding cache)."""
        return {
            "llm_config": self.llm_config.to_dict(),
            "pooling": self.pooling,
            "normalize_pooled": self.normalize_pooled,
            "bidirectional": self.bidirectional,
            "max_text_length": self.max_text_length,
            "padding_side": self.padding_side,
        }


# The paper's Table 7 (GPT-2 style scaling of the CLIP text tower), plus a tiny shape for tests.
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "clip-512": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048),
    "clip-768": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "clip-1024": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "clip-1280": dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20, intermediate_size=5120),
}


class XrayTextConfig(XrayTextTowerConfigMixin, XrayConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an [`XrayTextModel`]: a CLIP-style causal text transformer with learned absolute
    positions, pooled at the last non-padding token (or mean), then a linear projection.

    Args:
        vocab_size (`int`, *optional*, defaults to 49408):
            Vocabulary size of the tokenizer used (CLIP BPE: 49408; SmolLM2: 49152).
        hidden_size (`int`, *optional*, defaults to 512):
            Width of the transformer.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Depth.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Number of attention heads.
        intermediate_size (`int`, *optional*):
            MLP width; defaults to `4 * hidden_size`.
        max_position_embeddings (`int`, *optional*, defaults to 77):
            Maximum number of tokens (the CLIP text context length).
        hidden_act (`str`, *optional*, defaults to `"quick_gelu"`):
            MLP activation (CLIP's).
        pooling (`str`, *optional*, defaults to `"eos"`):
            `"eos"` (last non-padding token, which under causal attention has seen the whole caption) or `"mean"`.
        padding_side (`str`, *optional*, defaults to `"right"`):
            Side the tokenizer pads on; positions follow the attention mask, so either gives the same embedding.
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the output embedding shared with the vision tower.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the initialisation.
    """

    model_type = "xray_text"

    def __init__(
        self,
        vocab_size: int = 49408,
        hidden_size: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 8,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 77,
        hidden_act: str = "quick_gelu",
        pooling: str = "eos",
        padding_side: str = "right",
        projection_dim: int = 512,
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_act = hidden_act
        self.pooling = pooling
        self.padding_side = padding_side
        self.projection_dim = projection_dim
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_xray()

    def validate_xray(self) -> None:
        """Raise a `ValueError` naming the first inconsistent setting."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "projection_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.pooling not in TEXT_POOLING_TYPES:
            raise ValueError(f"pooling must be one of {TEXT_POOLING_TYPES}, got {self.pooling!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        _refuse_foreign_checkpoint(cls, config_dict, pretrained_model_name_or_path)
        return config_dict, kwargs

    @property
    def max_text_length(self) -> int:
        """Tokens per caption: the learned positions bound it."""
        return self.max_position_embeddings

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "XrayTextConfig":
        """A config with one of Table 7's shapes: `clip-512` (CLIP's 8 heads/12 layers), `clip-768`,
        `clip-1024`, `clip-1280` (20 heads/36 layers); or `tiny` for tests."""
        if name not in TEXT_PRESETS:
            raise ValueError(f"unknown text preset {name!r}; choose one of {sorted(TEXT_PRESETS)}")
        kwargs = copy.deepcopy(TEXT_PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_clip_text_config(self):
        """The equivalent `transformers.CLIPTextConfig` (the transformer blocks come from transformers' CLIP)."""
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
            projection_dim=self.projection_dim,
            # CLIPTextModel's own pooler looks tokens up by id (its output is unused: we pool by attention
            # mask). Any in-vocabulary id other than the legacy 2 keeps that code path harmless.
            eos_token_id=self.vocab_size - 1,
            pad_token_id=0,
            bos_token_id=0,
        )


__all__ = [
    "XrayLLM2CLIPTextConfig",
    "XrayTextTowerConfigMixin",
    "embedder_kind",
    "SENTENCE_TRANSFORMERS_POOLING",
    "XrayTextConfig",
    "TEXT_PRESETS",
    "BIDIRECTIONAL_LLM_TYPES",
    "LLM2CLIP_POOLING_TYPES",
    "SMOLLM2_135M_LLM_CONFIG",
]
