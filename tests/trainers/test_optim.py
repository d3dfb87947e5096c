import re

import pytest
import torch
from timm.optim import Lion

from xray_hf import XrayVisualConfig, XrayVisualForHashtagClassification, XrayVisualForPreTraining, XrayVisualModel
from xray_hf.trainers import XrayTrainer, XrayTrainingArguments
from xray_hf.trainers.optim import build_optimizer, param_groups


def tiny_mae():
    torch.manual_seed(0)
    return XrayVisualForPreTraining(XrayVisualConfig.from_preset(
        "tiny", decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4))


def names_by(groups, pred):
    return {n for g in groups if pred(g) for n in g["names"]}


def test_weight_decay_only_on_weight_matrices():
    groups = param_groups(tiny_mae(), 1e-3, 0.05)
    no_decay = names_by(groups, lambda g: g["weight_decay"] == 0.0)
    decay = names_by(groups, lambda g: g["weight_decay"] == 0.05)
    assert "xray_visual.encoder.layer.0.attention.qkv.weight" in decay
    assert "decoder.pred.weight" in decay
    for name in ("xray_visual.encoder.layer.0.attention.qkv.bias", "xray_visual.layernorm.weight",
                 "xray_visual.embeddings.cls_token", "xray_visual.embeddings.register_tokens",
                 "xray_visual.embeddings.position_embeddings_time", "decoder.mask_token"):
        assert name in no_decay, name
    assert all(g["lr"] == 1e-3 for g in groups)


def test_layer_wise_lr_decay():
    model = XrayVisualForHashtagClassification(XrayVisualConfig.from_preset("tiny", num_labels=5))  # 4 layers
    backbone = model.xray_visual  # the backbone declares the depths
    assert backbone.layer_id("embeddings.cls_token") == 0
    assert backbone.layer_id("encoder.layer.2.mlp.fc1.weight") == 3
    assert backbone.layer_id("layernorm.weight") == 5
    groups = param_groups(model, 1.0, 0.0, layer_decay=0.5)
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["classifier.weight"] == 1.0 and lr["xray_visual.layernorm.weight"] == 1.0
    assert lr["xray_visual.encoder.layer.3.attention.qkv.weight"] == 0.5
    assert lr["xray_visual.encoder.layer.0.attention.qkv.weight"] == 0.5**4
    assert lr["xray_visual.embeddings.patch_embeddings.projection.weight"] == 0.5**5
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, 1.0, 0.0, layer_decay=1.5)


def test_lion_and_adamw(tmp_path):
    groups = param_groups(tiny_mae(), 1e-3, 0.05)
    lion = build_optimizer("lion", groups, 1e-3, (0.9, 0.99))
    assert isinstance(lion, Lion) and lion.defaults["betas"] == (0.9, 0.99)
    adamw = build_optimizer("adamw", groups, 1e-3)
    assert isinstance(adamw, torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("sgd", groups, 1e-3)
    with pytest.raises(ValueError, match="optimizer"):
        XrayTrainingArguments(output_dir=str(tmp_path), optimizer="sgd")
    # the Trainer builds Lion with the paper's betas and keeps per-group lr scales under its scheduler
    args = XrayTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5,
                                 max_steps=10, report_to=[])
    trainer = XrayTrainer(model=XrayVisualForHashtagClassification(XrayVisualConfig.from_preset("tiny", num_labels=3)),
                          args=args)
    trainer.create_optimizer_and_scheduler(10)
    assert isinstance(trainer.optimizer, Lion) and trainer.optimizer.defaults["betas"] == (0.9, 0.99)
    assert {g["lr_scale"] for g in trainer.optimizer.param_groups} == {0.5**k for k in range(6)}
    for group in trainer.optimizer.param_groups:  # the scheduler multiplies each group's own (scaled) lr
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        assert group["weight_decay"] in (0.0, 0.05)


# --------------------------------------------------------------- the groups the models declare = the old name rules

_OLD_NO_DECAY = re.compile(
    r"(bias$|norm|layernorm|cls_token|register_tokens|mask_token|position_embeddings|attention_pooling\.query)"
)


def _old_layer_id(name, num_layers):
    match = re.search(r"(?:^|\.)encoder\.layer\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(?:^|\.)embeddings\.", name) and not name.startswith("decoder."):
        return 0
    return num_layers + 1


def _old_settings(model, layer_decay=None):
    """(lr scale, weight decay) of every trainable parameter, by the name matching param_groups used before models
    declared `no_weight_decay()` and `layer_id()`."""
    declared = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    num_layers = getattr(model.config, "num_hidden_layers", None)
    settings = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decay = param.ndim > 1 and not _OLD_NO_DECAY.search(name) and name not in declared
            scale = layer_decay ** (num_layers + 1 - _old_layer_id(name, num_layers)) if layer_decay else 1.0
            settings[name] = (scale, 0.05 if decay else 0.0)
    return settings


def _settings(model, layer_decay=None):
    groups = param_groups(model, 1.0, 0.05, layer_decay=layer_decay)
    return {name: (g["lr_scale"], g["weight_decay"]) for g in groups for name in g["names"]}


def _tiny_clip(text_config):
    from xray_hf import XrayCLIPConfig, XrayCLIPModel

    vision = XrayVisualConfig.from_preset("tiny", pooling="attention")
    return XrayCLIPModel(XrayCLIPConfig(vision_config=vision.to_dict(), text_config=text_config, projection_dim=16))


def _shipped_models():
    from xray_hf import XrayLLM2CLIPTextConfig
    from xray_hf.configuration.text import XrayTextConfig
    from xray_hf.modeling.classification import XrayVisualForImageClassification
    from xray_hf.modeling.distillation import XrayVisualForDistillation

    torch.manual_seed(0)
    tiny = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, projection_dim=16)
    clip = _tiny_clip(XrayTextConfig(vocab_size=100, max_position_embeddings=32, **tiny).to_dict())
    compressed = _tiny_clip(XrayTextConfig(vocab_size=100, max_position_embeddings=32, **tiny).to_dict())
    compressed.add_embedding_compression({"compressed_dim": 8, "matryoshka_dims": [4]})
    llm = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    llama = _tiny_clip(XrayLLM2CLIPTextConfig(llm_config=dict(model_type="llama", num_key_value_heads=2, **llm),
                                              projection_dim=16, freeze_llm=False).to_dict())
    bert = _tiny_clip(XrayLLM2CLIPTextConfig(llm_config=dict(model_type="bert", **llm), projection_dim=16,
                                             freeze_llm=False).to_dict())
    return {
        "backbone": XrayVisualModel(XrayVisualConfig.from_preset("tiny", pooling="attention")),
        "mae": tiny_mae(),
        "hashtag": XrayVisualForHashtagClassification(XrayVisualConfig.from_preset("tiny", num_labels=5)),
        "classification": XrayVisualForImageClassification(XrayVisualConfig.from_preset("tiny", num_labels=3)),
        "distillation": XrayVisualForDistillation(XrayVisualConfig.from_preset("tiny")),
        "clip": clip, "clip_compressed": compressed, "clip_llama_tower": llama, "clip_bert_tower": bert,
    }


def test_declared_groups_are_the_old_name_matching_groups():
    for kind, model in _shipped_models().items():
        assert _settings(model) == _old_settings(model), kind
        if getattr(model.config, "num_hidden_layers", None) is not None:
            assert _settings(model, layer_decay=0.5) == _old_settings(model, layer_decay=0.5), kind
    bert = _shipped_models()["clip_bert_tower"]
    assert _settings(bert)["text_model.llm.embeddings.position_embeddings.weight"] == (1.0, 0.0)
