"""Losses of the recipe, one `nn.Module` (or function, for per-sample losses) per objective, open_clip's shape:
`forward(..., output_dict=False)` returns the loss, or named `*_loss` terms with `output_dict=True`. All math is in
fp32 (fp64 stays fp64), whatever the input dtype.

Losses that couple the batch (contrastive, SLIP, siamese) handle distribution themselves, as open_clip's `ClipLoss`:
features of the other ranks are gathered (with gradients by default) and each rank computes the loss of its own
rows against all columns (`local_loss`).

Gradient scaling rule under DDP (the known pitfall "gathering with gradients plus a global loss scales gradients by
world size"): with `gather_with_grad=True`, the gather's backward sums every rank's gradient into the rank that owns
the rows, so the gradient a rank sees for its own features is `world_size` x the single-process gradient of the
global loss. DDP's gradient *mean* divides that factor out again: the synchronised parameter gradients equal the
single-process gradients on the concatenated batch, with `local_loss` True or False (tested in 2 processes). Do not
multiply the loss by `world_size` (as code written for a no-grad gather does), and do not reduce with a gradient
*sum*. With `gather_with_grad=False` the result is not the global gradient: with `local_loss=False` it is the
global gradient / `world_size`; with `local_loss=True` the terms where a rank's features are other ranks' negatives
are lost. With unequal batch sizes per rank the local loss is `sum(local row losses) * world_size / global rows`
(the local mean when sizes are equal), so the rule still holds and the ranks' losses average to the global loss.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

HASHTAG_LOSSES = ("softmax", "bce")


def fp32_loss(function):
    """Run a loss with autocast off, so its matrix products and reductions are fp32 also inside a bf16/fp16
    autocast region (the inputs are cast to fp32 by the loss itself)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device, enabled=False):
            return function(*args, **kwargs)

    return wrapper


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


