"""Optimizers of the recipe: Lion (paper 4.5: betas 0.9 / 0.99, from `timm.optim`) or AdamW, with weight decay
off for what the model declares in `no_weight_decay()` and for 1-d parameters, and optional layer-wise
learning-rate decay for fine-tuning (BEiT / MAE fine-tuning: layer `i` of `L` gets `lr * decay ** (L + 1 - i)`,
the embeddings `lr * decay ** (L + 1)`), with the depths the backbone declares in `layer_id(name)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("lion", "adamw")


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that `model` and its submodules list in `no_weight_decay()` (timm's
    convention: e.g. the backbone's tokens and position tables, CLIP's `logit_scale`)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if callable(getattr(type(module), "no_weight_decay", None)):  # the class's own (a PEFT wrapper forwards)
            names |= {_prefixed(prefix, name) for name in module.no_weight_decay()}
    return names


def layer_ids(model: nn.Module, num_layers: int) -> dict[str, int]:
    """Depth of every parameter for layer-wise decay, as the submodule declaring `layer_id(name)` (the backbone)
    says; parameters outside it (heads, decoders) come after the last layer: `num_layers + 1`."""
    depths = {name: num_layers + 1 for name, _ in model.named_parameters()}
    for prefix, module in model.named_modules():
        if callable(getattr(type(module), "layer_id", None)):
            for name, _ in module.named_parameters():
                depths[_prefixed(prefix, name)] = module.layer_id(name)
    return depths


def param_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float | None = None,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (weight decay on/off, learning-rate scale). No decay for 1-d parameters
    (biases, norms, scalars) and for what the model declares in `no_weight_decay()`."""
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if num_layers is None:
            num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            if num_layers is None:
                raise ValueError("layer_decay needs num_layers (or a model whose config has num_hidden_layers)")
    no_decay = no_weight_decay_names(model)
    depths = layer_ids(model, num_layers) if layer_decay is not None else {}
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in no_decay
        depth = depths.get(name, 0)
        scale = layer_decay ** (num_layers + 1 - depth) if layer_decay is not None else 1.0
        group = groups.setdefault(
            (decay, depth),
            {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
             "lr": learning_rate * scale, "lr_scale": scale},
        )
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    name: str, groups: list[dict[str, Any]], learning_rate: float, betas: tuple[float, float] | None = None,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """`"lion"`: `timm.optim.Lion` (default betas 0.9 / 0.99, RECIPE 4.5); `"adamw"`: `torch.optim.AdamW`."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if name == "lion":
        from timm.optim import Lion

        return Lion(clean, lr=learning_rate, betas=betas or (0.9, 0.99))
    if name == "adamw":
        # the fused kernel (CPU and accelerators) is several times faster than the per-tensor loop
        fused = all(p.is_floating_point() for g in clean for p in g["params"])
        return torch.optim.AdamW(clean, lr=learning_rate, betas=betas or (0.9, 0.999), eps=eps, fused=fused or None)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


__all__ = ["OPTIMIZERS", "build_optimizer", "layer_ids", "no_weight_decay_names", "param_groups"]
