import json

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

import xray_hf  # noqa: F401
from xray_hf import XrayLLM2CLIPTextConfig, XrayTextConfig, XrayTextModel
from xray_hf.configuration.text import BIDIRECTIONAL_LLM_TYPES, TEXT_PRESETS

TINY_LLAMA = dict(
    model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)


def test_llm2clip_defaults_describe_smollm2_and_recipe():
    config = XrayLLM2CLIPTextConfig()
    assert isinstance(config.llm_config, LlamaConfig)
    assert (config.llm_config.hidden_size, config.llm_config.num_hidden_layers) == (576, 30)
    assert config.llm_config.vocab_size == 49152 and config.llm_config.tie_word_embeddings
    assert config.pooling == "mean" and config.bidirectional and config.freeze_llm
    assert config.adapter_depth == 4  # LLM2CLIP's adapter (RECIPE 4.6.2)
    assert config.adapter_hidden_size == 576
    assert config.llm_config.is_causal is False


def test_llm2clip_round_trip_keeps_every_embedding_setting(tmp_path):
    config = XrayLLM2CLIPTextConfig(
        llm_config=TINY_LLAMA, pooling="weighted_mean", max_text_length=33, padding_side="left",
        adapter_depth=2, adapter_hidden_size=48, projection_dim=24, freeze_llm=False,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "xray_llm2clip_text"
    assert saved["llm_config"]["model_type"] == "llama" and saved["llm_config"]["is_causal"] is False
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, XrayLLM2CLIPTextConfig)
    assert loaded.embedding_settings() == config.embedding_settings()
    for name in ("adapter_depth", "adapter_hidden_size", "projection_dim", "freeze_llm"):
        assert getattr(loaded, name) == getattr(config, name)
    assert loaded.llm_config.hidden_size == 32 and loaded.llm_config.is_causal is False


def test_llm_config_object_is_copied_not_mutated():
    llm = LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"})
    config = XrayLLM2CLIPTextConfig(llm_config=llm)
    assert config.llm_config is not llm
    assert getattr(llm, "is_causal", True) is True
    assert config.llm_config.is_causal is False


def test_causal_option_keeps_llm_causal_and_refuses_a_bidirectional_llm():
    assert getattr(XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA, bidirectional=False).llm_config, "is_causal", True)
    with pytest.raises(ValueError, match="bidirectional=False"):
        XrayLLM2CLIPTextConfig(llm_config={**TINY_LLAMA, "is_causal": False}, bidirectional=False)


def test_embedding_settings_follow_pooling():
    a = XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA)
    b = XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA, pooling="eos")
    assert a.embedding_settings() != b.embedding_settings()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pooling="max"), "pooling"),
        (dict(padding_side="middle"), "padding_side"),
        (dict(max_text_length=0), "max_text_length"),
        (dict(projection_dim=-1), "projection_dim"),
        (dict(adapter_depth=-1), "adapter_depth"),
        (dict(adapter_dropout=1.0), "adapter_dropout"),
        (dict(llm_config=dict(model_type="gpt2")), "not a supported text model"),
        (dict(llm_config=dict(model_type="t5")), "not a supported text model"),
        (dict(llm_config=dict(model_type="bert"), bidirectional=False), "bidirectional by design"),
        (dict(llm_config=dict(model_type="bert"), padding_side="left"), "left padding would shift"),
        (dict(llm_config=dict(hidden_size=32)), "model_type"),
    ],
)
def test_llm2clip_bad_settings_raise(kwargs, message):
    kwargs = {"llm_config": TINY_LLAMA, **kwargs}
    with pytest.raises(ValueError, match=message):
        XrayLLM2CLIPTextConfig(**kwargs)


def test_llm_config_of_wrong_type_raises():
    with pytest.raises(TypeError, match="llm_config"):
        XrayLLM2CLIPTextConfig(llm_config=["llama"])


