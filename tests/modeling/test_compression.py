"""Compressed embeddings (paper 6.3-6.4): int8 and binary against sentence-transformers' `quantize_embeddings`,
Hamming search + float re-ranking, the Matryoshka similarity-distillation loss, the learned projection on real data
against a random projection, save/load through the model's config and safetensors, and the errors for bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel

from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayTextConfig, XrayVisualConfig
from xray_hf.configuration.compression import XrayCompressionConfig
from xray_hf.data.embedded import load_embedded
from xray_hf.losses import SimilarityDistillationLoss
from xray_hf.modeling.compression import (
    XrayEmbeddingCompression,
    binary_search,
    binary_search_rerank,
    dequantize_int8,
    embedding_bytes,
    hamming_distance,
    init_compression_weights,
    int8_ranges,
    quantize_binary,
    quantize_int8,
    unpack_binary,
)
from xray_hf.trainers.compression import fit_embedding_compression

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sentence_transformers.util.quantization import quantize_embeddings

VOCAB = 100
COMPRESSION = {"compressed_dim": 24, "matryoshka_dims": [12, 6]}


def tiny_clip(seed: int = 0, projection_dim: int = 32, **config) -> XrayCLIPModel:
    vision = XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64, num_register_tokens=0)
    text = XrayTextConfig.from_preset("tiny", vocab_size=VOCAB, projection_dim=projection_dim,
                                      max_position_embeddings=16, hidden_size=32, num_attention_heads=2,
                                      num_hidden_layers=1)
    settings = {"slip_weight": 0.0, "lambda_den": 0.0, "compression_config": COMPRESSION, **config}
    torch.manual_seed(seed)
    return XrayCLIPModel(XrayCLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim,
                                        **settings)).eval()


def images(name: str, split: str, count: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`count` evenly spaced real images of an embedded set as (N, 3, size, size) in [-1, 1], and labels."""
    data = load_embedded(name, split)
    data = data.select(np.linspace(0, len(data) - 1, count).round().astype(int).tolist())
    pixels = [np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1
              for image in data["image"]]
    labels = torch.tensor(data["label"]) if "label" in data.column_names else None
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(), labels


def unit(rows: int, dim: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g) * scale + 0.3, dim=-1)


# ------------------------------------------------------------------------------------- against the reference
def test_int8_equals_sentence_transformers_with_the_same_calibration():
    calibration, embeds = unit(400, 37, 0), unit(64, 37, 1, scale=1.5)  # some values fall outside the ranges
    reference = quantize_embeddings(embeds.numpy(), "int8", calibration_embeddings=calibration.numpy())
    ranges = int8_ranges(calibration)
    codes = quantize_int8(embeds, ranges)
    assert codes.dtype == torch.int8
    np.testing.assert_array_equal(codes.numpy(), reference)
    assert (codes == -128).any() and (codes == 127).any()  # clipping exercised on both sides
    # dequantised values sit at the lower edge of each bin: within one step below the value (inside the range)
    step = (ranges[1] - ranges[0]) / 255
    inside = (embeds >= ranges[0]) & (embeds <= ranges[1])
    error = embeds - dequantize_int8(codes, ranges)
    assert ((error >= -1e-6) & (error <= step + 1e-6))[inside].all()


def test_model_int8_output_equals_sentence_transformers_on_normalised_embeddings():
    model = tiny_clip()
    pixels, _ = images("openmoji", "train", 48)
    with torch.no_grad():
        full = model.get_image_features(pixels).pooler_output
        model.embedding_compression.calibrate_int8(full[:40])
        codes = model.get_image_features(pixels[40:], compression="int8").pooler_output
    normalised = F.normalize(full, dim=-1).numpy()
    reference = quantize_embeddings(normalised[40:], "int8", calibration_embeddings=normalised[:40])
    np.testing.assert_array_equal(codes.numpy(), reference)


