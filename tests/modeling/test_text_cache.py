import pytest
import torch
from datasets import Dataset

import xray_hf  # noqa: F401
from xray_hf import XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextModel
from xray_hf.convert import smollm2_tokenizer
from xray_hf.modeling.text_cache import StaleTextCacheError, TextEmbeddingCache

CAPTIONS = [
    "a photo of a cat", "a dog running on a beach at sunset", "two bowls of soup", "an old red bicycle",
    "a city skyline at night", "a bird", "children playing football in a park on a sunny afternoon",
]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def build(vocab_size: int, **overrides) -> XrayLLM2CLIPTextModel:
    torch.manual_seed(0)
    llm = dict(model_type="llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig(llm_config=llm, projection_dim=16, **overrides)).eval()


@pytest.fixture(scope="module")
def captions():
    return Dataset.from_dict({"caption_id": [f"img{i}-cap" for i in range(len(CAPTIONS))], "caption": CAPTIONS})


@pytest.fixture(scope="module")
def built(tokenizer, captions, tmp_path_factory):
    model = build(len(tokenizer))
    path = tmp_path_factory.mktemp("text_cache")
    cache = TextEmbeddingCache.build(model, tokenizer, captions, path, batch_size=3)
    return model, cache, path


def test_cached_outputs_equal_the_llm(tokenizer, built):
    model, cache, _ = built
    assert len(cache) == len(CAPTIONS) and cache.dim == 32 and "img3-cap" in cache
    ids = ["img6-cap", "img0-cap", "img3-cap"]
    looked_up = cache.lookup(ids)
    batch = tokenizer([CAPTIONS[6], CAPTIONS[0], CAPTIONS[3]], padding=True, return_tensors="pt")
    assert looked_up.dtype == torch.float32
    assert torch.allclose(looked_up, model.get_llm_pooled_output(**batch), atol=1e-5)
    # a CLIP step on cached outputs gives the same text embedding as running the LLM
    assert torch.allclose(model.get_text_features(llm_pooled_output=looked_up), model.get_text_features(**batch),
                          atol=1e-5)


def test_reopens_for_the_same_model(tokenizer, built):
    model, cache, path = built
    reopened = TextEmbeddingCache.load(path, model, tokenizer)
    assert torch.equal(reopened.lookup(["img1-cap"]), cache.lookup(["img1-cap"]))


def test_stale_cache_is_refused(tokenizer, built):
    model, _, path = built
    with pytest.raises(StaleTextCacheError, match="embedding_settings"):
        TextEmbeddingCache.load(path, build(len(tokenizer), pooling="eos"), tokenizer)
    with pytest.raises(StaleTextCacheError, match="embedding_settings"):
        TextEmbeddingCache.load(path, build(len(tokenizer), max_text_length=16), tokenizer)
    other_weights = build(len(tokenizer))
    with torch.no_grad():
        other_weights.llm.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    with pytest.raises(StaleTextCacheError, match="llm_weights"):
        TextEmbeddingCache.load(path, other_weights, tokenizer)
    other_tokenizer = smollm2_tokenizer()
    other_tokenizer.add_tokens(["<new_caption_token>"])
    with pytest.raises(StaleTextCacheError, match="tokenizer"):
        TextEmbeddingCache.load(path, model, other_tokenizer)
    # the adapter and projection train in the CLIP stage: they do not invalidate the cache
    retrained = build(len(tokenizer))
    with torch.no_grad():
        retrained.text_projection.weight.mul_(2)
    TextEmbeddingCache.load(path, retrained, tokenizer)


def test_bad_input_raises(tokenizer, built, tmp_path):
    model, cache, _ = built
    with pytest.raises(KeyError, match="not in the text cache"):
        cache.lookup(["img0-cap", "nope"])
    duplicated = Dataset.from_dict({"caption_id": ["a", "a"], "caption": ["x y", "z"]})
    with pytest.raises(ValueError, match="not unique"):
        TextEmbeddingCache.build(model, tokenizer, duplicated, tmp_path / "dup")
    with pytest.raises(ValueError, match="no column"):
        TextEmbeddingCache.build(model, tokenizer, duplicated, tmp_path / "col", text_column="text")
    with pytest.raises(FileNotFoundError):
        TextEmbeddingCache.load(tmp_path / "missing", model, tokenizer)
