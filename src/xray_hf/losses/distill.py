"""Distillation losses (paper 4.11): feature distillation, relational (image-text similarity) distillation, and the
stage objective that weights them with the student's own contrastive loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .clip import ContrastiveLoss
from .distributed import (
    BatchCoupledLoss,
    _check_pair,
    _fp32,
    _local_reduce,
    _scalar,
    check_temperature,
    fp32_loss,
    gather_rows,
    resolve_ranks,
)

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
    def forward(self, image_embeds: torch.Tensor, teacher_image_embeds: torch.Tensor, output_dict: bool = False):
        _check_pair("image_embeds", image_embeds, "teacher_image_embeds", teacher_image_embeds)
        student = F.normalize(_fp32(image_embeds), dim=-1)
        teacher = F.normalize(_fp32(teacher_image_embeds).detach(), dim=-1)
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


class RelationalDistillationLoss(BatchCoupledLoss):
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
        super().__init__(local_loss, gather_with_grad, rank, world_size)
        check_temperature(temperature)
        self.temperature = temperature

    @staticmethod
    def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(student_logits.log_softmax(dim=-1), teacher_logits.log_softmax(dim=-1), reduction="none",
                        log_target=True).sum(dim=-1)

    @fp32_loss
    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        teacher_image_embeds: torch.Tensor,
        teacher_text_embeds: torch.Tensor,
        teacher_logit_scale: torch.Tensor | float,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        _check_pair("image_embeds", image_embeds, "text_embeds", text_embeds)
        _check_pair("teacher_image_embeds", teacher_image_embeds, "teacher_text_embeds", teacher_text_embeds)
        if teacher_image_embeds.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"teacher and student batches differ: {teacher_image_embeds.shape[0]} and "
                             f"{image_embeds.shape[0]} rows")
        scale = _scalar("logit_scale", logit_scale, image_embeds) / self.temperature
        teacher_scale = _scalar("teacher_logit_scale", teacher_logit_scale, image_embeds).detach() / self.temperature
        rank, world_size = self.ranks()
        image, text = F.normalize(_fp32(image_embeds), dim=-1), F.normalize(_fp32(text_embeds), dim=-1)
        t_image = F.normalize(_fp32(teacher_image_embeds).detach(), dim=-1)
        t_text = F.normalize(_fp32(teacher_text_embeds).detach(), dim=-1)
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
