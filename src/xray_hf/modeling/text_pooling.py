"""From token states to one text vector: padding-aware pooling and padding-independent positions.

Shared by both text towers. Everything is computed from the attention mask, never from token ids (SmolLM2's
pad token is its EOS token, so ids cannot tell padding from text).
"""

from __future__ import annotations

import torch


def check_attention_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The attention mask as a 0/1 long tensor of `input_ids`' shape (all ones when not given)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(input_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape {tuple(input_ids.shape)}"
        )
    attention_mask = attention_mask.long()
    if torch.compiler.is_compiling():  # value checks would be data-dependent branches: compiled and exported graphs
        return attention_mask  # (torch.compile, ONNX) trust the tokenizer's mask; xray_hf.export checks it at run time
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must contain only 0 and 1")
    if not bool(attention_mask.any(dim=1).all()):
        raise ValueError("every row of attention_mask needs at least one token (an empty caption cannot be embedded)")
    return attention_mask


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... counted over real tokens only, so left and right padding give the same positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def pool_tokens(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """
    Pool `(batch, seq, dim)` token states into `(batch, dim)` in fp32, ignoring padding.

    `mean`: mean over real tokens. `eos`: the last real token (wherever the padding is). `cls`: the first real
    token. `weighted_mean`: mean weighted by position 1..n among real tokens (SGPT), so later tokens, which have
    seen more, weigh more.
    """
    mask = attention_mask.to(device=hidden_states.device, dtype=torch.float32)
    states = hidden_states.float()
    if pooling == "mean":
        return (states * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    if pooling == "weighted_mean":
        weights = mask.cumsum(dim=1) * mask
        return (states * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)
    if pooling in ("eos", "cls"):
        seq_len = mask.shape[1]
        positions = torch.arange(seq_len, device=mask.device).expand_as(mask)
        if pooling == "eos":
            index = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=1)
        else:
            index = torch.where(mask.bool(), positions, torch.full_like(positions, seq_len)).amin(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), index]
    raise ValueError(f"unknown pooling {pooling!r}; expected 'mean', 'eos', 'cls' or 'weighted_mean'")


__all__ = ["check_attention_mask", "position_ids_from_attention_mask", "pool_tokens"]
