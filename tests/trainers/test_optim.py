import pytest
import torch
from timm.optim import Lion

from xray_hf import XrayVisualConfig, XrayVisualForHashtagClassification, XrayVisualForPreTraining
from xray_hf.trainers import XrayTrainer, XrayTrainingArguments
from xray_hf.trainers.optim import build_optimizer, layer_id, param_groups


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
    assert layer_id("xray_visual.embeddings.cls_token", 4) == 0
    assert layer_id("xray_visual.encoder.layer.2.mlp.fc1.weight", 4) == 3
    assert layer_id("classifier.weight", 4) == 5
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
