import json
import math

import pytest
from transformers import AutoConfig, LlamaConfig

import xray_hf  # noqa: F401
from xray_hf import XrayCLIPConfig, XrayLLM2CLIPTextConfig, XrayTextConfig, XrayVisualConfig

TINY_LLM = {
    "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
}


def tiny_vision(**overrides) -> XrayVisualConfig:
    return XrayVisualConfig.from_preset("tiny", **overrides)


def plain_text_config(**overrides) -> XrayTextConfig:
    return XrayTextConfig.from_preset("tiny", **{"vocab_size": 100, "projection_dim": 16, **overrides})


def llm2clip_text_config(**overrides) -> XrayLLM2CLIPTextConfig:
    return XrayLLM2CLIPTextConfig(**{"llm_config": TINY_LLM, "projection_dim": 16, "adapter_depth": 1, **overrides})


def clip_config(text_config=None, **overrides) -> XrayCLIPConfig:
    text_config = plain_text_config() if text_config is None else text_config
    return XrayCLIPConfig(**{"vision_config": tiny_vision(), "text_config": text_config, "projection_dim": 16,
                             **overrides})


SETTINGS = dict(
    label_smoothing=0.1, hashtag_loss_weight=0.5, slip_weight=0.25, slip_hidden_size=48, slip_projection_dim=12,
    slip_temperature=0.2, lambda_den=0.75, denoise_ratio=0.25, denoise_noise_std=0.3, logit_scale_init_value=1.5,
    initializer_range=0.01,
)


@pytest.mark.parametrize("tower", ["plain", "llm2clip"])
def test_round_trip_keeps_every_setting_and_the_text_tower_type(tmp_path, tower):
    text = plain_text_config(pooling="mean") if tower == "plain" else llm2clip_text_config(pooling="weighted_mean")
    config = clip_config(text, **SETTINGS)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "xray_clip"
    assert saved["vision_config"]["model_type"] == "xray_visual"
    assert saved["text_config"]["model_type"] == type(text).model_type

    for loaded in (XrayCLIPConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(loaded) is XrayCLIPConfig
        assert type(loaded.vision_config) is XrayVisualConfig
        assert type(loaded.text_config) is type(text)
        for name, value in SETTINGS.items():
            assert getattr(loaded, name) == value, name
        assert loaded.projection_dim == loaded.text_config.projection_dim == 16
        assert loaded.vision_config.to_dict() == config.vision_config.to_dict()
        assert loaded.text_config.pooling == text.pooling
        drop = ("_name_or_path",)
        assert {k: v for k, v in loaded.to_dict().items() if k not in drop} == {
            k: v for k, v in config.to_dict().items() if k not in drop
        }
    if tower == "llm2clip":
        assert isinstance(loaded.text_config.llm_config, LlamaConfig)
        assert loaded.text_config.llm_config.hidden_size == 32 and loaded.text_config.llm_config.head_dim == 8
        assert loaded.text_config.llm_config.is_causal is False  # bidirectional survives the nesting
        assert loaded.text_config.embedding_settings() == config.text_config.embedding_settings()


def test_defaults_are_the_recipe():
    config = XrayCLIPConfig(vision_config=tiny_vision())
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert config.label_smoothing == 0.0 and config.lambda_den == 1.0 and config.hashtag_loss_weight == 1.0
    assert config.slip_temperature == 0.1 and config.slip_projection_dim == 256
    assert config.slip_hidden_size == 4 * 64  # 4 x the backbone width
    assert config.denoise_hidden_size == round(0.1 * 64)
    assert type(config.text_config) is XrayLLM2CLIPTextConfig  # the paper's tower by default
    assert config.text_config.projection_dim == config.projection_dim == 512
    assert XrayCLIPConfig.sub_configs_defaults["vision_config"].config_class is XrayVisualConfig


@pytest.mark.parametrize(
    "text_dict, expected",
    [
        ({"model_type": "xray_text", "hidden_size": 32, "num_attention_heads": 2}, XrayTextConfig),
        ({"model_type": "xray_llm2clip_text", "llm_config": TINY_LLM, "adapter_depth": 1}, XrayLLM2CLIPTextConfig),
        ({"llm_config": TINY_LLM}, XrayLLM2CLIPTextConfig),  # no model_type: the LLM2CLIP tower
    ],
)
def test_dict_text_config_resolves_by_model_type_and_takes_the_projection_dim(text_dict, expected):
    config = XrayCLIPConfig(vision_config=tiny_vision().to_dict(), text_config=text_dict, projection_dim=24)
    assert type(config.text_config) is expected
    assert config.text_config.projection_dim == 24
    assert type(config.vision_config) is XrayVisualConfig and config.vision_config.hidden_size == 64


def test_dict_text_config_keeps_its_own_matching_projection_dim_and_refuses_another():
    text = {"model_type": "xray_text", "hidden_size": 32, "num_attention_heads": 2}
    assert XrayCLIPConfig(vision_config=tiny_vision(), text_config={**text, "projection_dim": 24},
                          projection_dim=24).text_config.projection_dim == 24
    with pytest.raises(ValueError, match="projection_dim"):
        XrayCLIPConfig(vision_config=tiny_vision(), text_config={**text, "projection_dim": 8}, projection_dim=24)


def test_unknown_text_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type 'bert'"):
        XrayCLIPConfig(vision_config=tiny_vision(), text_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="expected 'xray_visual'"):
        XrayCLIPConfig(vision_config={"model_type": "xray_text"}, text_config=plain_text_config())


def test_given_sub_configs_are_copied_not_shared():
    vision, text = tiny_vision(), plain_text_config()
    config = clip_config(text)
    config.text_config.pooling = "mean"
    assert text.pooling == "eos"
    assert config.vision_config is not vision


@pytest.mark.parametrize("text", [plain_text_config(projection_dim=8), llm2clip_text_config(projection_dim=8)])
def test_mismatched_projection_dims_are_refused(text):
    with pytest.raises(ValueError, match=r"text_config.projection_dim \(8\) differs from projection_dim \(16\)"):
        clip_config(text)


BAD = [
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(hashtag_loss_weight=-1.0), "hashtag_loss_weight"),
    (dict(slip_weight=-0.5), "slip_weight"),
    (dict(lambda_den=-1), "lambda_den"),
    (dict(denoise_noise_std=-0.1), "denoise_noise_std"),
    (dict(logit_scale_init_value=math.log(100) + 0.01), "logit_scale_init_value"),
    (dict(logit_scale_init_value=-0.1), "logit_scale_init_value"),
    (dict(slip_temperature=0.0), "slip_temperature"),
    (dict(denoise_ratio=0.0), "denoise_ratio"),
    (dict(denoise_ratio=1.5), "denoise_ratio"),
    (dict(projection_dim=0), "projection_dim"),
    (dict(slip_projection_dim=0), "slip_projection_dim"),
    (dict(label_smoothing="0.1"), "label_smoothing"),
    (dict(lambda_den=True), "lambda_den"),
]


