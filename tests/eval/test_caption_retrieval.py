"""Caption retrieval accuracy (LLM2CLIP's CRA) of text models: a contrastively trained sentence embedder finds an
emoji's tags from its name far more often than a raw LLM or a random tower."""

from __future__ import annotations

import json

import pytest
import torch

from xray_hf.eval import run_eval
from xray_hf.eval.caption_retrieval import caption_retrieval_accuracy, run_caption_retrieval


def test_accuracy_is_top1_both_ways():
    queries = torch.eye(3)
    targets = torch.tensor([[1.0, 0, 0], [0, 0.2, 1.0], [0, 0, 1.0]])  # item 1's text leans towards item 2
    metrics = caption_retrieval_accuracy(queries, targets)
    assert metrics["cra_caption_to_text"] == pytest.approx(1.0)  # each caption's nearest text is its own
    assert metrics["cra_text_to_caption"] == pytest.approx(2 / 3)  # item 1's text is nearer caption 2
    assert metrics["cra"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="must be equal"):
        caption_retrieval_accuracy(queries, targets[:2])


def test_minilm_beats_a_random_tower_on_openmoji(tmp_path):
    result = run_eval("minilm", "caption-retrieval", "openmoji", split="test", output=tmp_path / "cra.json")
    assert result["task"] == "caption_retrieval" and result["num_items"] == 192
    assert result["metrics"]["cra"] > 0.9
    assert json.loads((tmp_path / "cra.json").read_text())["metrics"] == result["metrics"]
    from transformers import AutoTokenizer

    from xray_hf import XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextModel
    from xray_hf.convert import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    torch.manual_seed(0)
    random = XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig(
        llm_config=dict(model_type="bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=64), projection_dim=8)).eval()
    baseline = run_caption_retrieval(random, "openmoji", "test", tokenizer=tokenizer)["metrics"]["cra"]
    assert baseline < result["metrics"]["cra"] - 0.3


def test_bad_model_and_column_are_named():
    with pytest.raises(FileNotFoundError, match="packaged|neither a folder"):
        run_caption_retrieval("no-such-model")
    with pytest.raises(ValueError, match="no column 'tags'"):
        run_caption_retrieval("minilm", text_column="tags")


def test_a_clip_checkpoint_is_read_as_ours_although_it_carries_sentence_transformers_files(tmp_path):
    """CLIP checkpoints ship modules.json for sentence-transformers; CRA must still embed with their own tower."""
    from transformers import AutoTokenizer

    from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextModel
    from xray_hf.configuration.visual import XrayVisualConfig
    from xray_hf.convert import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    text = XrayLLM2CLIPTextConfig(llm_config=dict(model_type="bert", vocab_size=len(tokenizer), hidden_size=32,
                                                  num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
                                  projection_dim=8)
    torch.manual_seed(0)
    clip = XrayCLIPModel(XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text,
                                        projection_dim=8)).eval()
    clip.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "x.Transformer"}]')
    from_dir = run_caption_retrieval(tmp_path, max_samples=32)["metrics"]
    in_memory = run_caption_retrieval(clip, tokenizer=tokenizer, max_samples=32)["metrics"]
    assert from_dir == in_memory
    with pytest.raises(ValueError, match="already an xray_hf checkpoint"):
        XrayLLM2CLIPTextModel.from_llm(tmp_path)
