"""`ModelOutput` dataclasses of the xray_hf models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class XrayVisualModelOutput(ModelOutput):
    """
    Output of [`XrayVisualModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_tokens, hidden_size)`):
            Final-norm output of CLS followed by the patch tokens (registers removed). With EViT or ToMe
            `num_tokens` is the reduced count; otherwise `T' * H' * W'` in (time, height, width) order.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled embedding (`config.pooling`).
        register_tokens (`torch.FloatTensor` of shape `(batch_size, num_register_tokens, hidden_size)`, *optional*):
            Final-norm output of the register tokens.
        token_sizes (`torch.FloatTensor` of shape `(batch_size, num_tokens)`, *optional*):
            How many tokens each patch token stands for through ToMe merges, when ToMe is active (None
            otherwise: all 1). EViT's fused token is a new token of size 1; tokens EViT keeps keep their sizes.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embedding output and each layer's output (full sequences: CLS, registers, patch tokens),
            returned with `output_hidden_states=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    register_tokens: torch.FloatTensor | None = None
    token_sizes: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class XrayVisualForPreTrainingOutput(ModelOutput):
    """
    Output of [`XrayVisualForPreTraining`] (MAE, paper 4.2.1).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean squared error on the masked patches only (fp32), against per-patch normalised pixels when
            `config.norm_pix_loss`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_dim)`):
            Predicted pixels of every patch in (time, height, width) order; `patch_dim` is
            `patch_size**2 * num_channels` for images and `tubelet_size * patch_size**2 * num_channels` for videos.
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 where the patch was masked (hidden from the encoder), 0 where it was visible.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            Permutation that puts the [visible, masked] order back in patch order.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible, hidden_size)`):
            Encoder output of CLS and the visible patch tokens.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder hidden states on the visible sequence, with `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class XrayVisualHashtagOutput(ModelOutput):
    """
    Output of [`XrayVisualForHashtagClassification`] (paper 4.2.2).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Hashtag loss (fp32) when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            One score per hashtag of the vocabulary (fp32).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled backbone embedding the head reads.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Backbone hidden states, with `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class XrayCLIPOutput(ModelOutput):
    """
    Output of [`XrayCLIPModel`] (paper 4.2.3): transformers' `CLIPOutput` fields, the scale, and every loss term and
    feature the stage-3 losses take (named after the losses' arguments).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted sum of the loss terms below, with `return_loss=True` (local batch, fp32).
        logits_per_image (`torch.FloatTensor` of shape `(image_batch, text_batch)`):
            Scaled cosine similarities, fp32.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch, image_batch)`):
            The transpose of `logits_per_image`.
        text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
            Normalised projected text embeddings, fp32.
        image_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
            Normalised projected image (or video) embeddings, fp32.
        text_model_output, vision_model_output:
            The towers' outputs.
        logit_scale (`torch.FloatTensor` of shape `()`):
            The exponentiated logit scale (a temperature's inverse).
        contrastive_loss, hashtag_loss, slip_loss, denoise_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The weighted terms (they sum to `loss`): caption contrastive, hashtag-caption contrastive (siamese),
            SLIP and denoising.
        hashtag_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`, *optional*):
            Normalised embeddings of the hashtag texts; `hashtag_mask` marks the items that have hashtags.
        slip_embeds_1, slip_embeds_2 (`torch.FloatTensor` of shape `(batch, slip_projection_dim)`, *optional*):
            SLIP head outputs of the two SimCLR views.
        denoised_embeds, denoise_target (`torch.FloatTensor` of shape `(batch, hidden_size)`, *optional*):
            The denoiser's reconstruction and the clean backbone embedding it reconstructs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: ModelOutput | None = None
    vision_model_output: ModelOutput | None = None
    logit_scale: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    hashtag_loss: torch.FloatTensor | None = None
    slip_loss: torch.FloatTensor | None = None
    denoise_loss: torch.FloatTensor | None = None
    hashtag_embeds: torch.FloatTensor | None = None
    hashtag_mask: torch.Tensor | None = None
    slip_embeds_1: torch.FloatTensor | None = None
    slip_embeds_2: torch.FloatTensor | None = None
    denoised_embeds: torch.FloatTensor | None = None
    denoise_target: torch.FloatTensor | None = None

    def to_tuple(self) -> tuple:
        return tuple(
            v.to_tuple() if k in ("text_model_output", "vision_model_output") and v is not None else v
            for k, v in self.items()
        )
