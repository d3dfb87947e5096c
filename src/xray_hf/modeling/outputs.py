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
