"""The `mntp` and `simcse` stages from run configs on the OpenMoji captions and tags: a tiny LLaMA made an LLM2CLIP
tower, MNTP then SimCSE with LoRA, each saving the merged tower that the next stage (and the clip stage) loads."""

import copy

import pytest
import torch
from transformers import AutoModel

from xray_hf import (
    XrayCLIPModel,
    XrayLLM2CLIPTextModel,
    XrayVisualConfig,
    XrayVisualModel,
)
from xray_hf.run_config.data import TextDataSpec
from xray_hf.trainers.llm2vec_run import item_texts
from xray_hf.trainers.run import run_stage

DATA = {"sources": [{"name": "openmoji", "split": "train", "columns": ["caption", "hashtags"], "max_samples": 64}],
        "max_length": 16}
TRAINING = {"per_device_train_batch_size": 16, "learning_rate": 5e-3, "warmup_steps": 1, "logging_steps": 1,
            "save_strategy": "no", "report_to": [], "disable_tqdm": True, "use_cpu": True}


def config(stage, output_dir, text, max_steps=8, **training):
    return {"stage": stage, "seed": 0,
            "model": {"text": text, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "data": copy.deepcopy(DATA),
            "training": {"output_dir": str(output_dir), "max_steps": max_steps, **TRAINING, **training}}


def _llm_state(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith("llm.")}


@pytest.fixture(scope="module")
def chain(llm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("llm2vec")
    text = {"from_llm": str(llm_dir), "config": {"pooling": "mean", "max_text_length": 16, "projection_dim": 16}}
    mntp = run_stage("mntp", config("mntp", root / "mntp", text))
    simcse = run_stage("simcse", config("simcse", root / "simcse", {"from_pretrained": str(root / "mntp")}))
    return root, mntp, simcse


def test_mntp_saves_a_merged_tower_that_differs_from_its_base_only_in_the_llm(chain):
    root, mntp, _ = chain
    losses = [e["loss"] for e in mntp["log_history"] if "loss" in e]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert mntp["texts"] > 64  # captions and tag texts
    tower = AutoModel.from_pretrained(root / "mntp")
    assert isinstance(tower, XrayLLM2CLIPTextModel)
    assert not (root / "mntp" / "adapter_config.json").exists()  # the root is the merged tower, not an adapter
    assert (root / "mntp" / "lora" / "adapter_config.json").is_file() and (root / "mntp" / "tokenizer.json").is_file()
    base = XrayLLM2CLIPTextModel.from_pretrained(root / "mntp" / "base")
    changed = [k for k, v in _llm_state(base).items() if not torch.equal(v, tower.state_dict()[k])]
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)  # LoRA merged in
    for name, value in base.state_dict().items():  # MNTP never touches the adapter and projection
        if not name.startswith("llm."):
            assert torch.equal(value, tower.state_dict()[name]), name
    assert not (root / "mntp" / "training_args.bin").exists()


def test_simcse_continues_from_mntp_and_feeds_the_clip_stage(chain):
    root, _, simcse = chain
    assert simcse["items"] > 0 and simcse["items"] + simcse["items_without_a_pair"] == 64
    mntp, tower = AutoModel.from_pretrained(root / "mntp"), AutoModel.from_pretrained(root / "simcse")
    assert any(not torch.equal(v, tower.state_dict()[k]) for k, v in _llm_state(mntp).items())
    backbone = XrayVisualModel(XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4))
    clip = XrayCLIPModel.from_stages(vision=backbone, text=str(root / "simcse"))
    assert not any(p.requires_grad for p in clip.text_model.llm.parameters())  # frozen for the CLIP stage
    for name, value in tower.state_dict().items():
        assert torch.equal(value, clip.text_model.state_dict()[name]), name


def test_text_stage_configs_are_checked(llm_dir, tmp_path):
    with pytest.raises(ValueError, match="sources"):
        TextDataSpec.from_dict({"max_length": 16})
    with pytest.raises(ValueError, match="unknown"):
        TextDataSpec.from_dict({"sources": [{"name": "openmoji", "colums": ["caption"]}]})
    with pytest.raises(ValueError, match="no column"):
        item_texts(TextDataSpec.from_dict({"sources": [{"name": "openmoji", "columns": ["title"]}]}))
    with pytest.raises(ValueError, match="from_pretrained"):
        run_stage("simcse", config("simcse", tmp_path / "x", {"from_llm": str(llm_dir)}))
    plain = {"preset": "tiny", "tokenizer": "smollm2", "config": {"num_hidden_layers": 1, "hidden_size": 32,
                                                                  "num_attention_heads": 2}}
    with pytest.raises(ValueError, match="LLM2CLIP text tower"):
        run_stage("mntp", config("mntp", tmp_path / "x", plain))
