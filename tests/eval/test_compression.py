"""Retention of compressed embeddings (`xray_hf.eval.compression`): float scores equal the plain metrics, binary
re-scoring of every candidate equals float, bytes per embedding, relative metrics."""

import pytest
import torch
import torch.nn.functional as F

from xray_hf.eval import compression
from xray_hf.eval.compression import (
    CompressionSetting,
    _recalls,
    compressed_retrieval_metrics,
    compressed_scores,
    compression_retention,
    default_settings,
)
from xray_hf.eval.metrics import cosine_scores, retrieval_metrics, zero_shot_metrics
from xray_hf.modeling.compression import (
    XrayEmbeddingCompression,
    hamming_distance,
    init_compression_weights,
    quantize_binary,
)


def setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    module = XrayEmbeddingCompression({"compressed_dim": 12, "matryoshka_dims": [4]}, 24)
    torch.manual_seed(seed)
    init_compression_weights(module)
    images = torch.randn(30, 24, generator=g)
    texts = images[torch.arange(60) % 30] + 0.8 * torch.randn(60, 24, generator=g)  # two captions per item
    module.calibrate_int8(torch.cat([images, texts]))
    return module, images, texts, torch.arange(60) % 30


def test_float_and_projection_scores_equal_the_plain_metrics():
    module, images, texts, owners = setup()
    float_setting = CompressionSetting()
    torch.testing.assert_close(compressed_scores(module, texts, images, float_setting), cosine_scores(texts, images))
    expected = retrieval_metrics(images, texts, owners, ranks=False)
    assert compressed_retrieval_metrics(module, images, texts, owners, float_setting) == expected
    with torch.no_grad():
        projected = retrieval_metrics(module.project(images, 4), module.project(texts, 4), owners, ranks=False)
        assert compressed_retrieval_metrics(module, images, texts, owners, CompressionSetting("projection", 4)) == projected


def test_binary_scores_follow_hamming_and_rescoring_everything_equals_float():
    module, images, texts, owners = setup(1)
    scores = compressed_scores(module, texts, images, CompressionSetting("binary"))
    distances = hamming_distance(quantize_binary(texts), quantize_binary(images))
    torch.testing.assert_close(scores, -distances.double() / 24)
    everything = CompressionSetting("binary", rescore=len(images))
    assert (compressed_retrieval_metrics(module, images, texts, owners, everything)
            == retrieval_metrics(images, texts, owners, ranks=False))
    # re-scoring 3 candidates: the top 3 by Hamming come first, in float order
    top3 = compressed_scores(module, texts, images, CompressionSetting("binary", rescore=3))
    order = top3.argsort(dim=1, descending=True)[:, :3]
    exact = cosine_scores(texts, images)
    assert (exact.gather(1, order)[:, :-1] >= exact.gather(1, order)[:, 1:]).all()
    assert (distances.gather(1, order).max(1).values <= distances.sort(1).values[:, 3]).all()


SETTINGS = [CompressionSetting(), CompressionSetting("projection", 4), CompressionSetting("int8"),
            CompressionSetting("binary"), CompressionSetting("binary", rescore=3)]


@pytest.mark.parametrize("setting", SETTINGS, ids=[setting.name for setting in SETTINGS])
def test_image_to_text_transposes_the_text_to_image_scores(setting, monkeypatch):
    """One scoring pass serves both directions, with the numbers of scoring image -> text on its own (as before);
    re-scoring stays per direction (each query re-scores its own Hamming candidates)."""
    module, images, texts, owners = setup(3)
    separately = _recalls(compressed_scores(module, images, texts, setting), F.one_hot(owners, 30).bool().T,
                          (1, 5, 10), "text_retrieval")
    calls = []

    def counted(*args):
        calls.append(args[1].shape[0])
        return compressed_scores(*args)

    monkeypatch.setattr(compression, "compressed_scores", counted)
    metrics = compressed_retrieval_metrics(module, images, texts, owners, setting)
    assert {key: value for key, value in metrics.items() if key.startswith("text_")} == separately
    assert calls == ([60, 30] if setting.rescore else [60])


def hamming_then_float(queries, corpus, rescore):
    """Binary re-scoring written out (as it was before it called `binary_search` and `rerank`), in float64."""
    distances = hamming_distance(quantize_binary(queries), quantize_binary(corpus)).double()
    key = distances * len(corpus) + torch.arange(len(corpus), dtype=torch.float64)  # ties: corpus order
    candidates = key.topk(min(rescore, len(corpus)), dim=1, largest=False).indices
    exact = cosine_scores(queries, corpus).gather(1, candidates)
    return (-distances / queries.shape[1]).scatter(1, candidates, 2.0 + exact)


@pytest.mark.parametrize("rescore", [1, 3, 7, 30])
def test_rescoring_is_binary_search_then_rerank(rescore, monkeypatch):
    module, images, texts, owners = setup(4)
    setting = CompressionSetting("binary", rescore=rescore)
    calls = []
    for name in ("binary_search", "rerank"):
        function = getattr(compression, name)
        monkeypatch.setattr(compression, name, lambda *a, f=function, n=name, **k: calls.append(n) or f(*a, **k))
    for queries, corpus in ((texts, images), (images, texts)):
        scores = compressed_scores(module, queries, corpus, setting)
        expected = hamming_then_float(queries, corpus, rescore)
        torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)  # rerank's cosines are float32
        assert torch.equal(scores.argsort(dim=1, descending=True, stable=True),
                           expected.argsort(dim=1, descending=True, stable=True))
    assert calls == ["binary_search", "rerank"] * 2
    positives = F.one_hot(owners, 30).bool()
    assert compressed_retrieval_metrics(module, images, texts, owners, setting) == {
        **_recalls(hamming_then_float(texts, images, rescore), positives, (1, 5, 10), "image_retrieval"),
        **_recalls(hamming_then_float(images, texts, rescore), positives.T, (1, 5, 10), "text_retrieval"),
    }


def test_retention_report_has_bytes_and_relative_metrics():
    module, images, texts, owners = setup(2)
    classifier = F.normalize(images[:5], dim=-1)
    labels = torch.arange(30) % 5
    report = compression_retention(
        module, retrieval={"image_embeds": images, "text_embeds": texts, "text_to_image": owners},
        zero_shot={"image_embeds": images, "classifier": classifier, "labels": labels}, rescore=5,
    )
    assert list(report) == ["float", "projection-12", "projection-4", "int8", "binary", "binary+rerank@5"]
    assert [row["bytes_per_embedding"] for row in report.values()] == [96, 48, 16, 24, 3, 3]
    assert report["float"]["zeroshot_acc1"] == zero_shot_metrics(labels=labels, image_embeds=images,
                                                                  classifier=classifier)["acc1"]
    for row in report.values():
        assert row["relative_retrieval_image_retrieval_recall@1"] == pytest.approx(
            row["retrieval_image_retrieval_recall@1"] / report["float"]["retrieval_image_retrieval_recall@1"])
    assert report["float"]["relative_zeroshot_acc1"] == 1.0
    uncalibrated = XrayEmbeddingCompression({"compressed_dim": 4}, 24)
    assert [s.name for s in default_settings(uncalibrated, rescore=None)] == ["float", "projection-4", "binary"]
    with pytest.raises(ValueError, match="needs retrieval= or zero_shot="):
        compression_retention(module)