def test_supported_llm_types_build():
    for model_type in BIDIRECTIONAL_LLM_TYPES:
        config = XrayLLM2CLIPTextConfig(llm_config={**TINY_LLAMA, "model_type": model_type})
        assert config.llm_config.model_type == model_type and config.llm_config.is_causal is False


def test_foreign_checkpoint_config_is_refused(tmp_path):
    LlamaConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="from_llm"):
        XrayLLM2CLIPTextConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' checkpoint"):
        XrayTextConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "name, heads, layers, width",
    [("clip-512", 8, 12, 512), ("clip-768", 12, 12, 768), ("clip-1024", 16, 24, 1024), ("clip-1280", 20, 36, 1280)],
)
def test_text_presets_are_table_7(name, heads, layers, width):
    config = XrayTextConfig.from_preset(name)
    assert (config.num_attention_heads, config.num_hidden_layers, config.hidden_size) == (heads, layers, width)
    assert config.intermediate_size == 4 * width
    clip = config.to_clip_text_config()
    assert (clip.num_attention_heads, clip.num_hidden_layers, clip.hidden_size) == (heads, layers, width)


def test_clip_512_preset_has_clip_text_tower_size():
    # OpenAI CLIP's text tower (12 layers, width 512, 49408 tokens, 77 positions) has 63.2M parameters
    # plus its 512x512 projection; built on the meta device, no memory is used.
    with torch.device("meta"):
        model = XrayTextModel(XrayTextConfig.from_preset("clip-512"))
    params = sum(p.numel() for p in model.parameters())
    assert 63.0e6 < params < 63.5e6
    assert set(TEXT_PRESETS) >= {"clip-512", "clip-768", "clip-1024", "clip-1280"}


def test_text_round_trip_and_validation(tmp_path):
    config = XrayTextConfig.from_preset("tiny", vocab_size=300, pooling="mean", padding_side="left")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, XrayTextConfig)
    assert (loaded.vocab_size, loaded.pooling, loaded.padding_side) == (300, "mean", "left")
    with pytest.raises(ValueError, match="divisible"):
        XrayTextConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        XrayTextConfig(pooling="cls")
    with pytest.raises(ValueError, match="unknown text preset"):
        XrayTextConfig.from_preset("huge")


@pytest.mark.parametrize(
    "build, overrides, message",
    [
        (lambda: XrayTextConfig.from_preset("tiny"), dict(pooling="cls"), "pooling"),
        (lambda: XrayTextConfig.from_preset("tiny"), dict(num_attention_heads=5), "divisible"),
        (lambda: XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA), dict(padding_side="middle"), "padding_side"),
        (lambda: XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA), dict(adapter_depth=-1), "adapter_depth"),
    ],
    ids=["text-pooling", "text-heads", "llm2clip-padding_side", "llm2clip-adapter_depth"],
)
def test_overrides_at_load_are_validated(tmp_path, build, overrides, message):
    config = build()
    config.save_pretrained(tmp_path)
    cls = type(config)
    with pytest.raises(ValueError, match=message):
        cls.from_pretrained(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        cls.from_dict(config.to_dict(), **overrides)


@pytest.mark.parametrize(
    "build, name, value, message",
    [
        (lambda: XrayTextConfig.from_preset("tiny"), "hidden_size", 30, "divisible"),
        (lambda: XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA), "pooling", "max", "pooling"),
    ],
    ids=["text", "llm2clip"],
)
def test_save_pretrained_refuses_a_config_broken_after_construction(tmp_path, build, name, value, message):
    config = build()
    setattr(config, name, value)
    with pytest.raises(ValueError, match=message):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_valid_overrides_at_load_apply_and_keep_the_llm_bidirectional(tmp_path):
    XrayLLM2CLIPTextConfig(llm_config=TINY_LLAMA).save_pretrained(tmp_path)
    loaded = XrayLLM2CLIPTextConfig.from_pretrained(tmp_path, pooling="eos", llm_config={"num_hidden_layers": 1})
    assert loaded.pooling == "eos" and loaded.llm_config.num_hidden_layers == 1
    assert loaded.llm_config.is_causal is False