def test_binary_equals_sentence_transformers_ubinary_and_hamming_equals_unpacked_bits():
    embeds, corpus = unit(20, 37, 2, scale=3.0), unit(30, 37, 3, scale=3.0)  # 37 bits: a partial last byte
    bits = quantize_binary(embeds)
    np.testing.assert_array_equal(bits.numpy(), quantize_embeddings(embeds.numpy(), "ubinary"))
    assert bits.shape == (20, 5) and embedding_bytes("binary", 37) == 5
    assert torch.equal(unpack_binary(bits, 37) > 0, embeds > 0)
    expected = ((embeds > 0)[:, None, :] != (corpus > 0)[None, :, :]).sum(-1)
    assert torch.equal(hamming_distance(bits, quantize_binary(corpus)).long(), expected)
    # +-1 vectors: dot = dim - 2 x Hamming
    dots = unpack_binary(bits, 37) @ unpack_binary(quantize_binary(corpus), 37).T
    assert torch.equal(dots.long(), 37 - 2 * expected)
    # the query chunk follows the corpus size (memory bound): a tiny budget, one query row per block, same result
    import xray_hf.modeling.compression as compression

    budget, compression.HAMMING_CHUNK_ELEMENTS = compression.HAMMING_CHUNK_ELEMENTS, 30 * 5
    try:
        assert torch.equal(hamming_distance(bits, quantize_binary(corpus)).long(), expected)
    finally:
        compression.HAMMING_CHUNK_ELEMENTS = budget


def test_binary_search_with_float_rerank_recovers_the_float_top1():
    """Clusters of near-duplicates: the sign bits often confuse an item with its neighbours, the Hamming top 20
    still holds the float nearest, and re-scoring those with float embeddings finds it every time."""
    g = torch.Generator().manual_seed(0)
    dim = 64
    centers = F.normalize(torch.randn(100, dim, generator=g), dim=-1)
    corpus = F.normalize((centers[:, None] + 0.1 * torch.randn(100, 10, dim, generator=g) / dim**0.5).flatten(0, 1), dim=-1)
    targets = torch.arange(0, 1000, 4)
    queries = F.normalize(corpus[targets] + 0.03 * torch.randn(len(targets), dim, generator=g) / dim**0.5, dim=-1)
    float_top1 = (queries @ corpus.T).argmax(1)
    assert torch.equal(float_top1, targets)
    bits = quantize_binary(corpus)
    distances, binary_top = binary_search(quantize_binary(queries), bits, top_k=20)
    assert (distances[:, :-1] <= distances[:, 1:]).all()
    assert (binary_top[:, 0] == float_top1).float().mean() < 0.9  # bits alone lose some
    assert (binary_top == float_top1[:, None]).any(1).all()
    scores, reranked = binary_search_rerank(queries, bits, corpus, top_k=3, rescore_multiplier=7)
    assert reranked.shape == (len(targets), 3) and (scores[:, :-1] >= scores[:, 1:]).all()
    assert torch.equal(reranked[:, 0], float_top1)
    torch.testing.assert_close(scores[:, 0], (queries * corpus[float_top1]).sum(-1))


