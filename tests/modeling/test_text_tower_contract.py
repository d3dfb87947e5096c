"""One tokenization for every path a caption takes to a text tower: a caption longer than the tower's limit gives
the same vector through the processor, the training collator, the text cache, `xray-hf eval`'s encoder (used by
the compress stage) and the curation similarity scorer. (Before, eval, compress and curation tokenized without the
tower's limit: the plain tower crashed on a long caption and the LLM2CLIP tower embedded it differently.)"""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from xray_hf import (XrayCLIPConfig, XrayCLIPModel, XrayCLIPProcessor, XrayLLM2CLIPTextConfig, XrayTextConfig,
                     XrayVisualConfig, XrayVisualImageProcessor, XrayVisualVideoProcessor)
from xray_hf.convert import minilm_folder
from xray_hf.curation.similarity_filter import SimilarityScorer
from xray_hf.eval.features import encode_texts
from xray_hf.caches.common import text_sha256
from xray_hf.caches.text import TextEmbeddingCache
from xray_hf.trainers.clip import CachedTexts, CLIPCollator, TokenizedTexts

LONG = "a smiling yellow face with big round eyes and rosy cheeks waving hello to a friend " * 8  # > 100 tokens
CAPTIONS = [LONG, "a red heart"]


def text_config(kind: str, vocab_size: int):
    if kind == "plain":
        return XrayTextConfig.from_preset("tiny", vocab_size=vocab_size, projection_dim=16, max_position_embeddings=24)
    bert = dict(model_type="bert", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64)
    return XrayLLM2CLIPTextConfig(llm_config=bert, projection_dim=16, max_text_length=24, adapter_depth=1)


@pytest.mark.parametrize("kind", ["plain", "llm2clip"])
def test_a_long_caption_gives_one_vector_through_every_path(kind, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    assert len(tokenizer(LONG)["input_ids"]) > 100
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"),
                            text_config=text_config(kind, len(tokenizer)), projection_dim=16)
    torch.manual_seed(0)
    model = XrayCLIPModel(config).eval()
    processor = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                            XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    with torch.no_grad():
        inputs = processor(text=CAPTIONS, return_tensors="pt")
        assert inputs["input_ids"].shape[1] == 24
        reference = model.get_text_features(**inputs).pooler_output
        paths = {"collator": model.get_text_features(**TokenizedTexts.for_config(tokenizer, config.text_config)(
            CAPTIONS)).pooler_output}
        if kind == "llm2clip":
            captions = datasets.Dataset.from_dict({"caption_id": [text_sha256(c) for c in CAPTIONS], "caption": CAPTIONS})
            cache = TextEmbeddingCache.build(model.text_model, tokenizer, captions, tmp_path / "cache")
            paths["text cache"] = model.get_text_features(**CachedTexts(cache)(CAPTIONS)).pooler_output
    paths["eval / compress"] = encode_texts(CAPTIONS, model, tokenizer)
    scorer = SimilarityScorer(tmp_path / "clip")
    paths["curation"] = scorer.encode_text(CAPTIONS)
    for name, vector in paths.items():
        torch.testing.assert_close(vector, reference, atol=1e-5, rtol=0, msg=f"{name} differs from the processor")
