"""Linear probe and kNN on frozen image/video features.

Feature (`feature=`, default `"pooled"`): the vision backbone's pooled output, before the CLIP projection, as
in CLIP's own linear probes (Radford et al. 2021, A.3). It exists for every checkpoint of the recipe (MAE,
hashtag, CLIP, a backbone saved alone), so the paper's stage-by-stage comparison (Table 6) probes the same
feature; `"embedding"` probes the projected CLIP embedding instead (CLIP_benchmark's choice).

Linear probe: features standardised with the training mean and standard deviation (so one C grid fits
backbones of very different feature scales), then scikit-learn `LogisticRegression(solver="lbfgs")`
(multinomial, L2 penalty, `max_iter=1000`). `C` is chosen on a validation split from `C_GRID` (ties go to the
smaller C, i.e. stronger regularisation), then the probe is refit on train + validation with that C and
scored on the test split (CLIP_benchmark refits the same way). Without a validation split, a stratified 20%
of the training features is held out for the choice. `fit_linear_probe` returns that final probe with its
standardisation (`LinearProbeFit`): what `eval.adapters` saves as a linear adapter (paper 6.2).

kNN: cosine similarity to the training features, the k=20 nearest vote with weight exp(similarity / 0.07)
(DINO's weighted kNN, Caron et al. 2021).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import embed_images
from .metrics import classification_metrics

logger = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_ITER = 1000
KNN_K = 20
KNN_TEMPERATURE = 0.07


def extract_features(
    model: nn.Module,
    dataset: Any,
    *,
    feature: str = "pooled",
    label_column: str = "label",
    batch_size: int = 64,
    num_workers: int = 0,
    video_mode: str = "native",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features (N, D) and integer labels (N,) of a dataset of dicts with `pixel_values` and labels."""
    features, gathered = embed_images(
        model, dataset, columns=(label_column,), feature=feature, batch_size=batch_size,
        num_workers=num_workers, video_mode=video_mode,
    )
    return features, torch.as_tensor(gathered[label_column]).long()


def _as_arrays(name: str, features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(torch.as_tensor(features).double().cpu().numpy())
    y = np.asarray(torch.as_tensor(labels).cpu().numpy())
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} features must be a non-empty 2-D array, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{name} labels must have shape ({x.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"{name} labels must be non-negative integer class indices")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} features contain NaN or infinite values")
    return x, y.astype(np.int64)


def _moments(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std[std < 1e-12] = 1.0  # constant features stay 0 rather than dividing by zero
    return mean, std


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = _moments(train)
    return [(x - mean) / std for x in (train, *others)]


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    probe = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)
    # scikit-learn's BLAS / OpenMP follow torch's thread count: on a loaded 2-core machine two threads made a
    # 2,000 x 32 fit about 25x slower than one (OpenMP barriers), and a test sets torch to one thread
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(torch.get_num_threads()):
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning("linear probe: lbfgs did not converge in %d iterations at C=%g", max_iter, C)
    return probe


def _class_scores(probe, x: np.ndarray, num_classes: int) -> torch.Tensor:
    """Decision scores (N, num_classes); a class absent from the training labels scores below every other."""
    decision = probe.decision_function(x)
    if decision.ndim == 1:  # two classes: one score for classes_[1], relative to classes_[0]
        decision = np.stack([np.zeros_like(decision), decision], axis=1)
    scores = np.full((x.shape[0], num_classes), decision.min() - 1e6)
    scores[:, probe.classes_] = decision
    return torch.from_numpy(scores)


def _holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)


@dataclass
class LinearProbeFit:
    """The final probe (fitted on train + validation with the chosen C) and its standardisation: scores are
    `probe.decision_function((x - mean) / std)`. `num_classes` counts the classes seen in train and validation."""

    probe: Any
    mean: np.ndarray
    std: np.ndarray
    C: float
    val_acc1: float
    num_classes: int
    num_fit: int


