"""Linear adapters (paper section 6.2): a linear classifier on a model's frozen embeddings, for a downstream
label, saved beside the model and loaded with it.

`XrayLinearAdapter` maps embeddings (B, D) to class logits (B, C): `((x - mean) / std) @ W.T + b`, the
standardisation and the weights of a multinomial logistic regression (the linear probe of
`xray_hf.eval.linear_probe`, which fits it: `xray_hf.eval.adapters.fit_adapter`, or
`xray-hf eval --task linear-probe --save-adapter NAME`). Its softmax is scikit-learn's `predict_proba`, its
argmax `predict`. The config records which embedding it reads (`feature`: projected CLIP embedding or pooled
backbone output), the class names (`id2label`) and the base model's `model_type`.

On disk an adapter is a normal transformers checkpoint (config.json + model.safetensors) in
`<model_dir>/adapters/<name>/`: `save_adapter(adapter, model_dir, name)`, `load_adapter(model_dir, name)`
(= `XrayLinearAdapter.from_pretrained(model_dir, subfolder="adapters/<name>")`), `list_adapters(model_dir)`.
Applying one on images or videos through its model: `xray_hf.eval.adapters.adapter_logits`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..configuration.adapters import XrayLinearAdapterConfig
from ..hub_mixin import XrayHubMixin

ADAPTERS_DIR = "adapters"
# logit bias of a class that never occurred in the fit: below any fitted class, finite so softmax stays exact
ABSENT_CLASS_BIAS = -1e4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class XrayLinearAdapterOutput(ModelOutput):
    """Class logits (B, C) of a batch of embeddings, and the cross-entropy `loss` when labels were given."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class XrayLinearAdapter(XrayHubMixin, PreTrainedModel):
    """A standardise-then-linear classifier on frozen embeddings; see the module docstring."""

    config: XrayLinearAdapterConfig
    config_class = XrayLinearAdapterConfig
    base_model_prefix = "adapter"
    main_input_name = "embeddings"
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: XrayLinearAdapterConfig) -> None:
        super().__init__(config)
        self.register_buffer("feature_mean", torch.zeros(config.embedding_dim))
        self.register_buffer("feature_std", torch.ones(config.embedding_dim))
        self.classifier = nn.Linear(config.embedding_dim, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Adapters are fitted (`from_linear_model`), not trained from random: start at zero logits."""
        if isinstance(module, nn.Linear):
            module.weight.zero_()
            module.bias.zero_()

    def check_embeddings(self, embeddings: Any) -> torch.Tensor:
        """`embeddings` as a float tensor (B, D), or a `ValueError` naming the problem."""
        embeddings = torch.as_tensor(embeddings)
        if embeddings.ndim != 2 or not embeddings.is_floating_point():
            raise ValueError(
                f"embeddings must be a 2-D float tensor (batch, {self.config.embedding_dim}), got "
                f"{embeddings.dtype} {tuple(embeddings.shape)}"
            )
        if embeddings.shape[1] != self.config.embedding_dim:
            raise ValueError(
                f"this adapter reads {self.config.embedding_dim}-d {self.config.feature!r} features, got "
                f"{embeddings.shape[1]}-d ones: was it fitted on another model or feature?"
            )
        return embeddings

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None
    ) -> XrayLinearAdapterOutput | tuple:
        r"""
        embeddings (`torch.FloatTensor` of shape `(batch, embedding_dim)`):
            Frozen embeddings of the base model (the `config.feature` one).
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Class indices; gives the cross-entropy `loss`.
        """
        embeddings = self.check_embeddings(embeddings).to(self.feature_mean.device)
        standardised = (embeddings.float() - self.feature_mean.float()) / self.feature_std.float()
        logits = F.linear(standardised, self.classifier.weight.float(), self.classifier.bias.float())
        loss = None if labels is None else F.cross_entropy(logits, torch.as_tensor(labels, device=logits.device))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = XrayLinearAdapterOutput(loss=loss, logits=logits)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C): scikit-learn's `predict_proba` of the fitted logistic regression."""
        return self(embeddings, return_dict=True).logits.softmax(dim=-1)

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class indices (B,): scikit-learn's `predict`."""
        return self(embeddings, return_dict=True).logits.argmax(dim=-1)

    def predict_labels(self, embeddings: torch.Tensor) -> list[str]:
        """Class names (`id2label`) of the predictions."""
        return [self.config.id2label[int(index)] for index in self.predict(embeddings)]

    @classmethod
    def from_linear_model(
        cls,
        coef: Any,
        intercept: Any,
        classes: Any,
        mean: Any,
        std: Any,
        *,
        id2label: dict[int, str] | None = None,
        num_labels: int | None = None,
        **config_kwargs: Any,
    ) -> XrayLinearAdapter:
        """An adapter from a fitted linear model on standardised features: scikit-learn's `coef_` (C', D) or
        (1, D) for two classes, `intercept_`, `classes_` (the label ids it saw) and the standardisation `mean`,
        `std` (D,). Classes never seen in the fit (in `id2label` but not `classes`) get logits far below the
        rest. `config_kwargs` go to `XrayLinearAdapterConfig` (`feature`, `base_model_type`, ...)."""
        coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
        intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
        classes = np.asarray(classes)
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        dim = coef.shape[1]
        if mean.shape != (dim,) or std.shape != (dim,) or (std <= 0).any():
            raise ValueError(f"mean and std must have shape ({dim},) with std > 0, got {mean.shape} and {std.shape}")
        if classes.ndim != 1 or len(classes) < 2:
            raise ValueError(f"a linear adapter needs a fit on at least two classes, got {classes.tolist()}")
        if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or len(set(classes.tolist())) != len(classes):
            raise ValueError(f"classes must be distinct non-negative class indices, got {classes.tolist()}")
        if len(classes) == 2 and coef.shape[0] == 1:  # binary: one decision for classes[1] against classes[0]
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros(1), intercept])
        if coef.shape[0] != len(classes) or intercept.shape != (len(classes),):
            raise ValueError(f"coef {coef.shape} and intercept {intercept.shape} do not match {len(classes)} classes")
        if id2label is None:
            count = num_labels if num_labels is not None else int(classes.max()) + 1
            id2label = {index: f"LABEL_{index}" for index in range(count)}
        id2label = {int(key): str(value) for key, value in id2label.items()}
        if sorted(id2label) != list(range(len(id2label))) or classes.max() >= len(id2label):
            raise ValueError(f"id2label must name classes 0..{len(id2label) - 1} and cover every fitted class")
        config = XrayLinearAdapterConfig(embedding_dim=dim, id2label=id2label, **config_kwargs)
        adapter = cls(config)
        weight = np.zeros((len(id2label), dim))
        bias = np.full(len(id2label), ABSENT_CLASS_BIAS)
        weight[classes], bias[classes] = coef, intercept
        with torch.no_grad():
            adapter.classifier.weight.copy_(torch.from_numpy(weight))
            adapter.classifier.bias.copy_(torch.from_numpy(bias))
            adapter.feature_mean.copy_(torch.from_numpy(mean))
            adapter.feature_std.copy_(torch.from_numpy(std))
        return adapter.eval()


