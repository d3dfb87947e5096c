"""Evaluation metrics as pure functions on embeddings and scores, with CLIP_benchmark's names and definitions.

Classification (`classification_metrics`, `zero_shot_metrics`):
- `acc{k}`: share of samples whose true class is among the k highest scores (`nan` when k exceeds the number of
  classes, as CLIP_benchmark writes `acc5` for sets of fewer than 5 classes).
- `mean_per_class_recall`: top-1 recall averaged over the classes present in `labels` (scikit-learn's
  `balanced_accuracy_score`, which CLIP_benchmark uses).

Retrieval (`retrieval_metrics`), with several captions per item:
- `image_retrieval_recall@k` (text -> image): share of captions whose own item is among the k best images.
- `text_retrieval_recall@k` (image -> text): share of items with *at least one* of their captions among the k
  best captions (CLIP papers' definition; CLIP_benchmark's `recall > 0`).
- `*_mean_rank`, `*_median_rank` (open_clip's `get_clip_metrics`): 1-based rank of the first correct candidate;
  the median is open_clip's `floor(median(0-based ranks)) + 1` (an even count's median is rounded down).

Hashtags (`hashtag_metrics`, the hashtag stage's `compute_metrics`): `mAP` over the hashtags present and
`precision@k`.

Ties. CLIP_benchmark and open_clip break ties by `torch.topk`'s order, so a collapsed model (all embeddings
equal) scores anywhere between 0 and 1 depending on the index of the answer. Here every hit is the *expected*
value under a uniformly random order of tied candidates: a collapsed model scores chance (k / candidates),
and without ties the numbers equal CLIP_benchmark's. Scores within `tie_tolerance` of each other count as tied
(cosines of duplicated embeddings can differ in the last bit, depending on the matmul kernel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import EvalPrediction

TIE_TOLERANCE = 1e-6
_CHUNK = 1024  # query rows scored at a time: bounds memory at chunk x candidates


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks}")
    return ks


def _as_2d(name: str, x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def cosine_scores(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query to every candidate, (Q, C), in float64 (embeddings are L2-normalised)."""
    queries = F.normalize(torch.as_tensor(queries).double(), dim=-1)
    candidates = F.normalize(torch.as_tensor(candidates).double(), dim=-1)
    if queries.shape[-1] != candidates.shape[-1]:
        raise ValueError(f"embedding sizes differ: {queries.shape[-1]} and {candidates.shape[-1]}")
    return queries @ candidates.T


