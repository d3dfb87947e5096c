"""Frozen text-embedding models in the LLM2CLIP slot: encoders (BERT & co.), sentence-transformers folders and
causal decoders with last-token pooling. The tower's frozen pooled output must be what sentence-transformers
itself computes for the same folder."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as models
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

import xray_hf  # noqa: F401
from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
from xray_hf.configuration.visual import XrayVisualConfig
from xray_hf.convert import minilm_folder, resolve_text_model
from xray_hf.modeling.text_pooling import pool_tokens
from xray_hf.trainers.fsdp import frozen_subtrees, transformer_blocks

TEXTS = ["a red heart", "a grinning face with big eyes " * 30, "x", "two dogs playing in the snow"]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_folder())


def pooled(tower: XrayLLM2CLIPTextModel, tokenizer, texts=TEXTS) -> torch.Tensor:
    tokens = tower.tokenize(tokenizer, texts)
    with torch.no_grad():
        return tower.get_llm_pooled_output(tokens["input_ids"], tokens["attention_mask"])


def encode(folder, texts=TEXTS) -> torch.Tensor:
    return torch.tensor(SentenceTransformer(str(folder), device="cpu").encode(texts))


def test_minilm_tower_equals_sentence_transformers_encode(minilm_tokenizer):
    tower = XrayLLM2CLIPTextModel.from_llm(resolve_text_model("minilm"), projection_dim=32).eval()
    config = tower.config
    assert (config.kind, config.pooling, config.normalize_pooled, config.max_text_length) == ("encoder", "mean",
                                                                                              True, 256)
    assert config.llm_config.model_type == "bert" and tower.lm_head is None
    torch.testing.assert_close(pooled(tower, minilm_tokenizer), encode(minilm_folder()), atol=1e-5, rtol=0)
    trainable = {name for name, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("adapter.", "text_projection.")) for name in trainable)


def tiny_bert_folder(path, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("mode, normalize", [("cls", False), ("mean", True), ("weightedmean", False)])
def test_sentence_transformers_folder_settings_are_read(tmp_path, minilm_tokenizer, mode, normalize):
    transformer = models.Transformer(str(tiny_bert_folder(tmp_path / "bert", minilm_tokenizer)), max_seq_length=48)
    modules = [transformer, models.Pooling(32, pooling_mode=mode)] + ([models.Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "st"))
    tower = XrayLLM2CLIPTextModel.from_llm(tmp_path / "st", projection_dim=8).eval()
    expected_pooling = {"cls": "cls", "mean": "mean", "weightedmean": "weighted_mean"}[mode]
    assert (tower.config.pooling, tower.config.normalize_pooled, tower.config.max_text_length) == (
        expected_pooling, normalize, 48)
    if mode != "weightedmean":  # sentence-transformers weighs by absolute position; equal under right padding only
        torch.testing.assert_close(pooled(tower, minilm_tokenizer), encode(tmp_path / "st"), atol=1e-5, rtol=0)


def test_causal_decoder_folder_with_last_token_pooling_equals_sentence_transformers(tmp_path, minilm_tokenizer):
    """An e5-mistral-style embedder: a causal decoder, last-token pooling; the tower runs it causal, as ST does."""
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                           pad_token_id=0)).save_pretrained(tmp_path / "llm")
    minilm_tokenizer.save_pretrained(tmp_path / "llm")
    transformer = models.Transformer(str(tmp_path / "llm"), max_seq_length=64)
    SentenceTransformer(modules=[transformer, models.Pooling(32, pooling_mode="lasttoken")], device="cpu").save(
        str(tmp_path / "st"))
    tower = XrayLLM2CLIPTextModel.from_llm(tmp_path / "st", projection_dim=8).eval()
    assert (tower.config.kind, tower.config.pooling, tower.config.bidirectional) == ("decoder", "eos", False)
    torch.testing.assert_close(pooled(tower, minilm_tokenizer), encode(tmp_path / "st"), atol=1e-5, rtol=0)


def test_modules_the_tower_cannot_reproduce_are_refused(tmp_path, minilm_tokenizer):
    transformer = models.Transformer(str(tiny_bert_folder(tmp_path / "bert", minilm_tokenizer)))
    dense = [transformer, models.Pooling(32), models.Dense(32, 16)]
    SentenceTransformer(modules=dense, device="cpu").save(str(tmp_path / "dense"))
    with pytest.raises(ValueError, match="Dense"):
        XrayLLM2CLIPTextModel.from_llm(tmp_path / "dense")
    SentenceTransformer(modules=[transformer, models.Pooling(32)], device="cpu").save(str(tmp_path / "two"))
    pooling_file = tmp_path / "two" / "1_Pooling" / "config.json"  # a folder of sentence-transformers < 6
    pooling_file.write_text(json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="exactly one"):
        XrayLLM2CLIPTextModel.from_llm(tmp_path / "two")
    with pytest.raises(ValueError, match="MNTP trains decoder"):
        XrayLLM2CLIPTextForMNTP.from_llm(tmp_path / "bert")


def encoder_tower(tokenizer, seed: int = 0) -> XrayLLM2CLIPTextModel:
    llm = dict(model_type="bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(seed)
    return XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig(llm_config=llm, projection_dim=8, max_text_length=16)).eval()


def test_encoder_tower_saves_loads_and_its_cached_path_equals_the_token_path(tmp_path, minilm_tokenizer):
    tower = encoder_tower(minilm_tokenizer)
    tokens = tower.tokenize(minilm_tokenizer, TEXTS)
    assert tokens["input_ids"].shape[1] == 16  # the long caption is cut at the tower's max_text_length
    with torch.no_grad():
        from_tokens = tower.get_text_features(**tokens).pooler_output
        from_cache = tower.get_text_features(llm_pooled_output=pooled(tower, minilm_tokenizer)).pooler_output
    torch.testing.assert_close(from_cache, from_tokens, atol=1e-6, rtol=0)
    tower.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(again, XrayLLM2CLIPTextModel) and not any(p.requires_grad for p in again.llm.parameters())
    with torch.no_grad():
        torch.testing.assert_close(again.get_text_features(**tokens).pooler_output, from_tokens, atol=0, rtol=0)


def test_a_frozen_encoder_is_its_own_fsdp_unit_and_its_layers_are_listed(minilm_tokenizer):
    clip = XrayCLIPModel.from_stages(
        vision=xray_hf.XrayVisualModel(XrayVisualConfig.from_preset("tiny")), text=encoder_tower(minilm_tokenizer))
    blocks = transformer_blocks(clip)
    assert sum(type(b).__name__ == "BertLayer" for b in blocks) == 2
    assert sum(type(b).__name__ == "XrayVisualLayer" for b in blocks) == clip.config.vision_config.num_hidden_layers
    taken = {id(p) for b in blocks for p in b.parameters()}
    assert frozen_subtrees(clip, taken) == [clip.text_model.llm]


def test_from_stages_honours_the_towers_own_freeze_setting(minilm_tokenizer):
    tower = encoder_tower(minilm_tokenizer)
    tower.freeze_llm(False)
    clip = XrayCLIPModel.from_stages(vision=xray_hf.XrayVisualModel(XrayVisualConfig.from_preset("tiny")), text=tower)
    assert clip.config.text_config.freeze_llm is False and all(p.requires_grad for p in clip.text_model.llm.parameters())
    frozen = XrayCLIPModel.from_stages(vision=xray_hf.XrayVisualModel(XrayVisualConfig.from_preset("tiny")),
                                       text=encoder_tower(minilm_tokenizer))
    assert not any(p.requires_grad for p in frozen.text_model.llm.parameters())


@pytest.mark.parametrize("model_type, block", [("bert", "BertLayer"), ("roberta", "RobertaLayer"),
                                               ("xlm-roberta", "XLMRobertaLayer"), ("mpnet", "MPNetLayer")])
def test_every_encoder_family_builds_runs_and_lists_its_blocks(model_type, block):
    """MPNet has no SDPA and no `_no_split_modules`: it still builds (transformers picks its attention) and its
    layers are found for FSDP wrapping."""
    llm = dict(model_type=model_type, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, pad_token_id=1)
    torch.manual_seed(0)
    tower = XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig(llm_config=llm, projection_dim=8)).eval()
    assert block in tower._no_split_modules
    assert sum(type(b).__name__ == block for b in transformer_blocks(tower)) == 2
    ids = torch.randint(3, 64, (2, 5))
    with torch.no_grad():
        assert tower.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output.shape == (2, 8)


def test_cls_pooling_takes_the_first_real_token_on_either_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_tokens(hidden, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool_tokens(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
