"""Losses of one batch at a time: LLM2Vec's supervised SimCSE (in-batch negatives, one process), MAE's masked patch
loss and the hashtag loss (stages 1 and 2; also importable from `modeling.mae` and `modeling.hashtag`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .distributed import _check_pair, _check_rows, _check_smoothing, _fp32, fp32_loss, info_nce_rows, same_group_mask

HASHTAG_LOSSES = ("softmax", "bce")


# ---- Supervised SimCSE (LLM2Vec stage 2): captions of one item are positives, the rest of the batch negatives.
@fp32_loss
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
    _check_pair("anchors", anchors, "positives", positives)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = anchors.shape[0]
    _check_rows("group_ids", group_ids, batch)
    logits = F.normalize(_fp32(anchors), dim=-1) @ F.normalize(_fp32(positives), dim=-1).T / temperature
    targets = torch.arange(batch, device=logits.device)
    exclude = None if group_ids is None else same_group_mask(group_ids, group_ids, targets).to(logits.device)
    loss = info_nce_rows(logits, targets, 0.0, exclude).mean()
    if symmetric:
        loss = (loss + info_nce_rows(logits.T, targets, 0.0, None if exclude is None else exclude.T).mean()) / 2
    return loss


# ---- Per-sample losses of stages 1 and 2 (also importable from `modeling.mae` and `modeling.hashtag`).
def masked_patch_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """MAE (stage 1): mean squared error over the masked patches (fp32), per-patch normalised targets if
    `norm_pix_loss`."""
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = (logits.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def hashtag_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_type: str = "softmax", label_smoothing: float = 0.0,
    world_size: int = 1,
) -> torch.Tensor:
    """Multi-label hashtag loss (stage 2) in fp32.

    `"softmax"` (Mahajan et al. 2018): cross-entropy between softmax(logits) and the multi-hot target scaled to
    sum to one; samples without any label do not count. `"bce"`: per-label binary cross-entropy, averaged.
    `label_smoothing` mixes the target with the uniform distribution (softmax) or pulls 0/1 towards eps/2 (BCE).

    With `world_size` > 1 (a DDP or FSDP2 step; collective) the softmax loss counts the labelled samples of every
    rank and scales this rank's sum by `world_size`: the ranks' losses then average to the loss of the global batch,
    and DDP's gradient mean is its gradient, also when the ranks hold different numbers of labelled samples (each
    rank's own mean would weight a sample by its rank's count).
    """
    if loss_type not in HASHTAG_LOSSES:
        raise ValueError(f"loss_type must be one of {HASHTAG_LOSSES}, got {loss_type!r}")
    _check_smoothing(label_smoothing)
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels must be multi-hot of shape {tuple(logits.shape)} (batch, num_labels), got {tuple(labels.shape)}"
        )
    logits, labels = logits.float(), labels.float()
    if loss_type == "bce":
        target = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, target)
    counts = labels.sum(dim=-1, keepdim=True)
    has_label = (counts[:, 0] > 0).float()
    target = labels / counts.clamp_min(1.0)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / labels.shape[-1]
    per_sample = -(target * logits.log_softmax(dim=-1)).sum(dim=-1)
    labelled = has_label.sum().detach()
    if world_size > 1:
        labelled = labelled.clone()
        dist.all_reduce(labelled)
    return (per_sample * has_label).sum() * world_size / labelled.clamp_min(1.0)