def fit_linear_probe(
    train_features: Any,
    train_labels: Any,
    val_features: Any = None,
    val_labels: Any = None,
    *,
    C_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> LinearProbeFit:
    """Choose C on validation data (or a held-out `val_fraction` of train), then refit on train + validation
    with it (see the module docstring)."""
    x_train, y_train = _as_arrays("train", train_features, train_labels)
    if not C_grid or min(C_grid) <= 0:
        raise ValueError(f"C_grid must hold positive values, got {tuple(C_grid)}")
    if len(np.unique(y_train)) < 2:
        raise ValueError("the linear probe needs at least two classes in the training labels")
    if (val_features is None) != (val_labels is None):
        raise ValueError("pass both val_features and val_labels, or neither")
    if val_features is None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        fit_idx, val_idx = _holdout(y_train, val_fraction, seed)
        x_fit, y_fit, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]
    else:
        x_fit, y_fit = x_train, y_train
        x_val, y_val = _as_arrays("validation", val_features, val_labels)
        if x_val.shape[1] != x_train.shape[1]:
            raise ValueError(f"train features have {x_train.shape[1]} dimensions, validation features {x_val.shape[1]}")

    x_fit_s, x_val_s = _standardise(x_fit, x_val)
    best_C, best_acc = None, -1.0
    for C in sorted(C_grid):  # ascending: on equal accuracy the smaller C (stronger regularisation) stays
        probe = _fit(x_fit_s, y_fit, C, max_iter, seed)
        acc = float((probe.predict(x_val_s) == y_val).mean())
        if acc > best_acc:
            best_C, best_acc = C, acc

    x_all = np.concatenate([x_fit, x_val])
    y_all = np.concatenate([y_fit, y_val])
    mean, std = _moments(x_all)
    probe = _fit((x_all - mean) / std, y_all, best_C, max_iter, seed)
    return LinearProbeFit(probe, mean, std, float(best_C), best_acc, int(y_all.max()) + 1, len(y_all))


def linear_probe_eval(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    val_features: Any = None,
    val_labels: Any = None,
    *,
    C_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
    val_fraction: float = 0.2,
    seed: int = 0,
    ks: Sequence[int] = (1, 5),
    return_fit: bool = False,
) -> dict[str, float] | tuple[dict[str, float], LinearProbeFit]:
    """Logistic-regression probe (see the module docstring): `lp_acc{k}`, `lp_mean_per_class_recall`, and the
    chosen `lp_C` with its validation top-1 `lp_val_acc1`; with `return_fit`, also the `LinearProbeFit` (what
    a linear adapter is made of)."""
    x_train, _ = _as_arrays("train", train_features, train_labels)
    x_test, y_test = _as_arrays("test", test_features, test_labels)
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"train features have {x_train.shape[1]} dimensions, test features {x_test.shape[1]}")
    fit = fit_linear_probe(train_features, train_labels, val_features, val_labels, C_grid=C_grid,
                           max_iter=max_iter, val_fraction=val_fraction, seed=seed)
    num_classes = max(fit.num_classes, int(y_test.max()) + 1)
    scores = _class_scores(fit.probe, (x_test - fit.mean) / fit.std, num_classes)
    metrics = classification_metrics(scores, torch.from_numpy(y_test), ks, "lp_")
    metrics.update({"lp_C": fit.C, "lp_val_acc1": fit.val_acc1})
    return (metrics, fit) if return_fit else metrics


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class votes (N_test, num_classes): the k nearest training features by cosine, each voting for its label
    with weight exp(similarity / temperature)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train = F.normalize(torch.as_tensor(train_features).double(), dim=-1)
    test = F.normalize(torch.as_tensor(test_features).double(), dim=-1)
    labels = torch.as_tensor(train_labels).long()
    k = min(k, train.shape[0])
    votes = []
    for start in range(0, test.shape[0], chunk):
        similarity, index = (test[start : start + chunk] @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        tally = torch.zeros(index.shape[0], num_classes, dtype=torch.float64)
        votes.append(tally.scatter_add_(1, labels[index], weights))
    return torch.cat(votes)


def knn_eval(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Weighted cosine kNN (see the module docstring): `knn_acc{k}` and `knn_mean_per_class_recall`."""
    x_train, y_train = _as_arrays("train", train_features, train_labels)
    x_test, y_test = _as_arrays("test", test_features, test_labels)
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"train features have {x_train.shape[1]} dimensions, test features {x_test.shape[1]}")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    votes = knn_scores(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test),
                       num_classes, k, temperature)
    return classification_metrics(votes, torch.from_numpy(y_test), ks, "knn_")


__all__ = [
    "C_GRID",
    "KNN_K",
    "KNN_TEMPERATURE",
    "MAX_ITER",
    "LinearProbeFit",
    "extract_features",
    "fit_linear_probe",
    "knn_eval",
    "knn_scores",
    "linear_probe_eval",
]
