"""Optimizers of the recipe: Lion (paper 4.5: betas 0.9 / 0.99, from `timm.optim`) or AdamW, with weight decay
off for biases, norms and embedding-like tokens, and optional layer-wise learning-rate decay for fine-tuning
(BEiT / MAE fine-tuning: layer `i` of `L` gets `lr * decay ** (L + 1 - i)`, the embeddings `lr * decay ** (L + 1)`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("lion", "adamw")

# parameters that never get weight decay: biases, norms, and tokens/tables that are not weights of a layer
_NO_DECAY = re.compile(
    r"(bias$|norm|layernorm|cls_token|register_tokens|mask_token|position_embeddings|attention_pooling\.query)"
)
_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a backbone parameter for layer-wise decay: 0 for the embeddings, i + 1 for encoder layer i,
    num_layers + 1 for everything after the encoder (final norm, pooling, heads, decoders)."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(?:^|\.)embeddings\.", name) and not name.startswith("decoder."):
        return 0
    return num_layers + 1


def param_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float | None = None,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (weight decay on/off, learning-rate scale). No decay for the names the model
    lists in `no_weight_decay()` (timm's convention, e.g. CLIP's `logit_scale`), biases, norms and tokens."""
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if num_layers is None:
            num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            if num_layers is None:
                raise ValueError("layer_decay needs num_layers (or a model whose config has num_hidden_layers)")
    declared = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and not _NO_DECAY.search(name) and name not in declared
        depth = layer_id(name, num_layers) if layer_decay is not None else 0
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


__all__ = ["OPTIMIZERS", "build_optimizer", "layer_id", "param_groups"]
