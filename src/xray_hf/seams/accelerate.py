"""accelerate's private names the package relies on (see `xray_hf.seams`)."""

from __future__ import annotations

from torch import nn

from . import Seam

PREPARED_FLAG = "_is_accelerate_prepared"

SEAMS = (
    Seam("accelerate.accelerator:Accelerator.prepare_model", PREPARED_FLAG, None, "xray_hf.seams.accelerate",
         "an FSDP2-sharded model is marked prepared so that accelerate returns it as it is; if the flag moves, "
         "accelerate wraps the sharded model in DDP (or places it on a device) on its own",
         "none: Accelerator.prepare_model has no public way to take a model it must not wrap (used by "
         "xray_hf.trainers.base through mark_prepared)"),
)


def mark_prepared(model: nn.Module) -> nn.Module:
    """Tell accelerate that `model` is ready as it is: `Accelerator.prepare_model` returns it unwrapped."""
    setattr(model, PREPARED_FLAG, True)
    return model


__all__ = ["PREPARED_FLAG", "SEAMS", "mark_prepared"]
