"""The plain CLIP-style text tower (paper section 4.6.1, Table 7): for users without an LLM.

The transformer blocks are transformers' `CLIPTextModel` (causal attention, learned absolute positions);
we add what CLIP's own pooler lacks: pooling by attention mask (not by token id), positions that ignore
padding, and a linear projection into the space shared with the vision tower.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..configuration.text import XrayTextConfig
from .checkpointing import NonReentrantCheckpointingMixin
from ..hub_mixin import XrayHubMixin
from .text_pooling import check_attention_mask, pool_tokens, position_ids_from_attention_mask


@dataclass
class XrayTextModelOutput(ModelOutput):
    """
    Output of the text towers ([`XrayTextModel`], [`XrayLLM2CLIPTextModel`]).

    Args:
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The projected text embedding (not normalised), fp32.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled token states before the projection (for the LLM tower: the pooled LLM output, which
            the embedding cache stores), fp32.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Token states of the last layer; `None` when the pooled LLM output came from the cache.
    """

    text_embeds: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


class XrayTextTowerMixin:
    """What both text towers offer beside `forward` / `get_text_features`: the tokenization they were trained on."""

    def tokenize(self, tokenizer: Any, texts: Any, return_tensors: str | None = "pt", **overrides: Any):
        """`tokenizer(texts)` with this tower's `max_text_length` and `padding_side` (`config.tokenize`)."""
        return self.config.tokenize(tokenizer, texts, return_tensors=return_tensors, **overrides)

    def no_weight_decay(self) -> set[str]:
        """Parameters that never take weight decay: learned position tables named `position_embeddings` (BERT-style
        LLMs; the CLIP text encoder's `position_embedding` decays, as in open_clip). 1-d ones never decay either."""
        return {name for name, _ in self.named_parameters() if "position_embeddings" in name}


class XrayTextPreTrainedModel(XrayTextTowerMixin, NonReentrantCheckpointingMixin, XrayHubMixin, PreTrainedModel):
    config: XrayTextConfig
    config_class = XrayTextConfig
    base_model_prefix = "xray_text"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.hidden_size**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)



class XrayTextModel(XrayTextPreTrainedModel):
    """CLIP-style text encoder: `input_ids`, `attention_mask` -> `text_embeds` (batch, projection_dim)."""

    def __init__(self, config: XrayTextConfig):
        super().__init__(config)
        clip_config = config.to_clip_text_config()
        clip_config._attn_implementation = config._attn_implementation
        self.text_model = CLIPTextModel._from_config(clip_config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XrayTextModelOutput | tuple:
        attention_mask = check_attention_mask(input_ids, attention_mask)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}: tokenize with truncation"
            )
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        pooled = pool_tokens(hidden, attention_mask, self.config.pooling)
        text_embeds = self.text_projection(pooled.to(self.text_projection.weight.dtype)).float()
        output = XrayTextModelOutput(text_embeds=text_embeds, pooler_output=pooled, last_hidden_state=hidden)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def get_text_features(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> XrayTextModelOutput:
        """The tower's output with the projected text embedding `(batch, projection_dim)` (fp32, not normalised) in
        `pooler_output`, as transformers 5's `CLIPModel.get_text_features`."""
        output = self(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        output.pooler_output = output.text_embeds
        return output


__all__ = ["XrayTextModel", "XrayTextPreTrainedModel", "XrayTextModelOutput", "XrayTextTowerMixin"]
