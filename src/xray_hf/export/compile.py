"""torch.compile for inference with static shapes: one graph per input shape, none per value.

`compile_for_inference(model)` compiles the vision towers of any xray_hf model in place (`nn.Module.compile`, so
`get_image_features`, `get_video_features` and `forward` keep working and the model keeps its class) with
`dynamic=False`. EViT's kept and ToMe's merged token counts are Python ints computed from the config and the
input's token count (`modeling/token_reduction.py`), never from the data, so the whole backbone is one graph
(no graph break, EViT and ToMe included) and each input shape (batch, frames, height, width) compiles once: images
and videos get one graph per resolution, and a progressive-resolution run recompiles once per size. Keep rates are
read from the config when the layers are built, so no float value ever reaches a guard.

Dynamo keeps at most `torch._dynamo.config.recompile_limit` graphs (8 by default) per model and falls back to eager
beyond it, with a warning: serve a few fixed shapes (pad the last batch) rather than many.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modeling.visual import XrayVisualModel


def vision_towers(model: nn.Module) -> list[XrayVisualModel]:
    """The outermost `XrayVisualModel`s in `model` (the model itself if it is one)."""
    found: dict[str, XrayVisualModel] = {}
    for name, module in model.named_modules():
        if isinstance(module, XrayVisualModel) and not any(name.startswith(outer + ".") for outer in found):
            found[name] = module
    return list(found.values())


def compile_for_inference(
    model: nn.Module, *, backend: Any = "inductor", mode: str | None = None, options: dict[str, Any] | None = None,
) -> nn.Module:
    """Compile `model`'s vision towers in place with static shapes and return `model` (put in eval mode).

    Text towers stay eager: captions are padded to each batch's longest, so a static graph per length would
    recompile at almost every batch. `backend`, `mode` and `options` go to `torch.compile` (e.g. a
    `torch._dynamo.testing.CompileCounter` backend counts graphs without generating code).
    """
    towers = vision_towers(model)
    if not towers:
        raise ValueError(f"{type(model).__name__} has no XrayVisualModel to compile")
    model.eval()
    for tower in towers:
        tower.compile(dynamic=False, backend=backend, mode=mode, options=options)
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` was compiled in place (`nn.Module.compile`)."""
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = ["compile_for_inference", "vision_towers", "is_compiled"]
