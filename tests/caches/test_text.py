import json
import shutil

import pytest
import torch
from datasets import Dataset, load_from_disk

import xray_hf  # noqa: F401
from xray_hf import XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextModel
from xray_hf.convert import smollm2_tokenizer
from xray_hf.caches import text as text_cache
from xray_hf.caches.text import StaleTextCacheError, TextEmbeddingCache

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
    assert torch.allclose(model.get_text_features(llm_pooled_output=looked_up).pooler_output, model.get_text_features(**batch).pooler_output,
                          atol=1e-5)


def test_reopens_for_the_same_model(tokenizer, built):
    model, cache, path = built
    reopened = TextEmbeddingCache.load(path, model, tokenizer)
    assert torch.equal(reopened.lookup(["img1-cap"]), cache.lookup(["img1-cap"]))


def test_stale_cache_is_refused(tokenizer, built, captions):
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
    # same model and tokenizer, but the captions' texts changed: the cached embeddings are of the old texts
    prefixed = captions.map(lambda r: {"caption": "a photo of " + r["caption"]})
    with pytest.raises(StaleTextCacheError, match="7 of 7 caption texts changed"):
        TextEmbeddingCache.load(path, model, tokenizer, captions=prefixed)


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


def pooled(model: XrayLLM2CLIPTextModel, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model.get_llm_pooled_output(**tokenizer(texts, padding=True, return_tensors="pt"))


@pytest.fixture
def disk_captions(tmp_path):
    """A disk-backed caption dataset: its `map` results are written to (and reused from) the `datasets` cache."""
    titles = [f"title number {i}" for i in range(len(CAPTIONS))]
    ids = [f"img{i}-cap" for i in range(len(CAPTIONS))]
    Dataset.from_dict({"caption_id": ids, "caption": CAPTIONS, "title": titles}).save_to_disk(tmp_path / "captions")
    return load_from_disk(str(tmp_path / "captions"))


def test_rebuild_embeds_the_current_texts(tokenizer, disk_captions, tmp_path):
    model = build(len(tokenizer))
    ids = list(disk_captions["caption_id"])
    TextEmbeddingCache.build(model, tokenizer, disk_captions, tmp_path / "before", batch_size=3)
    prefixed = disk_captions.map(lambda r: {"caption": "a photo of " + r["caption"]})
    assert prefixed.cache_files, "the test needs a disk-backed dataset (the datasets cache is where staleness bites)"
    cache = TextEmbeddingCache.build(model, tokenizer, prefixed, tmp_path / "after", batch_size=3)
    assert torch.allclose(cache.lookup(ids), pooled(model, tokenizer, list(prefixed["caption"])), atol=1e-5)
    TextEmbeddingCache.load(tmp_path / "after", model, tokenizer, captions=prefixed)
    with pytest.raises(StaleTextCacheError, match="7 of 7 caption texts changed"):
        TextEmbeddingCache.load(tmp_path / "before", model, tokenizer, captions=prefixed)
    # the same ids, another text column
    titles = TextEmbeddingCache.build(model, tokenizer, disk_captions, tmp_path / "titles", text_column="title")
    assert torch.allclose(titles.lookup(ids), pooled(model, tokenizer, list(disk_captions["title"])), atol=1e-5)
    TextEmbeddingCache.load(tmp_path / "titles", model, tokenizer, captions=disk_captions)  # checks "title"
    with pytest.raises(StaleTextCacheError, match="7 of 7 caption texts changed"):
        TextEmbeddingCache.load(tmp_path / "titles", model, tokenizer, captions=disk_captions, text_column="caption")


def test_build_checks_every_row_it_gets_back(tokenizer, disk_captions, tmp_path, monkeypatch):
    """Even if the map key collided, rows embedded from other texts would be refused, not returned."""
    model = build(len(tokenizer))
    monkeypatch.setattr(text_cache, "_captions_digest", lambda hashes: "same for every caption set")
    TextEmbeddingCache.build(model, tokenizer, disk_captions, tmp_path / "before", batch_size=3)
    prefixed = disk_captions.map(lambda r: {"caption": "a photo of " + r["caption"]})
    with pytest.raises(StaleTextCacheError, match="7 of 7 caption texts changed"):
        TextEmbeddingCache.build(model, tokenizer, prefixed, tmp_path / "after", batch_size=3)
    assert not (tmp_path / "after" / "xray_text_cache.json").exists()


def test_rebuild_with_the_same_texts_reuses_the_datasets_cache(tokenizer, disk_captions, tmp_path, monkeypatch):
    model = build(len(tokenizer))
    first = TextEmbeddingCache.build(model, tokenizer, disk_captions, tmp_path / "a", batch_size=3)
    calls = []
    original = model.get_llm_pooled_output
    monkeypatch.setattr(model, "get_llm_pooled_output", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = TextEmbeddingCache.build(model, tokenizer, disk_captions, tmp_path / "b", batch_size=3)
    assert not calls, "an unchanged rebuild should come from the datasets cache without running the LLM"
    assert torch.equal(again.lookup(list(disk_captions["caption_id"])), first.lookup(list(disk_captions["caption_id"])))


def test_load_checks_the_captions_texts(tokenizer, built, captions):
    model, _, path = built
    cache = TextEmbeddingCache.load(path, model, tokenizer, captions=captions)
    # a subset or a reordering of the cached captions is fine: the cache is keyed by id and checked per text
    cache.check_captions(captions.select([5, 2]))
    cache.check_captions(captions.shuffle(seed=0))
    # the same texts under another column name are fine too
    cache.check_captions(captions.rename_column("caption", "text"), text_column="text")
    edited = captions.map(lambda r, i: {"caption": r["caption"] + ("!" if i in (1, 4) else "")}, with_indices=True)
    with pytest.raises(StaleTextCacheError, match=r"2 of 7 caption texts changed .*'img1-cap', 'img4-cap'"):
        TextEmbeddingCache.load(path, model, tokenizer, captions=edited)
    grown = Dataset.from_dict({"caption_id": list(captions["caption_id"]) + ["new-cap"], "caption": CAPTIONS + ["new"]})
    with pytest.raises(StaleTextCacheError, match=r"1 of 8 caption ids are not in the cache .*'new-cap'"):
        cache.check_captions(grown)
    with pytest.raises(ValueError, match="no column 'text'"):
        cache.check_captions(captions, text_column="text")


def test_old_format_cache_is_refused(tokenizer, built, tmp_path):
    model, _, path = built
    old = tmp_path / "old"
    shutil.copytree(path, old)
    metadata = json.loads((old / "xray_text_cache.json").read_text())
    metadata["format"] = 1
    (old / "xray_text_cache.json").write_text(json.dumps(metadata))
    with pytest.raises(StaleTextCacheError, match="format 1"):
        TextEmbeddingCache.load(old, model, tokenizer)