@pytest.mark.parametrize("bad, name", BAD)
def test_bad_values_are_refused_at_construction(bad, name):
    with pytest.raises(ValueError, match=name):
        clip_config(**bad)


@pytest.mark.parametrize("bad, name", BAD)
def test_bad_values_are_refused_as_from_pretrained_overrides(tmp_path, bad, name):
    clip_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=name):
        XrayCLIPConfig.from_pretrained(tmp_path, **bad)
    with pytest.raises(ValueError, match=name):
        AutoConfig.from_pretrained(tmp_path, **bad)


@pytest.mark.parametrize("bad, name", BAD)
def test_bad_values_set_after_construction_are_refused_at_save(tmp_path, bad, name):
    config = clip_config()
    for key, value in bad.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=name):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_valid_overrides_at_load_are_applied(tmp_path):
    clip_config().save_pretrained(tmp_path)
    loaded = XrayCLIPConfig.from_pretrained(tmp_path, label_smoothing=0.2, lambda_den=0.0)
    assert loaded.label_smoothing == 0.2 and loaded.lambda_den == 0.0


def test_sub_config_dict_overrides_at_load_become_validated_configs(tmp_path):
    clip_config().save_pretrained(tmp_path)
    loaded = XrayCLIPConfig.from_pretrained(
        tmp_path, text_config={"model_type": "xray_text", "hidden_size": 32, "num_attention_heads": 2}
    )
    assert type(loaded.text_config) is XrayTextConfig and loaded.text_config.hidden_size == 32
    assert loaded.text_config.projection_dim == 16  # a dict without projection_dim takes the composite's
    with pytest.raises(ValueError, match="num_attention_heads 7"):
        XrayCLIPConfig.from_pretrained(tmp_path, vision_config={**tiny_vision().to_dict(), "num_attention_heads": 7})


def test_projection_dim_override_at_load_must_match_the_text_tower(tmp_path):
    clip_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="differs from projection_dim"):
        XrayCLIPConfig.from_pretrained(tmp_path, projection_dim=32)


def test_nested_vision_config_broken_after_construction_is_refused_at_save(tmp_path):
    # transformers' own CLIPConfig saves this (its sub-configs are not re-validated); ours must not.
    config = clip_config()
    config.vision_config.num_attention_heads = 7  # width 64 is not divisible by 7
    with pytest.raises(ValueError, match="divisible by num_attention_heads 7"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    "text, attribute, value, message",
    [
        (plain_text_config(), "pooling", "cls", "pooling must be one of"),
        (plain_text_config(), "num_attention_heads", 3, "divisible by num_attention_heads 3"),
        (llm2clip_text_config(), "padding_side", "middle", "padding_side"),
        (llm2clip_text_config(), "adapter_depth", -1, "adapter_depth"),
    ],
)
def test_nested_text_config_broken_after_construction_is_refused_at_save(tmp_path, text, attribute, value, message):
    config = clip_config(text)
    setattr(config.text_config, attribute, value)
    with pytest.raises(ValueError, match=message):
        config.save_pretrained(tmp_path)


@pytest.mark.parametrize("text", [plain_text_config(), llm2clip_text_config()])
def test_text_projection_dim_changed_after_construction_is_refused_at_save(tmp_path, text):
    config = clip_config(text)
    config.text_config.projection_dim = 8
    with pytest.raises(ValueError, match="differs from projection_dim"):
        config.save_pretrained(tmp_path)


def test_text_config_replaced_by_a_foreign_config_is_refused_at_save(tmp_path):
    config = clip_config()
    config.text_config = LlamaConfig(**{k: v for k, v in TINY_LLM.items() if k != "model_type"})
    with pytest.raises(ValueError, match="text_config must be one of"):
        config.save_pretrained(tmp_path)


def test_a_text_tower_checkpoint_is_not_read_as_a_clip_config(tmp_path):
    plain_text_config().save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is XrayTextConfig


@pytest.mark.parametrize("other", [tiny_vision(), plain_text_config(), llm2clip_text_config()])
def test_another_models_checkpoint_is_refused_not_read_as_a_default_clip_config(tmp_path, other):
    # transformers only warns and builds the default (ViT-B/16 + SmolLM2-shaped) config from such a folder, so
    # XrayCLIPModel.from_pretrained(backbone_dir) would silently give a randomly initialised 246M-parameter model
    other.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"holds a '{other.model_type}' checkpoint, not 'xray_clip'"):
        XrayCLIPConfig.from_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(other)  # Auto still resolves the right class
