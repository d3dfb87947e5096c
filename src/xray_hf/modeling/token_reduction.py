"""Token reduction for the XrayVisual backbone: EViT pruning (paper 3.2) and ToMe merging (paper 4.7).

Both act between a block's attention and its MLP, on the tokens after the protected prefix
(CLS and registers), which are never pruned or merged. Counts per layer depend only on the
token count, never on the data, so shapes stay static (compile- and FSDP-friendly).

Token sizes travel as a (B, N, 1) tensor, or None while every token has size 1. A size counts
ToMe merges only: ToMe sums the sizes of the tokens it merges, uses them for size-weighted
averages and adds log(size) to the attention logits (proportional attention). EViT does not
re-weight attention (as in its paper), so its fused token is a new token of size 1, in training
and at inference alike; the tokens it keeps keep their sizes. Hence turning ToMe on for serving
an EViT-trained model changes nothing until ToMe actually merges.

Precision: the choices (EViT's top-k by CLS attention, ToMe's most similar pairs) are discrete.
Under bf16 a near tie can flip, so another token is kept or merged than in fp32. Samples whose
choices agree stay as close to fp32 as the dense model (about 2% relative on the tiny test model);
a sample with a flip moves as much as swapping one token for another (there up to 20% for CLS
and 55% for mean pooling, yet still nearest its own fp32 embedding), and its patch tokens can
differ entirely. Compare pooled outputs across precisions, never token by token.
"""

from __future__ import annotations

import math

import torch


def evit_num_kept(num_tokens: int, keep_rate: float) -> int:
    """Tokens EViT keeps out of `num_tokens` reorganisable ones: ceil(keep_rate * num_tokens)."""
    return min(num_tokens, math.ceil(keep_rate * num_tokens))


def evit_token_count(num_tokens: int, keep_rate: float) -> int:
    """Reorganisable tokens after an EViT layer: the kept ones plus one fused token (none at keep_rate 1)."""
    kept = evit_num_kept(num_tokens, keep_rate)
    return num_tokens if kept >= num_tokens else kept + 1


def tome_num_merged(num_tokens: int, r: int) -> int:
    """Tokens ToMe merges away out of `num_tokens` mergeable ones: r, at most half of them."""
    return max(0, min(r, num_tokens // 2))


def size_bias(sizes: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention mask (B, 1, 1, N) of log token sizes: proportional attention."""
    if sizes is None:
        return None
    return sizes.log().to(dtype)[:, None, None, :, 0]


def evit_reorganize(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_prefix_tokens: int,
    keep_rate: float,
    sizes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep the patch tokens with the highest CLS attention and fuse the rest into one token.

    Args:
        hidden_states: (B, P + N, D), the first `num_prefix_tokens` (P) are CLS and registers.
        cls_attention: (B, N) attention of CLS to the N reorganisable tokens (head-averaged).
        keep_rate: fraction of the N tokens kept.
        sizes: optional (B, P + N, 1) token sizes.

    Returns: hidden states (B, P + k + 1, D) ordered [prefix, kept by decreasing attention, fused],
    and the matching sizes (None if `sizes` was None): kept tokens keep theirs, the fused token has size 1.
    """
    num_tokens = hidden_states.shape[1] - num_prefix_tokens
    kept = evit_num_kept(num_tokens, keep_rate)
    if kept >= num_tokens:
        return hidden_states, sizes
    prefix, tokens = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
    order = cls_attention.argsort(dim=1, descending=True)
    keep_idx, fuse_idx = order[:, :kept], order[:, kept:]
    dim = tokens.shape[-1]
    kept_tokens = tokens.gather(1, keep_idx[..., None].expand(-1, -1, dim))
    fuse_tokens = tokens.gather(1, fuse_idx[..., None].expand(-1, -1, dim))
    fuse_weights = cls_attention.gather(1, fuse_idx).to(tokens.dtype)
    # CUDA autocast runs `sum` in fp32: cast back, or the concatenation would turn the whole stream fp32
    fused = (fuse_tokens * fuse_weights[..., None]).sum(dim=1, keepdim=True).to(tokens.dtype)
    hidden_states = torch.cat([prefix, kept_tokens, fused], dim=1)
    if sizes is not None:
        token_sizes = sizes[:, num_prefix_tokens:]
        sizes = torch.cat(
            [
                sizes[:, :num_prefix_tokens],
                token_sizes.gather(1, keep_idx[..., None]),
                token_sizes.new_ones(token_sizes.shape[0], 1, 1),
            ],
            dim=1,
        )
    return hidden_states, sizes


def tome_merge(
    hidden_states: torch.Tensor,
    metric: torch.Tensor,
    num_prefix_tokens: int,
    r: int,
    sizes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe bipartite soft matching: merge the r most similar (even -> odd) token pairs, size-weighted.

    Args:
        hidden_states: (B, P + N, D); the first `num_prefix_tokens` are protected.
        metric: (B, P + N, C) similarity features (the head-averaged keys).
        r: tokens to remove (clipped to half of the N mergeable tokens).
        sizes: (B, P + N, 1) token sizes, None meaning all ones.

    Returns: hidden states (B, P + N - r, D) and their sizes (B, P + N - r, 1).
    """
    batch, total, dim = hidden_states.shape
    if sizes is None:
        sizes = hidden_states.new_ones(batch, total, 1, dtype=torch.float32)
    r = tome_num_merged(total - num_prefix_tokens, r)
    if r == 0:
        return hidden_states, sizes

    with torch.no_grad():
        metric = metric[:, num_prefix_tokens:].float()
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
        best_score, best_dst = scores.max(dim=-1)
        edge_order = best_score.argsort(dim=-1, descending=True)[..., None]
        unmerged_idx, src_idx = edge_order[:, r:], edge_order[:, :r]
        dst_idx = best_dst[..., None].gather(1, src_idx)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]
        width = x.shape[-1]
        unmerged = src.gather(1, unmerged_idx.expand(-1, -1, width))
        moved = src.gather(1, src_idx.expand(-1, -1, width))
        dst = dst.scatter_reduce(1, dst_idx.expand(-1, -1, width), moved, reduce="sum")
        return torch.cat([unmerged, dst], dim=1)

    prefix, tokens = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
    prefix_sizes, token_sizes = sizes[:, :num_prefix_tokens], sizes[:, num_prefix_tokens:]
    merged_sizes = merge(token_sizes)
    merged = merge(tokens * token_sizes.to(tokens.dtype)) / merged_sizes.to(tokens.dtype)
    return torch.cat([prefix, merged], dim=1), torch.cat([prefix_sizes, merged_sizes], dim=1)


__all__ = [
    "evit_num_kept",
    "evit_token_count",
    "evit_reorganize",
    "tome_num_merged",
    "tome_merge",
    "size_bias",
]