# ---- Shared pieces: ranks, gathering rows across ranks, InfoNCE rows with excluded columns.
def resolve_ranks(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """`(rank, world_size)`: the given values, else torch.distributed's when initialised, else `(0, 1)`."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised and world_size > 1 else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size > 1 and not initialised:
        raise ValueError(f"world_size={world_size} needs an initialised torch.distributed process group")
    return rank, world_size


def _all_gather_with_grad(tensor: torch.Tensor) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # deprecated in favour of a private module; same autograd semantics
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*", category=FutureWarning)
        import torch.distributed.nn.functional as dist_nn

        return list(dist_nn.all_gather(tensor))


def gather_rows(
    tensors: Sequence[torch.Tensor | None], rank: int, world_size: int, gather_with_grad: bool = True
) -> tuple[list[torch.Tensor | None], list[int]]:
    """Concatenate each tensor's rows over all ranks, in rank order; returns them and every rank's row count.

    Float tensors are gathered with gradients (`torch.distributed.nn.functional.all_gather`) if `gather_with_grad`;
    otherwise, and always for integer/bool tensors, with a plain `all_gather`, the local rows put back at position
    `rank` so their gradient still flows (open_clip's `gather_features`, also in local-loss mode). Ranks may hold
    different row counts (the rows are padded for the collective); `None` entries stay `None`.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        raise ValueError("gather_rows needs at least one tensor")
    rows = present[0].shape[0]
    if any(t.shape[0] != rows for t in present):
        raise ValueError(f"tensors to gather must share their row count, got {[tuple(t.shape) for t in present]}")
    if world_size == 1:
        return list(tensors), [rows]
    count = torch.tensor([rows], dtype=torch.long, device=present[0].device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    gathered: list[torch.Tensor | None] = []
    for tensor in tensors:
        if tensor is None or longest == 0:
            gathered.append(tensor)
            continue
        padded = tensor if rows == longest else torch.cat([tensor, tensor.new_zeros(longest - rows, *tensor.shape[1:])])
        if gather_with_grad and tensor.is_floating_point():
            parts = _all_gather_with_grad(padded)
        else:
            send = padded.to(torch.uint8) if padded.dtype == torch.bool else padded.contiguous()
            parts = [torch.empty_like(send) for _ in range(world_size)]
            dist.all_gather(parts, send)
            parts = [p.to(padded.dtype) for p in parts]
            parts[rank] = padded
        gathered.append(torch.cat([part[:size] for part, size in zip(parts, sizes)]))
    return gathered, sizes


def same_group_mask(row_groups: torch.Tensor, column_groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(rows, columns)` True where a column is another item of the row's group (not its positive `labels[row]`):
    such columns are left out of the row's softmax instead of being used as negatives."""
    mask = row_groups.view(-1, 1) == column_groups.view(1, -1)
    mask[torch.arange(labels.shape[0], device=mask.device), labels.to(mask.device)] = False
    return mask


def info_nce_rows(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row cross-entropy `(rows,)` of `logits` against `labels`; `exclude` (bool, like `logits`) drops columns
    from a row's softmax. Label smoothing spreads its mass over the row's remaining columns only (`F.cross_entropy`'s
    definition when nothing is excluded), so an excluded column never receives target mass."""
    if exclude is None:
        return F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    log_probs = logits.masked_fill(exclude, float("-inf")).log_softmax(dim=-1)
    nll = -log_probs.gather(1, labels.view(-1, 1)).squeeze(1)
    if not label_smoothing:
        return nll
    kept = (~exclude).sum(dim=-1)
    smooth = -log_probs.masked_fill(exclude, 0.0).sum(dim=-1) / kept
    return (1.0 - label_smoothing) * nll + label_smoothing * smooth


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must both be (batch, dim), got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_rows(name: str, value: torch.Tensor | None, rows: int) -> None:
    if value is not None and value.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), got {tuple(value.shape)}")


def _scalar(name: str, value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, device=like.device)
    if value.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
    return _fp32(value.reshape(()))


def _local_reduce(row_loss_sum: torch.Tensor, total_rows: int, world_size: int, local_loss: bool) -> torch.Tensor:
    """Sum of row losses -> this rank's loss: the global mean, scaled so DDP's gradient mean is exact."""
    if total_rows == 0:
        return row_loss_sum * 0.0
    return row_loss_sum * (world_size if local_loss else 1) / total_rows


# ---- Contrastive (CLIP, paper 4.2.3): symmetric InfoNCE on image-text logits.
class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE of CLIP: `(CE(logits_per_image) + CE(logits_per_text)) / 2`, logits
    `logit_scale * image @ text.T (+ logit_bias)` on L2-normalised features; `logit_scale` is the already
    exponentiated scale (a tensor, so it learns).

    Distributed (see the module docstring for the gradient rule): `local_loss` computes this rank's rows against
    the gathered columns, labels offset by the rows of lower ranks; otherwise every rank computes the full global
    logits. `rank` / `world_size` default to torch.distributed's, read at call time. `group_ids` `(batch,)` marks
    rows of one item (e.g. several captions of one image): they are gathered with the features and are not each
    other's negatives. Ground-truth labels are cached per (device, rows, offset), as open_clip does.
    """

    def __init__(
        self,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        label_smoothing: float = 0.0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        _check_smoothing(label_smoothing)
        self.local_loss, self.gather_with_grad, self.label_smoothing = local_loss, gather_with_grad, label_smoothing
        self.rank, self.world_size = rank, world_size
        self._labels: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def ground_truth(self, device: torch.device, rows: int, offset: int) -> torch.Tensor:
        """`arange(rows) + offset` on `device`, cached."""
        key = (device, rows, offset)
        if key not in self._labels:
            if len(self._labels) >= 16:  # uneven last batches: keep the cache small
                self._labels.clear()
            self._labels[key] = torch.arange(offset, offset + rows, device=device, dtype=torch.long)
        return self._labels[key]

    @fp32_loss
    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        output_dict: bool = False,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        _check_pair("image_features", image_features, "text_features", text_features)
        rows = image_features.shape[0]
        _check_rows("group_ids", group_ids, rows)
        scale = _scalar("logit_scale", logit_scale, image_features)
        bias = None if logit_bias is None else _scalar("logit_bias", logit_bias, image_features)
        rank, world_size = resolve_ranks(self.rank, self.world_size)
        image, text = _fp32(image_features), _fp32(text_features)
        group_ids = None if group_ids is None else group_ids.to(image.device)
        (all_image, all_text, all_groups), sizes = gather_rows(
            [image, text, group_ids], rank, world_size, self.gather_with_grad
        )
        total = sum(sizes)
        if self.local_loss or world_size == 1:
            labels = self.ground_truth(image.device, rows, sum(sizes[:rank]))
            per_image, per_text = scale * image @ all_text.T, scale * text @ all_image.T
            exclude = None if group_ids is None else same_group_mask(group_ids, all_groups, labels)
        else:
            labels = self.ground_truth(image.device, total, 0)
            per_image = scale * all_image @ all_text.T
            per_text = per_image.T
            exclude = None if group_ids is None else same_group_mask(all_groups, all_groups, labels)
        if bias is not None:
            per_image, per_text = per_image + bias, per_text + bias
        both = info_nce_rows(per_image, labels, self.label_smoothing, exclude).sum()
        both = both + info_nce_rows(per_text, labels, self.label_smoothing, exclude).sum()
        loss = _local_reduce(both / 2, total, world_size, self.local_loss)
        return {"contrastive_loss": loss} if output_dict else loss


# ---- SLIP (paper 4.2.4): SimCLR's NT-Xent between two views (two augmentations, or two frames of a clip).
class SLIPLoss(nn.Module):
    """SimCLR's NT-Xent as SLIP uses it: the `2N` L2-normalised embeddings of two views are each other's positives
    and every other embedding of the (global) batch is a negative; self-similarity is excluded; cosine / `temperature`
    (SLIP: 0.1). Takes the projection MLP's outputs (the MLP is a model part). Distributed like
    [`ContrastiveLoss`]: this rank's `2n` rows against all `2N` gathered columns."""

    def __init__(
        self,
        temperature: float = 0.1,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.local_loss, self.gather_with_grad = temperature, local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    @fp32_loss
    def forward(
        self, view_1_features: torch.Tensor, view_2_features: torch.Tensor, output_dict: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        _check_pair("view_1_features", view_1_features, "view_2_features", view_2_features)
        rank, world_size = resolve_ranks(self.rank, self.world_size)
        z1, z2 = F.normalize(_fp32(view_1_features), dim=-1), F.normalize(_fp32(view_2_features), dim=-1)
        (all_1, all_2), sizes = gather_rows([z1, z2], rank, world_size, self.gather_with_grad)
        total, rows, device = sum(sizes), z1.shape[0], z1.device
        columns = torch.cat([all_1, all_2])  # view-1 rows of every rank, then view-2 rows
        if self.local_loss or world_size == 1:
            own = torch.arange(rows, device=device) + sum(sizes[:rank])
            queries = torch.cat([z1, z2])
        else:
            own = torch.arange(total, device=device)
            queries = columns
        itself = torch.cat([own, own + total])
        labels = torch.cat([own + total, own])
        logits = queries @ columns.T / self.temperature
        exclude = torch.zeros_like(logits, dtype=torch.bool)
        exclude[torch.arange(itself.shape[0], device=device), itself] = True
        loss = _local_reduce(info_nce_rows(logits, labels, 0.0, exclude).sum() / 2, total, world_size, self.local_loss)
        return {"slip_loss": loss} if output_dict else loss


# ---- Denoising (paper 4.2.5): the clean visual embedding from the denoiser's noisy 0.1x bottleneck.
class DenoisingLoss(nn.Module):
    """Mean squared error between the denoiser's output and the clean embedding: the mean over the batch of the
    squared L2 distance divided by the width (`F.mse_loss`), so `lambda_den = 1` weighs the same at every width.
    Fed the backbone's LayerNorm-ed pooled output (per-dimension scale ~1), the term is O(1) like the CLIP loss;
    fed L2-normalised embeddings it would be ~1/width as large.

    `detach_target=True` (default) stops the gradient at the target. The encoder still learns from the loss through
    the denoiser's *input* (an embedding that survives the noisy bottleneck is a more robust one), but the target is
    a fixed regression goal at each step. Without the stop-gradient the cheapest way to lower the loss is to move
    the embedding towards what an MLP through a noisy 0.1x bottleneck can reproduce: shrink it and collapse its
    dimensions, fighting the contrastive loss. The paper's point (4.2.5) is that the denoiser must follow a visual
    embedding space that keeps moving under the CLIP loss, not that it should pull that space towards itself.
    """

    def __init__(self, detach_target: bool = True):
        super().__init__()
        self.detach_target = detach_target

    @fp32_loss
    def forward(
        self, denoised: torch.Tensor, clean: torch.Tensor, output_dict: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if denoised.dim() < 2 or denoised.shape != clean.shape:
            raise ValueError(
                f"denoised and clean must both be (batch, ..., dim), got {tuple(denoised.shape)} and "
                f"{tuple(clean.shape)}"
            )
        target = clean.detach() if self.detach_target else clean
        loss = F.mse_loss(_fp32(denoised), _fp32(target))
        return {"denoise_loss": loss} if output_dict else loss


# ---- Siamese captions (paper 4.7.1): a caption term and an aggregated-hashtags term, 1:1.
class SiameseCaptionLoss(nn.Module):
    """Two contrastive terms on one batch: images against their captions (`caption_loss`) and against their
    aggregated hashtags read as text (`hashtag_loss`), weighted `caption_weight : hashtag_weight` (paper: 1:1).
    Returned terms are weighted, so they sum to the total. Items without hashtags (`hashtag_mask` False) are left
    out of the hashtag term as rows and columns, on every rank (ranks may then hold different row counts)."""

    def __init__(
        self,
        caption_weight: float = 1.0,
        hashtag_weight: float = 1.0,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        label_smoothing: float = 0.0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.caption_weight, self.hashtag_weight = caption_weight, hashtag_weight
        self.contrastive = ContrastiveLoss(local_loss, gather_with_grad, label_smoothing, rank, world_size)

    @fp32_loss
    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        hashtag_features: torch.Tensor | None,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        hashtag_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        terms = {"caption_loss": self.caption_weight * self.contrastive(
            image_features, text_features, logit_scale, logit_bias, group_ids=group_ids
        )}
        if hashtag_features is not None:
            terms["hashtag_loss"] = self.hashtag_weight * self.hashtag_term(
                image_features, hashtag_features, logit_scale, logit_bias, hashtag_mask, group_ids
            )
        return terms if output_dict else sum(terms.values())

    def hashtag_term(
        self,
        image_features: torch.Tensor,
        hashtag_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        hashtag_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The unweighted image-hashtag contrastive loss over the items that have hashtags."""
        _check_pair("image_features", image_features, "hashtag_features", hashtag_features)
        _check_rows("hashtag_mask", hashtag_mask, image_features.shape[0])
        if hashtag_mask is not None:
            keep = hashtag_mask.to(device=image_features.device, dtype=torch.bool)
            image_features, hashtag_features = image_features[keep], hashtag_features[keep]
            group_ids = None if group_ids is None else group_ids[keep]
        return self.contrastive(image_features, hashtag_features, logit_scale, logit_bias, group_ids=group_ids)


# ---- The CLIP stage's objective: every term above, called by keyword with the model's output fields.
class CLIPStageLoss(nn.Module):
    """The stage-3 objective: `contrastive_loss` (images vs captions), `hashtag_loss` (siamese, when
    `hashtag_embeds` is given), `slip_loss` (when both SimCLR embeddings are given) and `denoise_loss` (when
    `denoised_embeds` and `denoise_target` are given). Terms are returned weighted (weights 1, `hashtag_weight`,
    `slip_weight`, `lambda_den`), so `loss`, their sum, is the sum of the keys ending in `_loss` (open_clip's train
    loop convention). A term whose weight is 0 is skipped. Called by keyword with `XrayCLIPOutput`'s field names."""

    def __init__(
        self,
        label_smoothing: float = 0.0,
        hashtag_weight: float = 1.0,
        slip_weight: float = 1.0,
        slip_temperature: float = 0.1,
        lambda_den: float = 1.0,
        detach_denoise_target: bool = True,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.siamese = SiameseCaptionLoss(
            1.0, hashtag_weight, local_loss, gather_with_grad, label_smoothing, rank, world_size
        )
        self.slip = SLIPLoss(slip_temperature, local_loss, gather_with_grad, rank, world_size)
        self.denoise = DenoisingLoss(detach_denoise_target)
        self.slip_weight, self.lambda_den = slip_weight, lambda_den

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> CLIPStageLoss:
        """Weights and settings from an `XrayCLIPConfig`; `kwargs` (e.g. `rank`, `local_loss`) override."""
        settings = dict(
            label_smoothing=config.label_smoothing, hashtag_weight=config.hashtag_loss_weight,
            slip_weight=config.slip_weight, slip_temperature=config.slip_temperature, lambda_den=config.lambda_den,
        )
        return cls(**{**settings, **kwargs})

    @fp32_loss
    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        hashtag_embeds: torch.Tensor | None = None,
        hashtag_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        slip_embeds_1: torch.Tensor | None = None,
        slip_embeds_2: torch.Tensor | None = None,
        denoised_embeds: torch.Tensor | None = None,
        denoise_target: torch.Tensor | None = None,
        output_dict: bool = True,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        if (slip_embeds_1 is None) != (slip_embeds_2 is None):
            raise ValueError("slip_embeds_1 and slip_embeds_2 must be given together")
        if (denoised_embeds is None) != (denoise_target is None):
            raise ValueError("denoised_embeds and denoise_target must be given together")
        hashtags = hashtag_embeds if self.siamese.hashtag_weight else None
        siamese = self.siamese(image_embeds, text_embeds, hashtags, logit_scale, logit_bias, hashtag_mask=hashtag_mask,
                               group_ids=group_ids, output_dict=True)
        terms = {"contrastive_loss": siamese.pop("caption_loss"), **siamese}  # the caption term's weight is 1
        if slip_embeds_1 is not None and self.slip_weight:
            terms["slip_loss"] = self.slip_weight * self.slip(slip_embeds_1, slip_embeds_2)
        if denoised_embeds is not None and self.lambda_den:
            terms["denoise_loss"] = self.lambda_den * self.denoise(denoised_embeds, denoise_target)
        total = sum(terms.values())
        return {**terms, "loss": total} if output_dict else total


# ---- Distillation (paper 4.11): a frozen teacher's embeddings and image-text similarities taught to a student.
FEATURE_METRICS = ("cosine", "l2")


class FeatureDistillationLoss(nn.Module):
    """Student embeddings pulled onto the teacher's, both L2-normalised, row by row: `1 - cos` (`"cosine"`) or the
    squared L2 distance of the normalised vectors (`"l2"`, which is `2 - 2 cos`: same minimum, twice the gradient).
    The widths must match: a student of another width goes through a learned projection first (its model's
    `distill_projection`, or a CLIP student's `visual_projection` into the teacher's shared space). The teacher side
    is detached. Per-row; across ranks only the row count is shared, so that with uneven batches the ranks' losses
    still average to the global mean (as the batch-coupled losses do, see the module docstring)."""

    def __init__(self, metric: str = "cosine", rank: int | None = None, world_size: int | None = None):
        super().__init__()
        if metric not in FEATURE_METRICS:
            raise ValueError(f"metric must be one of {FEATURE_METRICS}, got {metric!r}")
        self.metric, self.rank, self.world_size = metric, rank, world_size

    @fp32_loss
    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor, output_dict: bool = False):
        _check_pair("student_features", student_features, "teacher_features", teacher_features)
        student = F.normalize(_fp32(student_features), dim=-1)
        teacher = F.normalize(_fp32(teacher_features).detach(), dim=-1)
        if self.metric == "cosine":
            per_row = 1.0 - (student * teacher).sum(dim=-1)
        else:
            per_row = (student - teacher).pow(2).sum(dim=-1)
        _, world_size = resolve_ranks(self.rank, self.world_size)
        total = per_row.new_tensor(float(per_row.shape[0]))
        if world_size > 1:
            dist.all_reduce(total)
        loss = _local_reduce(per_row.sum(), int(total), world_size, local_loss=True)
        return {"feature_distill_loss": loss} if output_dict else loss


class RelationalDistillationLoss(nn.Module):
    """KL(teacher || student) between the softmaxed image-text logits, per image over texts and per text over
    images, averaged (the distillation term of open_clip's `DistillClipLoss`, which uses the cross-entropy: the same
    gradient, plus the teacher's entropy, so ours is 0 when the student matches). Logits are `scale * a @ b.T` of
    L2-normalised features, each model with its own (exponentiated) scale, divided by `temperature`.

    Distributed like [`ContrastiveLoss`]: the columns are the gathered global batch (with gradients by default) and
    each rank computes its own rows (`local_loss`), so the matrix a student matches is the global one.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.local_loss, self.gather_with_grad = temperature, local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    @staticmethod
    def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(student_logits.log_softmax(dim=-1), teacher_logits.log_softmax(dim=-1), reduction="none",
                        log_target=True).sum(dim=-1)

    @fp32_loss
    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        teacher_image_features: torch.Tensor,
        teacher_text_features: torch.Tensor,
        teacher_logit_scale: torch.Tensor | float,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        _check_pair("image_features", image_features, "text_features", text_features)
        _check_pair("teacher_image_features", teacher_image_features, "teacher_text_features", teacher_text_features)
        if teacher_image_features.shape[0] != image_features.shape[0]:
            raise ValueError(f"teacher and student batches differ: {teacher_image_features.shape[0]} and "
                             f"{image_features.shape[0]} rows")
        scale = _scalar("logit_scale", logit_scale, image_features) / self.temperature
        teacher_scale = _scalar("teacher_logit_scale", teacher_logit_scale, image_features).detach() / self.temperature
        rank, world_size = resolve_ranks(self.rank, self.world_size)
        image, text = F.normalize(_fp32(image_features), dim=-1), F.normalize(_fp32(text_features), dim=-1)
        t_image = F.normalize(_fp32(teacher_image_features).detach(), dim=-1)
        t_text = F.normalize(_fp32(teacher_text_features).detach(), dim=-1)
        (all_image, all_text, all_t_image, all_t_text), sizes = gather_rows(
            [image, text, t_image, t_text], rank, world_size, self.gather_with_grad
        )
        if self.local_loss or world_size == 1:
            rows = (image, text, t_image, t_text)
        else:
            rows = (all_image, all_text, all_t_image, all_t_text)
        per_image = self._kl_rows(scale * rows[0] @ all_text.T, teacher_scale * rows[2] @ all_t_text.T)
        per_text = self._kl_rows(scale * rows[1] @ all_image.T, teacher_scale * rows[3] @ all_t_image.T)
        loss = _local_reduce((per_image.sum() + per_text.sum()) / 2, sum(sizes), world_size, self.local_loss)
        return {"relational_distill_loss": loss} if output_dict else loss


class DistillationLoss(nn.Module):
    """The distillation stage's objective, called by keyword: `feature_distill_loss` (student vs teacher image
    embeddings, weight `feature_weight`), and with texts `relational_distill_loss` (image-text similarity matrices,
    weight `relational_weight`) and `contrastive_loss` (the student's own CLIP loss on the true pairs, weight
    `contrastive_weight`). Terms are returned weighted, `loss` is their sum; a term of weight 0 is skipped."""

    def __init__(
        self,
        feature_weight: float = 1.0,
        relational_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        feature_metric: str = "cosine",
        temperature: float = 1.0,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        weights = {"feature_weight": feature_weight, "relational_weight": relational_weight,
                   "contrastive_weight": contrastive_weight}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"distillation weights must be >= 0 and not all 0, got {weights}")
        self.feature_weight, self.relational_weight, self.contrastive_weight = weights.values()
        self.feature = FeatureDistillationLoss(feature_metric, rank, world_size)
        self.relational = RelationalDistillationLoss(temperature, local_loss, gather_with_grad, rank, world_size)
        self.contrastive = ContrastiveLoss(local_loss, gather_with_grad, rank=rank, world_size=world_size)

    @fp32_loss
    def forward(
        self,
        image_embeds: torch.Tensor,
        teacher_image_embeds: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        logit_scale: torch.Tensor | float | None = None,
        teacher_text_embeds: torch.Tensor | None = None,
        teacher_logit_scale: torch.Tensor | float | None = None,
        group_ids: torch.Tensor | None = None,
        output_dict: bool = True,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.feature_weight:
            terms["feature_distill_loss"] = self.feature_weight * self.feature(image_embeds, teacher_image_embeds)
        needs_text = self.relational_weight or self.contrastive_weight
        if needs_text and (text_embeds is None or logit_scale is None):
            raise ValueError("relational and contrastive distillation need text_embeds and logit_scale (a CLIP "
                             "student); set relational_weight and contrastive_weight to 0 for an image-only teacher")
        if self.relational_weight:
            if teacher_text_embeds is None or teacher_logit_scale is None:
                raise ValueError("relational distillation needs the teacher's text_embeds and logit_scale")
            terms["relational_distill_loss"] = self.relational_weight * self.relational(
                image_embeds, text_embeds, logit_scale, teacher_image_embeds, teacher_text_embeds, teacher_logit_scale
            )
        if self.contrastive_weight:
            terms["contrastive_loss"] = self.contrastive_weight * self.contrastive(
                F.normalize(_fp32(image_embeds), dim=-1), F.normalize(_fp32(text_embeds), dim=-1), logit_scale,
                group_ids=group_ids,
            )
        total = sum(terms.values())
        return {**terms, "loss": total} if output_dict else total


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
    logits: torch.Tensor, labels: torch.Tensor, loss_type: str = "softmax", label_smoothing: float = 0.0
) -> torch.Tensor:
    """Multi-label hashtag loss (stage 2) in fp32.

    `"softmax"` (Mahajan et al. 2018): cross-entropy between softmax(logits) and the multi-hot target scaled to
    sum to one; samples without any label do not count. `"bce"`: per-label binary cross-entropy, averaged.
    `label_smoothing` mixes the target with the uniform distribution (softmax) or pulls 0/1 towards eps/2 (BCE).
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
    return (per_sample * has_label).sum() / has_label.sum().clamp_min(1.0)


__all__ = [
    "FEATURE_METRICS", "HASHTAG_LOSSES", "CLIPStageLoss", "ContrastiveLoss", "DenoisingLoss", "DistillationLoss",
    "FeatureDistillationLoss", "RelationalDistillationLoss", "SLIPLoss", "SiameseCaptionLoss",
    "gather_rows", "hashtag_loss", "info_nce_rows", "masked_patch_loss", "resolve_ranks", "same_group_mask",
    "simcse_loss",
]
