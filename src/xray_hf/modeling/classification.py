"""Classification heads on the pooled XrayVisual backbone, and what they share.

Which Auto class gives which model (after `import xray_hf`):

- `AutoModel` -> [`XrayVisualModel`], the backbone.
- `AutoModelForImageClassification` -> [`XrayVisualForImageClassification`] (this module): a single-label
  softmax classifier over `config.num_labels` (`labels` are class indices), what the `image-classification`
  pipeline and downstream fine-tuning expect.
- The hashtag model of stage 2, [`XrayVisualForHashtagClassification`] (multi-label, multi-hot `labels`), has no
  Auto class of its own: load it by its class, `XrayVisualForHashtagClassification.from_pretrained(path)`.

Both heads load any XrayVisual checkpoint (backbone, MAE, hashtag, classifier) and keep only the backbone of a
checkpoint that is not theirs: the MAE decoder and the other model's head are dropped, never reused.
[`BackboneProbeMixin`] lets either head freeze its backbone for a linear probe: the frozen backbone stays in
eval mode whenever the model is put in train mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from ..configuration.visual import XrayVisualConfig
from .visual import XrayVisualModel, XrayVisualPreTrainedModel


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


class XrayVisualForImageClassification(BackboneProbeMixin, XrayVisualPreTrainedModel):
    """XrayVisual backbone with a single-label linear head over `config.num_labels` classes (softmax,
    cross-entropy in fp32), for images and videos; the head reads the backbone's pooled embedding
    (`config.pooling`).

    The head is named `head`, not `classifier` as in the hashtag model, so a hashtag checkpoint's head never
    loads into it: `from_pretrained(hashtag_or_mae_or_backbone_checkpoint, id2label=..., label2id=...)` starts
    from that backbone with a fresh head.
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^classifier\."]

    def __init__(self, config: XrayVisualConfig):
        if config.num_labels < 2:
            raise ValueError(f"a single-label softmax classifier needs num_labels >= 2, got {config.num_labels}")
        if config.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"XrayVisualForImageClassification is single-label (softmax over class indices), got problem_type="
                f"{config.problem_type!r}; for multi-label targets use XrayVisualForHashtagClassification"
            )
        super().__init__(config)
        self.num_labels = config.num_labels
        self.xray_visual = XrayVisualModel(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.xray_visual.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor`):
            Images `(batch, channels, height, width)` or videos `(batch, frames, channels, height, width)`.
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Class indices in `[0, num_labels)`; the loss is their cross-entropy (fp32).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.xray_visual(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.head(outputs.pooler_output).float()
        loss = None
        if labels is not None:
            self._check_labels(labels, logits.shape[0])
            loss = F.cross_entropy(logits, labels)
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()

    def _check_labels(self, labels: torch.Tensor, batch: int) -> None:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
            raise ValueError(
                f"labels must be integer class indices of shape (batch,), got {labels.dtype} of shape "
                f"{tuple(labels.shape)}; for multi-hot targets use XrayVisualForHashtagClassification"
            )
        if labels.shape[0] != batch:
            raise ValueError(f"labels has {labels.shape[0]} entries for a batch of {batch}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_labels):
            raise ValueError(
                f"labels must be class indices in [0, {self.num_labels}), got values from {labels.min().item()} to "
                f"{labels.max().item()}"
            )


__all__ = ["BackboneProbeMixin", "XrayVisualForImageClassification"]