def adapter_path(model_dir: str | os.PathLike, name: str) -> str:
    """`<model_dir>/adapters/<name>`; `name` is one path component of letters, digits, `.`, `_`, `-`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"adapter name must be letters, digits, '.', '_' or '-' (not starting with '.'), got {name!r}")
    return os.path.join(os.fspath(model_dir), ADAPTERS_DIR, name)


def list_adapters(model_dir: str | os.PathLike) -> list[str]:
    """Names of the adapters saved beside the model in `model_dir` (sorted)."""
    root = os.path.join(os.fspath(model_dir), ADAPTERS_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, "config.json")))


def save_adapter(adapter: XrayLinearAdapter, model_dir: str | os.PathLike, name: str) -> str:
    """Save `adapter` to `<model_dir>/adapters/<name>/` (config.json + model.safetensors); returns the path."""
    if not os.path.isdir(os.fspath(model_dir)):
        raise ValueError(f"model directory {os.fspath(model_dir)!r} does not exist: save the model first")
    path = adapter_path(model_dir, name)
    adapter.save_pretrained(path)
    return path


def load_adapter(model_dir: str | os.PathLike, name: str, **kwargs: Any) -> XrayLinearAdapter:
    """The adapter `name` saved beside the model in `model_dir`, in eval mode."""
    path = adapter_path(model_dir, name)
    if not os.path.isfile(os.path.join(path, "config.json")):
        available = list_adapters(model_dir)
        raise ValueError(
            f"no adapter {name!r} in {os.fspath(model_dir)!r}; available: {', '.join(available) if available else 'none'}"
        )
    return XrayLinearAdapter.from_pretrained(
        os.fspath(model_dir), subfolder=f"{ADAPTERS_DIR}/{name}", **kwargs
    ).eval()


__all__ = [
    "ADAPTERS_DIR",
    "XrayLinearAdapter",
    "XrayLinearAdapterOutput",
    "adapter_path",
    "list_adapters",
    "load_adapter",
    "save_adapter",
]
