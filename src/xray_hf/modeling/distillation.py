"""The student of an image-only teacher (paper 4.11): an XrayVisual backbone plus `distill_projection`, the learned
map from the student's width to the teacher's embedding width (`config.distill_target_size`; identity when they
match), trained by `DistillationTrainer` on the teacher's pooled embeddings.

The checkpoint is an ordinary XrayVisual checkpoint: `XrayVisualModel.from_pretrained(student_dir)` loads the
backbone and leaves the projection out (it only exists to compare with the teacher). A CLIP teacher's student is a
plain [`XrayCLIPModel`] instead, whose `visual_projection` already maps into the teacher's shared space.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration.visual import XrayVisualConfig
from .outputs import XrayVisualModelOutput
from .visual import XrayVisualModel, XrayVisualPreTrainedModel


class XrayVisualForDistillation(XrayVisualPreTrainedModel):
    """XrayVisual backbone whose pooled embedding is projected to the teacher's width (`config.distill_target_size`,
    default the student's own `hidden_size`). `forward` returns the backbone output with the projected fp32
    embedding in `pooler_output`, the shape of `get_image_features` of a CLIP model."""

    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^classifier\.", r"^head\."]

    def __init__(self, config: XrayVisualConfig):
        target = getattr(config, "distill_target_size", None) or config.hidden_size
        if not isinstance(target, int) or target < 1:
            raise ValueError(f"distill_target_size must be a positive int, got {target!r}")
        config.distill_target_size = target
        super().__init__(config)
        self.xray_visual = XrayVisualModel(config)
        self.distill_projection = (
            nn.Identity() if target == config.hidden_size else nn.Linear(config.hidden_size, target, bias=False)
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.xray_visual.get_input_embeddings()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> XrayVisualModelOutput:
        r"""
        pixel_values (`torch.FloatTensor`):
            Images `(batch, channels, height, width)` or videos `(batch, frames, channels, height, width)`.
        """
        outputs = self.xray_visual(pixel_values, return_dict=True, **kwargs)
        outputs.pooler_output = self.distill_projection(outputs.pooler_output).float()
        return outputs


__all__ = ["XrayVisualForDistillation"]
