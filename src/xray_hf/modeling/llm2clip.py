"""The LLM2CLIP text tower (paper section 4.6.2): a frozen text model, pooled, then adapter and projection.

The frozen text model (`llm`, built from the nested `config.llm_config`) is any transformers text model:
- an encoder (BERT, RoBERTa, XLM-R, MPNet, ...; `AutoModel`), e.g. a sentence-transformers embedder, whose folder
  `from_llm` reads (pooling, normalisation, max length): the pooled output then equals
  `SentenceTransformer(folder).encode(texts)`. LLM2CLIP's point: a text model whose embeddings already separate
  captions, frozen, plus a trained adapter;
- a decoder LLM (LLaMA, Qwen2, Mistral, Gemma families), made bidirectional the way transformers >= 5 supports it:
  `is_causal=False` (passed on every call and stored in the nested config), which gives a padding-only attention
  mask and a non-causal SDPA call, or left causal with last-token pooling (LLM2Vec / e5-mistral checkpoints).
  A stock class built from the nested config is therefore bidirectional as well; nothing here patches modules.

`XrayLLM2CLIPTextForMNTP` is the same LLM with its LM head, for masked next-token prediction (LLM2Vec): its
parameter names match `XrayLLM2CLIPTextModel` (`llm.*`), so a LoRA adapter trained on one loads on the other.

The LM head travels with the LLM. Tied LLMs (SmolLM2, LLaMA-3.2-1B) have none of their own: the input embeddings
are the head. Untied ones (Mistral, larger Qwen2, LLaMA-3-8B) have `lm_head`, which both classes hold, so the
documented MNTP flow (`XrayLLM2CLIPTextModel.from_llm(llm).save_pretrained(base)`, then
`XrayLLM2CLIPTextForMNTP.from_pretrained(base)`) trains against the LLM's own head. The text tower never runs it
and never trains it (it costs `vocab_size x llm_hidden_size` frozen parameters). A checkpoint without the head of
its untied LLM loads into the text tower with no head at all (never a random one), and the MNTP model refuses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.utils import ModelOutput

from ..configuration.text import XrayLLM2CLIPTextConfig, embedder_kind
from .checkpointing import NonReentrantCheckpointingMixin
from ..hub_mixin import XrayHubMixin
from .sentence_embedder import is_sentence_transformers_folder, read_sentence_transformers_folder
from .text import XrayTextModelOutput, XrayTextTowerMixin
from .text_pooling import check_attention_mask, pool_tokens, position_ids_from_attention_mask

# Attention implementations for which `is_causal=False` is honoured with our padding-only mask.
BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


class XrayLLM2CLIPAdapterBlock(nn.Module):
    """Pre-norm residual MLP block: `x + fc2(act(fc1(norm(x))))`."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float, eps: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.fc2(self.dropout(self.act(self.fc1(self.norm(x))))))


