"""Retention of compressed embeddings (paper 6.3-6.4: about 4-5% drop for 100-d, about 3% for int8): zero-shot
accuracy and retrieval recall of each compression, beside the full float embedding's and relative to it, with the
bytes each embedding takes. Pure functions on precomputed embeddings and an `XrayEmbeddingCompression`.

Both sides of every comparison are compressed the same way (the stored items and the queries or class
embeddings): `projection` compares unit-norm projections, `int8` the dequantised codes (cosine), `binary` the
Hamming distance of the sign bits (ties count as in `metrics`: the expected value under a random order), and
`binary` with `rescore=m` re-scores each query's `m` nearest items by Hamming with the float embeddings (the
index holds bits; the floats are read for the `m` candidates only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..modeling.compression import (
    XrayEmbeddingCompression,
    binary_search,
    embedding_bytes,
    hamming_distance,
    quantize_binary,
    rerank,
)
from .metrics import (
    TIE_TOLERANCE,
    _check_ks,
    _mean,
    _ranking_stats,
    classification_metrics,
)


@dataclass(frozen=True)
class CompressionSetting:
    """One way to store and compare embeddings: `compression` None (float32), `projection` (with `dim`), `int8`
    or `binary` (with `rescore`: Hamming candidates re-scored in float)."""

    compression: str | None = None
    dim: int | None = None
    rescore: int | None = None

    @property
    def name(self) -> str:
        if self.compression is None:
            return "float"
        if self.compression == "projection":
            return f"projection-{self.dim}"
        if self.rescore:
            return f"{self.compression}+rerank@{self.rescore}"
        return self.compression

    def bytes_per_embedding(self, embedding_dim: int) -> int:
        """Bytes of one stored embedding (for `binary` with re-scoring: the index's bits only)."""
        return embedding_bytes(self.compression, embedding_dim, self.dim)


def default_settings(module: XrayEmbeddingCompression, rescore: int | None = 10) -> list[CompressionSetting]:
    """Float, the projection at every trained size, int8 (when calibrated), binary and binary + re-scoring."""
    settings = [CompressionSetting()]
    settings += [CompressionSetting("projection", dim) for dim in module.config.dims]
    if bool(module.int8_calibrated):
        settings.append(CompressionSetting("int8"))
    settings.append(CompressionSetting("binary"))
    if rescore:
        settings.append(CompressionSetting("binary", rescore=rescore))
    return settings


def compressed_scores(
    module: XrayEmbeddingCompression, queries: torch.Tensor, corpus: torch.Tensor, setting: CompressionSetting
) -> torch.Tensor:
    """Similarity (Q, N) float64 of float `queries` to float `corpus` rows, both compressed as `setting` says."""
    queries, corpus = queries.float(), corpus.float()
    if setting.compression is None:
        return F.normalize(queries.double(), dim=-1) @ F.normalize(corpus.double(), dim=-1).T
    if setting.compression == "projection":
        return module.project(queries, setting.dim).double() @ module.project(corpus, setting.dim).double().T
    if setting.compression == "int8":
        q, c = (F.normalize(module.dequantize_int8(module.quantize_int8(x)).double(), dim=-1) for x in (queries, corpus))
        return q @ c.T
    if setting.compression != "binary":
        raise ValueError(f"unknown compression {setting.compression!r}")
    query_bits, corpus_bits = quantize_binary(queries), quantize_binary(corpus)
    if not setting.rescore:
        return -hamming_distance(query_bits, corpus_bits).double() / queries.shape[1]  # in [-1, 0]
    if not isinstance(setting.rescore, int) or setting.rescore < 1:
        raise ValueError(f"rescore must be a positive int, got {setting.rescore!r}")
    # the search the index runs: every item by Hamming distance (ties in corpus order), its first `rescore`
    # re-ranked by the float embeddings
    distances, order = binary_search(query_bits, corpus_bits, top_k=corpus.shape[0])
    scores = torch.empty(order.shape, dtype=torch.float64).scatter_(1, order, -distances.double() / queries.shape[1])
    exact, candidates = rerank(queries, corpus, order[:, : setting.rescore])
    # re-scored candidates rank above every other item, in float order; the rest stay in Hamming order
    return scores.scatter_(1, candidates, 2.0 + exact.double())


def _recalls(scores: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...], name: str) -> dict[str, float]:
    hits, _ = _ranking_stats(scores, positives, ks, TIE_TOLERANCE)
    return {f"{name}_recall@{k}": _mean(hits[k]) for k in ks}


