"""The faiss index kinds against exact numpy search, and the compressed kinds against the model's own codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xray_hf.modeling.compression import int8_ranges, quantize_binary, quantize_int8
from xray_hf.search.kinds import FaissIndex, KindParams


def unit(n: int, d: int, seed: int = 0, clusters: int = 25, spread: float = 0.6) -> np.ndarray:
    """Unit vectors in clusters, as embeddings are (isotropic noise has no neighbours worth the name)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((clusters, d))
    x = (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def filled(kind: str, gallery: np.ndarray, **params) -> FaissIndex:
    index = FaissIndex(kind, gallery.shape[1], KindParams(**params))
    codes = None
    if kind == "int8":
        ranges = int8_ranges(torch.from_numpy(gallery))
        index.set_int8_ranges(ranges.numpy())
        codes = quantize_int8(torch.from_numpy(gallery), ranges).numpy()
    if kind == "binary":
        codes = quantize_binary(torch.from_numpy(gallery)).numpy()
    if kind == "ivfpq":
        index.train(gallery)
    index.add(gallery, codes)
    return index


def search(index: FaissIndex, queries: np.ndarray, k: int, allowed=None):
    bits = quantize_binary(torch.from_numpy(queries)).numpy() if index.kind == "binary" else None
    return index.search(queries, k, query_bits=bits, allowed=allowed)


def test_flat_is_exact_with_cosine_scores():
    gallery, queries = unit(500, 32), unit(20, 32, seed=1)
    scores, ids = search(filled("flat", gallery), queries, 10)
    np.testing.assert_array_equal(ids, exact(queries, gallery, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, ids, 1), atol=1e-5)


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.95), ("int8", 0.95), ("binary", 0.95), ("ivfpq", 0.5)])
def test_approximate_kinds_find_the_exact_neighbours(kind, floor):
    gallery, queries = unit(2000, 64), unit(50, 64, seed=1)
    _, ids = search(filled(kind, gallery), queries, 10)
    assert recall(ids, exact(queries, gallery, 10)) >= floor


def test_int8_index_stores_the_models_codes():
    """faiss' own 8-bit encoding of the embeddings, with the model's ranges, gives the model's codes (+128): the
    index decodes what `compression="int8"` produced, not a re-quantisation with other bins."""
    gallery = unit(300, 16)
    index = filled("int8", gallery)
    ranges = int8_ranges(torch.from_numpy(gallery))
    model_codes = quantize_int8(torch.from_numpy(gallery), ranges).numpy().astype(np.int16) + 128
    faiss_codes = index.index.sa_encode(gallery).astype(np.int16)
    assert np.abs(faiss_codes - model_codes).max() <= 1  # a value on a bin edge may round either way
    assert (faiss_codes == model_codes).mean() > 0.99
    stored = index.index.reconstruct_n(0, 300)  # bin centres of the stored codes
    step = (ranges[1] - ranges[0]).numpy() / 255
    np.testing.assert_allclose(stored, ranges[0].numpy() + (model_codes + 0.5) * step, atol=1e-5)


def test_int8_reranks_its_candidates_in_float_on_a_dense_gallery():
    """Tight clusters, as a trained model's Fashion-MNIST gallery (10th-11th neighbour gap ~1e-4 in cosine, below
    one int8 step's effect): the codes alone miss neighbours; their top k x 4 re-scored in float do not."""
    gallery, queries = unit(5000, 64, clusters=10, spread=0.15), unit(50, 64, seed=1, clusters=10, spread=0.15)
    truth = exact(queries, gallery, 10)
    codes_only = filled("int8", gallery, int8_rescore_multiplier=0)
    assert codes_only.vectors is None and "rerank_vectors" not in codes_only.bytes_per_item()
    assert recall(search(codes_only, queries, 10)[1], truth) < 0.9
    index = filled("int8", gallery)  # default: int8_rescore_multiplier=4
    scores, ids = search(index, queries, 10)
    assert recall(ids, truth) >= 0.95
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, ids, 1), atol=1e-5)  # float scores
    assert index.bytes_per_item()["rerank_vectors"] >= 4 * 64


def test_int8_float_vectors_save_and_load(tmp_path):
    gallery, queries = unit(600, 16), unit(5, 16, seed=4)
    index = filled("int8", gallery)
    files = index.save(tmp_path, "index-000001")
    assert files == ["index-000001.faiss", "index-000001.vectors.faiss"]
    loaded = FaissIndex.load(tmp_path, files, "int8", 16, index.params)
    np.testing.assert_array_equal(search(loaded, queries, 5)[1], search(index, queries, 5)[1])
    # an int8 index written without float vectors (multiplier 0, or before re-ranking existed) searches its codes
    plain = filled("int8", gallery, int8_rescore_multiplier=0)
    files = plain.save(tmp_path, "index-000002")
    assert files == ["index-000002.faiss"]
    loaded = FaissIndex.load(tmp_path, files, "int8", 16, KindParams())
    assert loaded.vectors is None
    np.testing.assert_array_equal(search(loaded, queries, 5)[1], search(plain, queries, 5)[1])
    with pytest.raises(ValueError, match="int8_rescore_multiplier"):
        KindParams.from_dict({"int8_rescore_multiplier": -1})


def test_binary_reranks_hamming_candidates_with_float_scores():
    gallery, queries = unit(200, 32), unit(5, 32, seed=2)
    index = filled("binary", gallery, rescore_multiplier=100)  # every item a candidate: re-ranking is exact
    scores, ids = search(index, queries, 5)
    np.testing.assert_array_equal(ids, exact(queries, gallery, 5))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, ids, 1), atol=1e-5)
    with pytest.raises(ValueError, match="query_bits"):
        index.search(queries, 5)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "int8", "binary", "ivfpq"])
def test_allowed_ids_restrict_the_results(kind, tmp_path):
    gallery, queries = unit(400, 16), unit(3, 16, seed=3)
    index = filled(kind, gallery)
    allowed = np.arange(0, 400, 7)
    _, ids = search(index, queries, 5, allowed=allowed)
    assert set(ids[ids >= 0].ravel()) <= set(allowed)
    assert (ids >= 0).sum() == 15
    files = index.save(tmp_path, "index-000001")
    loaded = FaissIndex.load(tmp_path, files, kind, 16, index.params)
    np.testing.assert_array_equal(search(loaded, queries, 5)[1], search(index, queries, 5)[1])


def test_ivfpq_codes_are_sixteen_times_smaller_than_float():
    gallery = unit(3000, 64)
    index = filled("ivfpq", gallery)
    sizes = index.bytes_per_item()
    assert sizes["code"] * 16 == 4 * 64
    assert filled("flat", gallery).bytes_per_item()["code"] == 256


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="index kind"):
        FaissIndex("lsh", 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        FaissIndex("binary", 12)
    index = FaissIndex("int8", 16)
    with pytest.raises(ValueError, match="codes"):
        index.add(unit(4, 16))
    with pytest.raises(ValueError, match="no ranges"):
        index.add(unit(4, 16), np.zeros((4, 16), np.int8))
    with pytest.raises(ValueError, match="trained"):
        FaissIndex("ivfpq", 16).add(unit(4, 16))
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        FaissIndex("flat", 16).add(unit(4, 8))
    with pytest.raises(ValueError, match="unknown index parameters"):
        KindParams.from_dict({"efsearch": 3})


def test_compression_sanity():
    """The helpers above are the model's compression functions (a guard on this test file's assumptions)."""
    x = F.normalize(torch.randn(4, 16), dim=-1)
    assert quantize_binary(x).shape == (4, 2)
