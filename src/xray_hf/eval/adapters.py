"""Linear adapters (paper 6.2) from the linear probe, and applied through their model.

`fit_adapter` embeds labelled data with the frozen model, fits the probe of `linear_probe` (standardised
features, logistic regression, C chosen on validation, refit on train + validation) and returns it as an
`XrayLinearAdapter`; `adapter_from_fit` converts a `LinearProbeFit` already at hand (what `run_eval` does for
`--save-adapter`). `adapter_logits` embeds images or clips with the model, reading the feature the adapter was
fitted on, and applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..modeling.adapters import XrayLinearAdapter
from .features import embed_images
from .linear_probe import C_GRID, LinearProbeFit, extract_features, fit_linear_probe


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def adapter_from_fit(
    fit: LinearProbeFit,
    *,
    classnames: Sequence[str] | None = None,
    feature: str = "pooled",
    video_mode: str = "native",
    base_model_type: str | None = None,
    fit_info: dict[str, Any] | None = None,
) -> XrayLinearAdapter:
    """The `XrayLinearAdapter` of a fitted probe; `classnames` become `id2label` (default `LABEL_i`)."""
    if classnames is not None and len(classnames) < fit.num_classes:
        raise ValueError(f"{len(classnames)} class names for labels up to {fit.num_classes - 1}")
    id2label = None if classnames is None else dict(enumerate(map(str, classnames)))
    info = {"num_fit": fit.num_fit, "val_acc1": fit.val_acc1, **(fit_info or {})}
    return XrayLinearAdapter.from_linear_model(
        fit.probe.coef_, fit.probe.intercept_, fit.probe.classes_, fit.mean, fit.std, id2label=id2label,
        num_labels=fit.num_classes, feature=feature, video_mode=video_mode, base_model_type=base_model_type,
        regularization_C=fit.C, fit_info=info,
    )


def fit_adapter(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    *,
    classnames: Sequence[str] | None = None,
    feature: str = "pooled",
    label_column: str = "label",
    video_mode: str = "native",
    batch_size: int = 64,
    num_workers: int = 0,
    C_grid: Sequence[float] = C_GRID,
    seed: int = 0,
    fit_info: dict[str, Any] | None = None,
) -> XrayLinearAdapter:
    """Fit a linear adapter on the frozen `feature` of `model` for the labels of `train_data` (dicts with
    `pixel_values` and `label_column`, e.g. `eval.data.decoded(...)`); C is chosen on `val_data` (or a held-out
    20% of train)."""
    options = {"feature": feature, "label_column": label_column, "batch_size": batch_size,
               "num_workers": num_workers, "video_mode": video_mode}
    x_train, y_train = extract_features(model, train_data, **options)
    x_val = y_val = None
    if val_data is not None:
        x_val, y_val = extract_features(model, val_data, **options)
    fit = fit_linear_probe(x_train, y_train, x_val, y_val, C_grid=C_grid, seed=seed)
    return adapter_from_fit(fit, classnames=classnames, feature=feature, video_mode=video_mode,
                            base_model_type=_model_type(model), fit_info=fit_info)


def adapter_logits(
    model: nn.Module, adapter: XrayLinearAdapter, images: Any, *, batch_size: int = 64, num_workers: int = 0
) -> torch.Tensor:
    """Class logits (N, C) of images / clips (a pixel tensor, or a dataset of dicts with `pixel_values`): the
    model's frozen `adapter.config.feature`, then the adapter. Softmax gives probabilities, argmax classes."""
    expected = adapter.config.base_model_type
    if expected is not None and _model_type(model) not in (None, expected):
        raise ValueError(f"this adapter was fitted on a {expected!r} model, not {_model_type(model)!r}")
    features, _ = embed_images(model, images, feature=adapter.config.feature, video_mode=adapter.config.video_mode,
                               batch_size=batch_size, num_workers=num_workers)
    with torch.no_grad():
        return adapter(features, return_dict=True).logits


__all__ = ["adapter_from_fit", "adapter_logits", "fit_adapter"]