def compressed_retrieval_metrics(
    module: XrayEmbeddingCompression,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    setting: CompressionSetting,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """`image_retrieval_recall@k` (text -> image) and `text_retrieval_recall@k` (image -> text) as
    `metrics.retrieval_metrics` defines them, on embeddings compressed as `setting` says.

    The scores are symmetric, so image -> text reads the text -> image matrix transposed; except with re-scoring,
    where each query re-scores its own Hamming candidates, so each direction is scored for its queries."""
    ks = _check_ks(ks)
    text_to_image = torch.as_tensor(text_to_image).long()
    positives = F.one_hot(text_to_image, image_embeds.shape[0]).bool()  # (texts, items)
    scores = compressed_scores(module, text_embeds, image_embeds, setting)
    rescored = setting.compression == "binary" and setting.rescore
    reverse = compressed_scores(module, image_embeds, text_embeds, setting) if rescored else scores.T
    out = _recalls(scores, positives, ks, "image_retrieval")
    out.update(_recalls(reverse, positives.T, ks, "text_retrieval"))
    return out


def compressed_zero_shot_metrics(
    module: XrayEmbeddingCompression,
    image_embeds: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    setting: CompressionSetting,
    ks: Sequence[int] = (1,),
) -> dict[str, float]:
    """Zero-shot `acc{k}` and `mean_per_class_recall` with images and class embeddings compressed alike."""
    return classification_metrics(compressed_scores(module, image_embeds, classifier, setting), labels, ks)


def compression_retention(
    module: XrayEmbeddingCompression,
    *,
    retrieval: dict[str, Any] | None = None,
    zero_shot: dict[str, Any] | None = None,
    settings: Sequence[CompressionSetting] | None = None,
    rescore: int | None = 10,
) -> dict[str, dict[str, float | None]]:
    """Metrics of every setting (default: `default_settings`) with bytes per embedding and each metric relative to
    float (`relative_<metric>`, None where float scores 0). `retrieval`: `{"image_embeds", "text_embeds", "text_to_image"}`; `zero_shot`:
    `{"image_embeds", "classifier", "labels"}`; metrics are prefixed `retrieval_` / `zeroshot_`."""
    if retrieval is None and zero_shot is None:
        raise ValueError("compression_retention needs retrieval= or zero_shot= embeddings")
    settings = list(settings) if settings is not None else default_settings(module, rescore)
    if not settings or settings[0].compression is not None:
        settings = [CompressionSetting(), *[s for s in settings if s.compression is not None]]
    report: dict[str, dict[str, float | None]] = {}
    for setting in settings:
        row: dict[str, float | None] = {"bytes_per_embedding": setting.bytes_per_embedding(module.embedding_dim)}
        if retrieval is not None:
            metrics = compressed_retrieval_metrics(module, retrieval["image_embeds"], retrieval["text_embeds"],
                                                   retrieval["text_to_image"], setting)
            row.update({f"retrieval_{k}": v for k, v in metrics.items()})
        if zero_shot is not None:
            metrics = compressed_zero_shot_metrics(module, zero_shot["image_embeds"], zero_shot["classifier"],
                                                   zero_shot["labels"], setting)
            row.update({f"zeroshot_{k}": v for k, v in metrics.items()})
        report[setting.name] = row
    reference = report["float"]
    for row in report.values():
        for key in [k for k in row if k != "bytes_per_embedding"]:
            row[f"relative_{key}"] = row[key] / reference[key] if reference[key] else None  # undefined: float is 0
    return report


__all__ = [
    "CompressionSetting",
    "compressed_retrieval_metrics",
    "compressed_scores",
    "compressed_zero_shot_metrics",
    "compression_retention",
    "default_settings",
]
