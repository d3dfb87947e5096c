import pytest
import torch
from transformers import AutoConfig

import xray_hf  # noqa: F401
from xray_hf import XrayVisualConfig, XrayVisualModel
from xray_hf.configuration.visual import PRESETS, uniform_evit_layers

# Published sizes (millions of parameters) and the tolerance we accept for our 3D tokenizer,
# registers and factorised position tables. EViT-2B: our shape, width 1792 x 48 layers, MLP 8192.
PUBLISHED = {"vit-b16": 86.6, "vit-l16": 304.3, "vit-h14": 632.0, "evit-2b": 2000.0}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_published_sizes(name):
    with torch.device("meta"):
        model = XrayVisualModel(XrayVisualConfig.from_preset(name))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PUBLISHED[name], rel=0.03), f"{name}: {millions:.1f}M"


def test_preset_names_and_tiny_is_small():
    assert set(PRESETS) == {"tiny", "vit-b16", "vit-l16", "vit-h14", "evit-2b"}
    tiny = XrayVisualConfig.from_preset("tiny")
    assert sum(p.numel() for p in XrayVisualModel(tiny).parameters()) < 500_000


def test_preset_overrides_and_unknown_preset():
    config = XrayVisualConfig.from_preset("vit-b16", image_size=288, keep_rate=0.7, evit_layers=[3, 6, 9])
    assert config.image_size == 288 and config.keep_rate_for_layer(6) == 0.7 and config.keep_rate_for_layer(5) == 1.0
    with pytest.raises(ValueError, match="unknown preset"):
        XrayVisualConfig.from_preset("vit-z99")


def test_evit_2b_preset_uses_three_uniform_layers():
    config = XrayVisualConfig.from_preset("evit-2b")
    assert config.evit_layers == uniform_evit_layers(48) == [12, 24, 36]
    assert uniform_evit_layers(12) == [3, 6, 9]


def test_round_trip_through_save_pretrained(tmp_path):
    config = XrayVisualConfig.from_preset(
        "tiny", image_size=(32, 48), pooling="mean", evit_layers=[1, 2], keep_rate=[0.7, 0.5], tome_r=3
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, XrayVisualConfig)
    for key in ("image_size", "pooling", "evit_layers", "keep_rate", "tome_r", "num_register_tokens", "tubelet_size"):
        assert getattr(loaded, key) == getattr(config, key), key
    assert loaded.image_size_hw == (32, 48)
    assert loaded.grid_size == (2, 4, 6)


def test_mlp_ratio_sets_intermediate_size():
    assert XrayVisualConfig(hidden_size=64, num_attention_heads=4, mlp_ratio=2.0).intermediate_size == 128


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep_rate=1.5, evit_layers=[1]), "keep_rate must be in"),
        (dict(keep_rate=0.0, evit_layers=[1]), "keep_rate must be in"),
        (dict(keep_rate=[0.5], evit_layers=[1, 2]), "keep_rate has 1 values"),
        (dict(evit_layers=[7]), "outside"),
        (dict(evit_layers=[1, 1]), "duplicates"),
        (dict(image_size=30), "divisible by patch_size"),
        (dict(num_frames=3), "divisible by tubelet_size"),
        (dict(hidden_size=66), "divisible by num_attention_heads"),
        (dict(pooling="max"), "pooling must be one of"),
        (dict(tome_r=-1), "tome_r"),
        (dict(num_register_tokens=-2), "num_register_tokens"),
        (dict(image_size=(32, 32, 32)), "image_size"),
        (dict(evit_layers=["1"]), "evit_layers must be a list of ints"),
        (dict(evit_layers=[1], keep_rate="high"), "keep_rate must be a float"),
    ],
)
def test_bad_settings_raise_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        XrayVisualConfig.from_preset("tiny", **kwargs)


def test_unsorted_evit_layers_keep_their_keep_rates_through_save_and_reload(tmp_path):
    config = XrayVisualConfig.from_preset("tiny", evit_layers=[3, 1], keep_rate=[0.5, 0.9])
    pairs = {layer: config.keep_rate_for_layer(layer) for layer in range(4)}
    assert pairs == {0: 1.0, 1: 0.9, 2: 1.0, 3: 0.5}
    config.save_pretrained(tmp_path)
    assert {layer: AutoConfig.from_pretrained(tmp_path).keep_rate_for_layer(layer) for layer in range(4)} == pairs
    # the same pairs given as overrides to from_pretrained
    XrayVisualConfig.from_preset("tiny").save_pretrained(tmp_path / "dense")
    for loader in (XrayVisualConfig.from_pretrained, AutoConfig.from_pretrained):
        loaded = loader(tmp_path / "dense", evit_layers=[3, 1], keep_rate=[0.5, 0.9])
        assert {layer: loaded.keep_rate_for_layer(layer) for layer in range(4)} == pairs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(keep_rate=1.7, evit_layers=[1]), "keep_rate must be in"),
        (dict(evit_layers=[9]), "outside"),
        (dict(patch_size=7), "divisible by patch_size"),
        (dict(keep_rate=[0.5], evit_layers=[1, 2]), "keep_rate has 1 values"),
    ],
)
def test_overrides_at_load_are_validated(tmp_path, overrides, message):
    XrayVisualConfig.from_preset("tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        XrayVisualConfig.from_pretrained(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        XrayVisualConfig.from_dict(XrayVisualConfig.from_preset("tiny").to_dict(), **overrides)


def test_model_from_pretrained_validates_overrides(tmp_path):
    XrayVisualModel(XrayVisualConfig.from_preset("tiny")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="keep_rate must be in"):
        XrayVisualModel.from_pretrained(tmp_path, evit_layers=[1], keep_rate=1.7)


def test_save_pretrained_refuses_a_config_broken_after_construction(tmp_path):
    config = XrayVisualConfig.from_preset("tiny")
    config.patch_size = 7
    with pytest.raises(ValueError, match="divisible by patch_size"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
