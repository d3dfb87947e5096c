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
            Number of input patches each patch token stands for, when ToMe is active (EViT fusions after
            that are counted too).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embedding output and each layer's output (full sequences: CLS, registers, patch tokens),
            returned with `output_hidden_states=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    register_tokens: torch.FloatTensor | None = None
    token_sizes: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
