"""Losses of the recipe, one section per loss. All are computed in fp32, whatever the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
# Supervised SimCSE (LLM2Vec stage 2): captions of the same item are positives, the rest of the batch
# negatives (InfoNCE on cosine similarities).
# ---------------------------------------------------------------------------------------------------------


def simcse_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = 0.05,
    group_ids: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """
    InfoNCE between `anchors[i]` and `positives[i]` with in-batch negatives, on cosine similarity / temperature.

    Args:
        anchors, positives: `(batch, dim)` embeddings; row `i` of both comes from the same item.
        temperature: SimCSE's 0.05 by default.
        group_ids: optional `(batch,)` item ids; other rows of the same item are not used as negatives
            (two captions of one item in a batch are not a contradiction).
        symmetric: average the anchor->positive and positive->anchor directions.
    """
    if anchors.dim() != 2 or anchors.shape != positives.shape:
        raise ValueError(
            f"anchors and positives must both be (batch, dim), got {tuple(anchors.shape)} and {tuple(positives.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = anchors.shape[0]
    logits = F.normalize(anchors.float(), dim=-1) @ F.normalize(positives.float(), dim=-1).T / temperature
    if group_ids is not None:
        if group_ids.shape != (batch,):
            raise ValueError(f"group_ids must have shape ({batch},), got {tuple(group_ids.shape)}")
        same = group_ids.view(-1, 1) == group_ids.view(1, -1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same.to(logits.device), float("-inf"))
    targets = torch.arange(batch, device=logits.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, targets)) / 2
    return loss


__all__ = ["simcse_loss"]