# ------------------------------------------------------------------------------------------------------ loss
def test_matryoshka_loss_is_the_weighted_sum_over_sizes_and_vanishes_on_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)
    nested = SimilarityDistillationLoss({12: 1.0, 6: 0.5, 3: 2.0})
    parts = [SimilarityDistillationLoss({d: 1.0}) for d in (12, 6, 3)]
    expected = sum(w * loss(student[:, :d], teacher) for w, d, loss in zip((1.0, 0.5, 2.0), (12, 6, 3), parts))
    terms = nested(student, teacher, output_dict=True)
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["loss"], terms["similarity_kl_loss"] + terms["similarity_mse_loss"])
    # a student that reproduces the teacher's cosines (a rotation of it) has nothing left to learn
    rotation = torch.linalg.qr(torch.randn(20, 20, generator=g))[0]
    assert SimilarityDistillationLoss([20])(teacher @ rotation, teacher) < 1e-6
    assert SimilarityDistillationLoss([20])(torch.randn(16, 20, generator=g), teacher) > 0.1
    # from a config: compressed_dim and the nested sizes with their weights
    config = XrayCompressionConfig(compressed_dim=12, matryoshka_dims=[6, 3], matryoshka_weights=[0.5, 2.0])
    torch.testing.assert_close(SimilarityDistillationLoss.from_config(config)(student, teacher), expected)
    # the loss trains the student: gradients reach it, none reach the teacher
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    nested(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


# ------------------------------------------------------------------------------------- learning on real data
def _knn_accuracy(train: torch.Tensor, train_labels, test: torch.Tensor, test_labels, k: int = 10) -> float:
    scores = F.normalize(test, dim=-1) @ F.normalize(train, dim=-1).T
    votes = F.one_hot(train_labels[scores.topk(k, dim=1).indices], 10).sum(1)
    return (votes.argmax(1) == test_labels).float().mean().item()


def _neighbour_overlap(reference: torch.Tensor, compressed: torch.Tensor, k: int = 10) -> float:
    """Share of each row's k nearest rows (by the full embedding) that the compressed embedding also ranks top k."""
    def top(x):
        x = F.normalize(x, dim=-1)
        return (x @ x.T).fill_diagonal_(-2).topk(k, dim=1).indices

    full, small = top(reference), top(compressed)
    return (full[:, :, None] == small[:, None, :]).any(-1).float().mean().item()


def test_learned_100d_projection_keeps_knn_accuracy_where_a_random_one_loses_it():
    """Fashion-MNIST images as 784-d embeddings (centred pixels: real data, high intrinsic dimension); the
    projection (100-d, Matryoshka 32 and 16) trained 300 steps keeps the full kNN accuracy; the random orthonormal
    projection it starts from does not, most clearly at 16-d."""
    train, train_labels = images("fashion-mnist", "train", 2000, size=28)
    test, test_labels = images("fashion-mnist", "test", 600, size=28)
    train, test = train[:, 0].flatten(1), test[:, 0].flatten(1)  # grey: one channel
    mean = train.mean(0)
    train, test = train - mean, test - mean
    full = _knn_accuracy(train, train_labels, test, test_labels)
    torch.manual_seed(0)
    module = XrayEmbeddingCompression({"compressed_dim": 100, "matryoshka_dims": [32, 16]}, train.shape[1])
    init_compression_weights(module)

    def measure():
        with torch.no_grad():
            return {d: (_knn_accuracy(module.project(train, d), train_labels, module.project(test, d), test_labels),
                        _neighbour_overlap(test, module.project(test, d))) for d in (100, 32, 16)}

    random = measure()
    history = fit_embedding_compression(module, train, max_steps=300, calibrate=False)["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < 0.7 * losses[0]
    trained = measure()
    assert full > 0.7
    assert trained[100][0] >= 0.97 * full
    assert trained[16][0] >= 0.93 * full
    assert trained[16][0] > random[16][0] + 0.04
    for dim in (100, 32, 16):
        assert trained[dim][1] > random[dim][1] + 0.08, (dim, trained, random)


def test_clip_compression_trained_on_its_embeddings_of_real_images_keeps_the_neighbours():
    """Through the model: the CLIP tower embeds real Fashion-MNIST images, the compression trains on them, and the
    projected embeddings keep the full embedding's neighbours and kNN accuracy better than at initialisation."""
    model = tiny_clip(projection_dim=64, compression_config={"compressed_dim": 8})
    train, train_labels = images("fashion-mnist", "train", 1500)
    test, test_labels = images("fashion-mnist", "test", 500)
    with torch.no_grad():
        train_embeds = model.get_image_features(train).pooler_output
        test_embeds = model.get_image_features(test).pooler_output

        def measure():
            projected = model.get_image_features(test, compression="projection").pooler_output
            assert projected.shape == (500, 8)
            torch.testing.assert_close(projected.norm(dim=-1), torch.ones(500))
            train_projected = model.compress_embeddings(train_embeds, "projection")
            return (_neighbour_overlap(test_embeds, projected),
                    _knn_accuracy(train_projected, train_labels, projected, test_labels))

        before = measure()
    fit_embedding_compression(model, train_embeds, max_steps=200)
    with torch.no_grad():
        after = measure()
    full = _knn_accuracy(train_embeds, train_labels, test_embeds, test_labels)
    assert after[0] > before[0] + 0.1, (before, after)
    assert after[1] >= 0.9 * full, (after, full)
    assert bool(model.embedding_compression.int8_calibrated)  # the fit calibrated int8 on the same embeddings


# ------------------------------------------------------------------------------------------------ save, load
def test_compressed_outputs_survive_save_and_load(tmp_path):
    model = tiny_clip()
    pixels, _ = images("openmoji", "train", 12)
    tokens = torch.randint(1, VOCAB, (5, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeds = model.get_image_features(pixels).pooler_output
    fit_embedding_compression(model, embeds, max_steps=5, per_device_train_batch_size=8, logging_steps=1)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["compression_config"] == {"compressed_dim": 24, "matryoshka_dims": [12, 6], "matryoshka_weights": None}
    weights = load_file(tmp_path / "model.safetensors")
    assert weights["embedding_compression.projection.weight"].shape == (24, 32)
    assert bool(weights["embedding_compression.int8_calibrated"])
    assert torch.equal(weights["embedding_compression.int8_ranges"], model.embedding_compression.int8_ranges)

    loaded, info = XrayCLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    auto = AutoModel.from_pretrained(tmp_path)
    for other in (loaded.eval(), auto.eval()):
        with torch.no_grad():
            for compression, dim in (("projection", None), ("projection", 12), ("projection", 6), ("int8", None),
                                     ("binary", None)):
                for features in (lambda m, c=compression, d=dim: m.get_image_features(pixels, compression=c,
                                                                                      compressed_dim=d),
                                 lambda m, c=compression, d=dim: m.get_text_features(input_ids=tokens, compression=c,
                                                                                     compressed_dim=d)):
                    expected, got = features(model).pooler_output, features(other).pooler_output
                    assert got.dtype == expected.dtype and torch.equal(got, expected), (compression, dim)
    with torch.no_grad():
        video = pixels[:4].unsqueeze(1).repeat(1, 4, 1, 1, 1)
        assert model.get_video_features(video, compression="binary").pooler_output.shape == (4, 4)
    # loaded in bf16, the calibrated int8 ranges stay fp32 (bf16 would move every bucket boundary)
    half = XrayCLIPModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.embedding_compression.int8_ranges.dtype == torch.float32
    assert torch.equal(half.embedding_compression.int8_ranges, model.embedding_compression.int8_ranges)


def test_compression_added_to_a_checkpoint_without_one_starts_untrained(tmp_path):
    tiny_clip(compression_config=None).save_pretrained(tmp_path)
    model = XrayCLIPModel.from_pretrained(tmp_path, compression_config={"compressed_dim": 16})
    module = model.embedding_compression
    assert isinstance(module, XrayEmbeddingCompression) and module.config.compressed_dim == 16
    weight = module.projection.weight
    torch.testing.assert_close(weight @ weight.T, torch.eye(16), atol=1e-5, rtol=0)  # random orthonormal rows
    assert not bool(module.int8_calibrated)
    plain = XrayCLIPModel.from_pretrained(tmp_path)
    assert plain.embedding_compression is None
    added = plain.add_embedding_compression({"compressed_dim": 8})
    assert plain.config.compression_config["compressed_dim"] == 8 and plain.embedding_compression is added


# -------------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_value_errors():
    model = tiny_clip()
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        with pytest.raises(ValueError, match="compression must be one of"):
            model.get_image_features(pixels, compression="int4")
        with pytest.raises(ValueError, match="not calibrated"):
            model.get_image_features(pixels, compression="int8")
        with pytest.raises(ValueError, match="trained sizes"):
            model.get_image_features(pixels, compression="projection", compressed_dim=10)
        with pytest.raises(ValueError, match="does not apply"):
            model.get_image_features(pixels, compression="binary", compressed_dim=12)
        with pytest.raises(ValueError, match="needs compression='projection'"):
            model.get_image_features(pixels, compressed_dim=12)
        with pytest.raises(ValueError, match="expects 32"):
            model.compress_embeddings(torch.randn(3, 16), "binary")
        with pytest.raises(ValueError, match="no compression_config"):
            tiny_clip(compression_config=None).get_image_features(pixels, compression="binary")
        with pytest.raises(ValueError, match="at least 2"):
            model.embedding_compression.calibrate_int8(torch.randn(1, 32))
    with pytest.raises(ValueError, match="larger than the embedding"):
        tiny_clip(compression_config={"compressed_dim": 100})  # projection_dim 32
    with pytest.raises(ValueError, match="exceed compressed_dim"):
        XrayCompressionConfig(compressed_dim=16, matryoshka_dims=[32])
    with pytest.raises(ValueError, match="unknown compression_config keys"):
        XrayCompressionConfig.from_dict({"compressed_dim": 16, "dims": [8]})
    with pytest.raises(ValueError, match="one weight per"):
        XrayCompressionConfig(compressed_dim=16, matryoshka_dims=[8, 4], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="positive int"):
        XrayCompressionConfig(compressed_dim=0)
    config = tiny_clip().config
    config.compression_config = {"compressed_dim": 64}  # changed after construction: refused at save
    with pytest.raises(ValueError, match="larger than the embedding"):
        config.validate_xray()
    with pytest.raises(ValueError, match="at least 3"):
        SimilarityDistillationLoss([4])(torch.randn(2, 4), torch.randn(2, 8))
    with pytest.raises(ValueError, match="exceed the compressed width"):
        SimilarityDistillationLoss([8])(torch.randn(5, 4), torch.randn(5, 8))
    with pytest.raises(ValueError, match="compressed_dim.*positive"):
        XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), projection_dim=32,
                       text_config={"model_type": "xray_text", "vocab_size": VOCAB},
                       compression_config={"compressed_dim": -1})