def _log_comb(n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(r + 1) - torch.lgamma(n - r + 1)


def _first_hit_stats(
    scores: torch.Tensor, positives: torch.Tensor, tie_tolerance: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query: negatives strictly above the best positive (g), negatives tied with it (t), positives tied (p)."""
    best = torch.where(positives, scores, torch.full_like(scores, -math.inf)).amax(dim=1, keepdim=True)
    above = scores > best + tie_tolerance
    tied = (scores - best).abs() <= tie_tolerance
    g = (above & ~positives).sum(1).double()
    t = (tied & ~positives).sum(1).double()
    p = (tied & positives).sum(1).double()
    return g, t, p


def _hit_probability(g: torch.Tensor, t: torch.Tensor, p: torch.Tensor, k: int) -> torch.Tensor:
    """P(a positive is in the top k) when the tied block (t negatives, p positives) is randomly ordered."""
    m = k - g  # places left for the tied block
    inside = (m > 0) & (m <= t)
    m_safe = torch.where(inside, m, torch.zeros_like(m))
    # P(no positive among the first m of the tied block) = C(t, m) / C(t + p, m)
    miss = torch.exp(_log_comb(t, m_safe) - _log_comb(t + p, m_safe))
    return torch.where(m <= 0, torch.zeros_like(m), torch.where(m > t, torch.ones_like(m), 1 - miss))


def _expected_rank(g: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Expected 1-based rank of the first positive: g + 1 + t / (p + 1) (negatives before it in the tied block)."""
    return g + 1 + t / (p + 1)


def _ranking_stats(
    scores: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...], tie_tolerance: float
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Per-query hit probabilities at each k and expected first-positive ranks, scored in row chunks."""
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    ranks = []
    for start in range(0, scores.shape[0], _CHUNK):
        g, t, p = _first_hit_stats(scores[start : start + _CHUNK], positives[start : start + _CHUNK], tie_tolerance)
        for k in ks:
            hits[k].append(_hit_probability(g, t, p, k))
        ranks.append(_expected_rank(g, t, p))
    return {k: torch.cat(v) for k, v in hits.items()}, torch.cat(ranks)


def _mean(values: torch.Tensor) -> float:
    """Mean as a float, rounded to 12 decimals: the tie formula's log-gamma arithmetic leaves ~1e-14 noise."""
    return round(values.mean().item(), 12)


def _check_labels(labels: torch.Tensor, num_rows: int, num_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != num_rows:
        raise ValueError(f"labels must have shape ({num_rows},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (one score column per class), got {labels.min()}..{labels.max()}"
        )
    return labels


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    prefix: str = "",
    tie_tolerance: float = TIE_TOLERANCE,
) -> dict[str, float]:
    """`{prefix}acc{k}` and `{prefix}mean_per_class_recall` of class scores (N, C) against integer labels (N,)."""
    ks = _check_ks(ks)
    logits = _as_2d("logits", logits).double()
    num_rows, num_classes = logits.shape
    labels = _check_labels(labels, num_rows, num_classes)
    positives = F.one_hot(labels, num_classes).bool()
    needed = tuple(sorted({1, *(k for k in ks if k <= num_classes)}))
    hits, _ = _ranking_stats(logits, positives, needed, tie_tolerance)
    metrics = {f"{prefix}acc{k}": _mean(hits[k]) if k <= num_classes else math.nan for k in ks}
    top1 = hits[1]
    per_class = [top1[labels == c].mean() for c in labels.unique()]
    metrics[f"{prefix}mean_per_class_recall"] = _mean(torch.stack(per_class))
    return metrics


def zero_shot_metrics(
    logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5),
    *,
    image_embeds: torch.Tensor | None = None,
    classifier: torch.Tensor | None = None,
    tie_tolerance: float = TIE_TOLERANCE,
) -> dict[str, float]:
    """Zero-shot `acc{k}` and `mean_per_class_recall` from `logits` (N, C), or from `image_embeds` (N, D) and a
    `classifier` (C, D) of class embeddings (cosine scores; see `zero_shot.build_zero_shot_classifier`)."""
    if labels is None:
        raise ValueError("zero_shot_metrics needs labels")
    if (logits is None) == (image_embeds is None or classifier is None):
        raise ValueError("pass either logits, or both image_embeds and classifier")
    if logits is None:
        logits = cosine_scores(_as_2d("image_embeds", image_embeds), _as_2d("classifier", classifier))
    return classification_metrics(logits, labels, ks, tie_tolerance=tie_tolerance)


def _check_retrieval_inputs(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image_embeds = _as_2d("image_embeds", image_embeds)
    text_embeds = _as_2d("text_embeds", text_embeds)
    text_to_image = torch.as_tensor(text_to_image)
    if text_to_image.ndim != 1 or text_to_image.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"text_to_image must give one item index per caption: shape ({text_embeds.shape[0]},), "
            f"got {tuple(text_to_image.shape)}"
        )
    if text_to_image.dtype.is_floating_point or text_to_image.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer item indices, got dtype {text_to_image.dtype}")
    text_to_image = text_to_image.long()
    num_items = image_embeds.shape[0]
    if text_to_image.min() < 0 or text_to_image.max() >= num_items:
        low, high = text_to_image.min().item(), text_to_image.max().item()
        raise ValueError(f"text_to_image must lie in [0, {num_items}), got {low}..{high}")
    without = num_items - text_to_image.unique().numel()
    if without:
        raise ValueError(f"{without} of {num_items} items have no caption; drop them before scoring retrieval")
    return image_embeds, text_embeds, text_to_image


def retrieval_metrics(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    ranks: bool = True,
    tie_tolerance: float = TIE_TOLERANCE,
) -> dict[str, float]:
    """Recall@k in both directions for items (N, D) and their captions (M, D), caption j belonging to item
    `text_to_image[j]` (every item needs at least one caption).

    Returns `image_retrieval_recall@k` (text -> image), `text_retrieval_recall@k` (image -> text; a hit if any
    of the item's captions is in the top k) and, with `ranks`, `{image,text}_retrieval_{mean,median}_rank`.
    """
    ks = _check_ks(ks)
    image_embeds, text_embeds, text_to_image = _check_retrieval_inputs(image_embeds, text_embeds, text_to_image)
    scores = cosine_scores(text_embeds, image_embeds)  # (M texts, N items)
    positives = F.one_hot(text_to_image, image_embeds.shape[0]).bool()
    metrics: dict[str, float] = {}
    directions = (("image_retrieval", scores, positives), ("text_retrieval", scores.T, positives.T))
    for name, direction_scores, direction_positives in directions:
        hits, first_ranks = _ranking_stats(direction_scores, direction_positives, ks, tie_tolerance)
        for k in ks:
            metrics[f"{name}_recall@{k}"] = _mean(hits[k])
        if ranks:
            metrics[f"{name}_mean_rank"] = _mean(first_ranks)
            # open_clip: floor(median of the 0-based ranks) + 1, i.e. the median 1-based rank rounded down
            metrics[f"{name}_median_rank"] = float(math.floor(round(first_ranks.quantile(0.5).item(), 12)))
    return {key: metrics[key] for key in sorted(metrics, key=_metric_order)}


def _metric_order(key: str) -> tuple:
    direction = 0 if key.startswith("image_") else 1
    if "@" in key:
        return (0, direction, int(key.rsplit("@", 1)[1]))
    return (1, direction, key)


def recall_curve(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    max_k: int = 50,
    tie_tolerance: float = TIE_TOLERANCE,
) -> dict[str, Any]:
    """Recall@k for k = 1..max_k in both directions (for the recall@k plot): `{"ks", "image_retrieval",
    "text_retrieval", "num_items"}`."""
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    ks = tuple(range(1, max_k + 1))
    metrics = retrieval_metrics(image_embeds, text_embeds, text_to_image, ks, ranks=False, tie_tolerance=tie_tolerance)
    curve: dict[str, Any] = {"ks": list(ks), "num_items": int(torch.as_tensor(image_embeds).shape[0])}
    for name in ("image_retrieval", "text_retrieval"):
        curve[name] = [metrics[f"{name}_recall@{k}"] for k in ks]
    return curve


def top_k_indices(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of each query's k most similar candidates by cosine, best first (for retrieval grids)."""
    scores = cosine_scores(queries, candidates)
    return scores.topk(min(k, scores.shape[1]), dim=1).indices



def hashtag_metrics(eval_pred: EvalPrediction, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Hashtag retrieval metrics of an evaluation run.

    `mAP`: mean over hashtags with at least one positive of the average precision (ranking the samples by the
    hashtag's score). `precision@k`: fraction of each sample's top-k hashtags that are correct, averaged over
    samples with at least one label. A vocabulary of `V < k` hashtags has no k-th hashtag: its top-k list is the
    whole vocabulary, so `precision@k` is then the fraction of those `V` that are correct (equal to
    `precision@V`). Names always keep the requested k, so `metric_for_best_model` holds for any vocabulary.
    """
    from sklearn.metrics import average_precision_score

    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty tuple of positive integers, got {ks!r}")
    scores = np.asarray(eval_pred.predictions, dtype=np.float64)
    labels = np.asarray(eval_pred.label_ids) > 0.5
    present = labels.any(axis=0)
    if not present.any():
        raise ValueError("no hashtag of the vocabulary occurs in the evaluation labels")
    ap = average_precision_score(labels[:, present], scores[:, present], average=None)
    metrics = {"mAP": float(np.mean(ap))}
    labelled = labels.any(axis=1)
    order = np.argsort(-scores[labelled], axis=1)
    for k in ks:
        top = min(int(k), scores.shape[1])
        hits = np.take_along_axis(labels[labelled], order[:, :top], axis=1)
        metrics[f"precision@{int(k)}"] = float(hits.mean())
    return metrics


__all__ = [
    "TIE_TOLERANCE",
    "classification_metrics",
    "cosine_scores",
    "hashtag_metrics",
    "recall_curve",
    "retrieval_metrics",
    "top_k_indices",
    "zero_shot_metrics",
]
