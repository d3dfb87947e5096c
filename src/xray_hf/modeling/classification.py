"""Heads on the pooled XrayVisual backbone, and what they share.

[`BackboneProbeMixin`] lets a head model freeze its backbone for a linear probe: the frozen backbone stays in
eval mode whenever the model is put in train mode.
"""

from __future__ import annotations

from torch import nn


class BackboneProbeMixin:
    """For head models whose backbone is `self.xray_visual`: [`freeze_backbone`] makes a linear probe.

    A frozen backbone gets no gradients and stays in eval mode through every `train()` call (the Trainer calls
    `model.train()` at each step), so DropPath and dropout are off and ToMe runs as at inference: the head trains
    on the embeddings inference gives. The head itself follows `train()` / `eval()` as usual.
    """

    backbone_frozen: bool = False

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Freeze (or, with `frozen=False`, unfreeze: every backbone parameter trainable again) the backbone."""
        self.xray_visual.requires_grad_(not frozen)
        self.backbone_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> nn.Module:
        super().train(mode)
        if self.backbone_frozen:
            self.xray_visual.eval()
        return self


__all__ = ["BackboneProbeMixin"]