class XrayLLM2CLIPAdapter(nn.Module):
    """The trainable part after the frozen LLM (LLM2CLIP): optional input projection, residual blocks, norm."""

    def __init__(self, config: XrayLLM2CLIPTextConfig):
        super().__init__()
        dim = config.adapter_hidden_size
        self.input_projection = (
            nn.Linear(config.llm_hidden_size, dim) if dim != config.llm_hidden_size else nn.Identity()
        )
        self.blocks = nn.ModuleList(
            XrayLLM2CLIPAdapterBlock(dim, config.adapter_mlp_ratio, config.adapter_dropout, config.layer_norm_eps)
            for _ in range(config.adapter_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.input_projection(pooled)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def embedder_blocks(llm: nn.Module) -> list[str]:
    """Class names of the text model's repeated blocks (FSDP wrapping units, no-split modules): its own
    `_no_split_modules` that sit in a `ModuleList`, else the class of its longest `ModuleList` (MPNet lists none)."""
    lists = [m for m in llm.modules() if isinstance(m, nn.ModuleList) and len(m)]
    in_lists = {type(child).__name__ for m in lists for child in m}
    declared = [name for name in (getattr(llm, "_no_split_modules", None) or []) if name in in_lists]
    if declared or not lists:
        return declared
    return [type(max(lists, key=len)[0]).__name__]


def _refuse_remote_code_llm(llm_config, source: str) -> None:
    auto_map = getattr(llm_config, "auto_map", None)
    if auto_map:
        raise ValueError(
            f"{source} ships its own modeling code (auto_map={auto_map}); its attention may differ from "
            "transformers' class for the same model_type (e.g. LLM2Vec/LLM2CLIP checkpoints are bidirectional "
            "but load silently as causal). Refusing: convert it to a plain checkpoint of a stock architecture."
        )


class XrayLLM2CLIPTextPreTrainedModel(XrayTextTowerMixin, NonReentrantCheckpointingMixin, XrayHubMixin, PreTrainedModel):
    config: XrayLLM2CLIPTextConfig
    config_class = XrayLLM2CLIPTextConfig
    base_model_prefix = "llm"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _build_llm(self, config: XrayLLM2CLIPTextConfig) -> None:
        """Create `self.llm` from the nested config (random weights; `from_pretrained`/`from_llm` load them)."""
        _refuse_remote_code_llm(config.llm_config, "llm_config")
        llm_config = config.llm_config
        decoder = config.kind == "decoder"
        if llm_config._attn_implementation is None and decoder:
            # decoders need SDPA or eager for `is_causal=False`; an encoder left unset gets transformers' own choice
            # (SDPA where it has one: MPNet has none; set llm_config._attn_implementation to choose)
            llm_config._attn_implementation = config._attn_implementation or "sdpa"
        if decoder and config.bidirectional and llm_config._attn_implementation not in BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation {llm_config._attn_implementation!r} is not supported for bidirectional "
                f"attention here; use one of {BIDIRECTIONAL_ATTENTION_IMPLEMENTATIONS}"
            )
        self.llm = AutoModel.from_config(llm_config)
        # One config object for the LLM's modules and our nested config: settings can never drift apart.
        config.llm_config = self.llm.config
        self._no_split_modules = embedder_blocks(self.llm)
        # A decoder's own output head, if it is not tied to the input embeddings (see the module docstring).
        tied = getattr(config.llm_config, "tie_word_embeddings", False)
        untied_decoder = decoder and not tied
        self.lm_head = nn.Linear(config.llm_hidden_size, config.llm_config.vocab_size, bias=False) if untied_decoder else None

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    # whether forward runs `lm_head` (the MNTP model); the text tower only carries it, frozen
    _uses_lm_head = False

    def freeze_llm(self, frozen: bool = True) -> None:
        """Stop (or restart) training the LLM's own weights (and its LM head); recorded in `config.freeze_llm`."""
        self.config.freeze_llm = bool(frozen)
        for param in self.llm.parameters():
            param.requires_grad_(not frozen)
        if self.lm_head is not None:
            self.lm_head.requires_grad_(self._uses_lm_head and not frozen)

    def llm_hidden_states(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of the text model: a decoder bidirectional if configured, positions independent of
        padding; an encoder as its own forward runs it (right padding, see the config)."""
        if self.config.kind == "encoder":
            return self.llm(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        outputs = self.llm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            is_causal=not self.config.bidirectional,
            use_cache=False,
        )
        return outputs.last_hidden_state

    def _lm_head_missing(self, source: str) -> None:
        """The checkpoint or LLM `source` lacks the head of an untied LLM: never keep a random one."""
        if self._uses_lm_head:
            raise ValueError(
                f"{source} has no LM head (lm_head.weight) for its untied LLM, so MNTP would train against a random "
                "head. Build the base from the source LLM, which keeps its head: "
                "XrayLLM2CLIPTextModel.from_llm(llm).save_pretrained(base) or XrayLLM2CLIPTextForMNTP.from_llm(llm)"
            )
        self.lm_head = None  # the text tower does not use it; saved checkpoints then carry no random head

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, output_loading_info: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained` (also resolves base + LoRA adapter from an adapter folder), then
        re-applies `config.freeze_llm` (loading materialises fresh, trainable parameters) and refuses (MNTP) or
        drops (text tower) an LM head of an untied LLM that the checkpoint does not hold."""
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        if model.lm_head is not None and "lm_head.weight" in info["missing_keys"]:
            model._lm_head_missing(str(pretrained_model_name_or_path))
            info["missing_keys"] = {key for key in info["missing_keys"] if key != "lm_head.weight"}
        model.freeze_llm(model.config.freeze_llm)
        return (model, info) if output_loading_info else model

    @classmethod
    def from_llm(
        cls,
        llm_name_or_path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        **config_kwargs,
    ) -> "XrayLLM2CLIPTextPreTrainedModel":
        """
        Build the tower around a plain text-model checkpoint: a decoder LLM (e.g. the output of
        `xray-hf convert smollm2`), an encoder, or a sentence-transformers folder (e.g. `xray-hf convert minilm`),
        whose pooling, normalisation and max length are read from its `modules.json` and module configs.

        The text model's weights are loaded, with a decoder's LM head if it is untied (see the module docstring);
        the adapter and projection are newly initialised. `config_kwargs` go to [`XrayLLM2CLIPTextConfig`] (and
        win over the folder's settings). Checkpoints with remote code (`auto_map`) are refused.
        """
        sentence_transformers = is_sentence_transformers_folder(llm_name_or_path)
        if sentence_transformers:
            folder = read_sentence_transformers_folder(llm_name_or_path)
            llm_name_or_path, config_kwargs = folder.model_path, {**folder.config_kwargs, **config_kwargs}
        llm_config = AutoConfig.from_pretrained(llm_name_or_path)
        if sentence_transformers and embedder_kind(llm_config) == "decoder":
            config_kwargs.setdefault("bidirectional", False)  # sentence-transformers runs a decoder causal
        _refuse_remote_code_llm(llm_config, str(llm_name_or_path))
        if str(getattr(llm_config, "model_type", "")).startswith("xray_"):
            raise ValueError(f"{llm_name_or_path} is already an xray_hf checkpoint ({llm_config.model_type}): load it "
                             "with from_pretrained")
        if embedder_kind(llm_config) == "encoder":
            if cls._uses_lm_head:
                raise ValueError(f"{llm_name_or_path} holds a {llm_config.model_type!r} encoder: MNTP trains decoder "
                                 "LLMs (an encoder is used frozen as it is)")
            config_kwargs.setdefault("pooling", "mean")
        config = XrayLLM2CLIPTextConfig(llm_config=llm_config, **config_kwargs)
        model = cls(config)
        if config.kind == "encoder":
            encoder = AutoModel.from_pretrained(llm_name_or_path, dtype=dtype or torch.float32)
            model.llm.load_state_dict(encoder.state_dict(), strict=True)
            if dtype is not None:
                model.to(dtype=dtype)
            model.freeze_llm(config.freeze_llm)
            return model
        source, info = AutoModelForCausalLM.from_pretrained(
            llm_name_or_path, dtype=dtype or torch.float32, output_loading_info=True
        )
        model.llm.load_state_dict(source.get_decoder().state_dict(), strict=True)
        if model.lm_head is not None:
            if "lm_head.weight" in info["missing_keys"]:  # a base-model-only checkpoint of an untied LLM
                model._lm_head_missing(str(llm_name_or_path))
            else:
                model.lm_head.load_state_dict(source.get_output_embeddings().state_dict())
        if dtype is not None:
            model.to(dtype=dtype)
        model.freeze_llm(config.freeze_llm)
        return model


class XrayLLM2CLIPTextModel(XrayLLM2CLIPTextPreTrainedModel):
    """
    LLM2CLIP text encoder: `input_ids`, `attention_mask` -> bidirectional LLM -> pooling -> 4-block residual MLP
    adapter -> linear projection -> `text_embeds` (batch, projection_dim).

    With `config.freeze_llm` the LLM runs without gradients; the CLIP stage then trains only the adapter and
    projection, and can feed cached pooled LLM outputs (`llm_pooled_output`) instead of tokens.
    """

    # forward has no per-token loss: Trainer must not pass `num_items_in_batch`
    accepts_loss_kwargs = False

    def __init__(self, config: XrayLLM2CLIPTextConfig):
        super().__init__(config)
        self._build_llm(config)
        self.adapter = XrayLLM2CLIPAdapter(config)
        self.text_projection = nn.Linear(config.adapter_hidden_size, config.projection_dim, bias=False)
        self.post_init()
        self.freeze_llm(config.freeze_llm)

    def get_llm_pooled_output(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The pooled LLM output `(batch, llm_hidden_size)` in fp32: what the embedding cache stores."""
        attention_mask = check_attention_mask(input_ids, attention_mask)
        llm_trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.llm.parameters())
        with torch.set_grad_enabled(llm_trains):
            hidden = self.llm_hidden_states(input_ids, attention_mask)
            return self._pool(hidden, attention_mask)

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = pool_tokens(hidden, attention_mask, self.config.pooling)
        return nn.functional.normalize(pooled, dim=-1) if self.config.normalize_pooled else pooled

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        llm_pooled_output: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XrayTextModelOutput | tuple:
        if (input_ids is None) == (llm_pooled_output is None):
            raise ValueError("pass exactly one of input_ids (tokens) or llm_pooled_output (cached pooled LLM output)")
        hidden = None
        if input_ids is not None:
            attention_mask = check_attention_mask(input_ids, attention_mask)
            llm_trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.llm.parameters())
            with torch.set_grad_enabled(llm_trains):
                hidden = self.llm_hidden_states(input_ids, attention_mask)
                pooled = self._pool(hidden, attention_mask)
        else:
            expected = self.config.llm_hidden_size
            if llm_pooled_output.dim() != 2 or llm_pooled_output.shape[1] != expected:
                raise ValueError(
                    f"llm_pooled_output must have shape (batch, {expected}), got {tuple(llm_pooled_output.shape)}"
                )
            pooled = llm_pooled_output.float()
        dtype = self.text_projection.weight.dtype
        text_embeds = self.text_projection(self.adapter(pooled.to(dtype))).float()
        output = XrayTextModelOutput(text_embeds=text_embeds, pooler_output=pooled, last_hidden_state=hidden)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def get_text_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        llm_pooled_output: torch.Tensor | None = None,
    ) -> XrayTextModelOutput:
        """The tower's output with the projected text embedding `(batch, projection_dim)` (fp32, not normalised) in
        `pooler_output`, as transformers 5's `CLIPModel.get_text_features`."""
        output = self(
            input_ids=input_ids, attention_mask=attention_mask, llm_pooled_output=llm_pooled_output, return_dict=True
        )
        output.pooler_output = output.text_embeds
        return output


@dataclass
class XrayMNTPOutput(ModelOutput):
    """
    Output of [`XrayLLM2CLIPTextForMNTP`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Cross-entropy of the masked tokens, each predicted from the previous position's output (fp32).
        logits (`torch.FloatTensor`):
            With `labels`: `(num_masked, vocab_size)`, only at the positions that predict a masked token (the LM
            head is not run elsewhere). Without: `(batch_size, sequence_length, vocab_size)`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class XrayLLM2CLIPTextForMNTP(XrayLLM2CLIPTextPreTrainedModel):
    """
    The bidirectional LLM with its LM head, for masked next-token prediction (LLM2Vec): input tokens are masked
    and token `i` is predicted from position `i - 1`'s output, as the LM head was trained to.
    Tied LLMs (SmolLM2, LLaMA-3.2) reuse the input embeddings as the head; untied ones keep `lm_head`, which
    `from_pretrained` and `from_llm` require to be in the checkpoint (a random head is refused).
    """

    # a text-tower checkpoint has the same `llm.*` weights plus the adapter and projection, unused here
    _keys_to_ignore_on_load_unexpected = [r"^adapter\.", r"^text_projection\."]
    # the loss is a sum over masked tokens divided by `num_items_in_batch` (correct under gradient accumulation)
    accepts_loss_kwargs = True
    _uses_lm_head = True

    def __init__(self, config: XrayLLM2CLIPTextConfig):
        super().__init__(config)
        if config.kind == "encoder":
            raise ValueError(f"MNTP trains decoder LLMs; llm_config is a {config.llm_config.model_type!r} encoder")
        self._build_llm(config)
        self.post_init()
        self.freeze_llm(config.freeze_llm)

    def _lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return nn.functional.linear(hidden, self.llm.get_input_embeddings().weight)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XrayMNTPOutput | tuple:
        attention_mask = check_attention_mask(input_ids, attention_mask)
        hidden = self.llm_hidden_states(input_ids, attention_mask)
        loss = None
        if labels is None:
            logits = self._lm_logits(hidden).float()
        else:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels shape {tuple(labels.shape)} differs from input_ids {tuple(input_ids.shape)}")
            target = labels[:, 1:]
            selected = target != -100
            if not bool(selected.any()):
                raise ValueError("labels mark no token to predict (all -100 after the first position)")
            logits = self._lm_logits(hidden[:, :-1][selected]).float()
            loss = fixed_cross_entropy(logits, target[selected], num_items_in_batch=num_items_in_batch)
        output = XrayMNTPOutput(loss=loss, logits=logits)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


__all__ = [
    "XrayLLM2CLIPTextPreTrainedModel",
    "XrayLLM2CLIPTextModel",
    "XrayLLM2CLIPTextForMNTP",
    "XrayLLM2CLIPAdapter",
    "XrayMNTPOutput",
]
