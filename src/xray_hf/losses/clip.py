"""The CLIP stage's losses (paper 4.2.3-4.2.5, 4.7.1): contrastive, SLIP, denoising, siamese captions, and the
stage objective that weights them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import (
    BatchCoupledLoss,
    _check_pair,
    _check_rows,
    _check_smoothing,
    _fp32,
    _local_reduce,
    _scalar,
    check_temperature,
    fp32_loss,
    gather_rows,
    info_nce_rows,
    same_group_mask,
)


# ---- Contrastive (CLIP, paper 4.2.3): symmetric InfoNCE on image-text logits.
class ContrastiveLoss(BatchCoupledLoss):
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
        super().__init__(local_loss, gather_with_grad, rank, world_size)
        _check_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing
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
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        output_dict: bool = False,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        _check_pair("image_embeds", image_embeds, "text_embeds", text_embeds)
        rows = image_embeds.shape[0]
        _check_rows("group_ids", group_ids, rows)
        scale = _scalar("logit_scale", logit_scale, image_embeds)
        bias = None if logit_bias is None else _scalar("logit_bias", logit_bias, image_embeds)
        rank, world_size = self.ranks()
        image, text = _fp32(image_embeds), _fp32(text_embeds)
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
class SLIPLoss(BatchCoupledLoss):
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
        super().__init__(local_loss, gather_with_grad, rank, world_size)
        check_temperature(temperature)
        self.temperature = temperature

    @fp32_loss
    def forward(
        self, slip_embeds_1: torch.Tensor, slip_embeds_2: torch.Tensor, output_dict: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        _check_pair("slip_embeds_1", slip_embeds_1, "slip_embeds_2", slip_embeds_2)
        rank, world_size = self.ranks()
        z1, z2 = F.normalize(_fp32(slip_embeds_1), dim=-1), F.normalize(_fp32(slip_embeds_2), dim=-1)
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
    out of the hashtag term as rows and columns, on every rank (ranks may then hold different row counts).
    Each term has its own groups: `group_ids` (identical captions) for the caption term, `hashtag_group_ids`
    (identical hashtag texts, which are far more common: many items share "circle, left") for the hashtag term,
    so that two items with the same text are never each other's negatives."""

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
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        hashtag_embeds: torch.Tensor | None,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        hashtag_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        hashtag_group_ids: torch.Tensor | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        terms = {"caption_loss": self.caption_weight * self.contrastive(
            image_embeds, text_embeds, logit_scale, logit_bias, group_ids=group_ids
        )}
        if hashtag_embeds is not None:
            terms["hashtag_loss"] = self.hashtag_weight * self.hashtag_term(
                image_embeds, hashtag_embeds, logit_scale, logit_bias, hashtag_mask, hashtag_group_ids
            )
        return terms if output_dict else sum(terms.values())

    def hashtag_term(
        self,
        image_embeds: torch.Tensor,
        hashtag_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float | None = None,
        hashtag_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The unweighted image-hashtag contrastive loss over the items that have hashtags; `group_ids` here are
        the hashtag texts' groups."""
        _check_pair("image_embeds", image_embeds, "hashtag_embeds", hashtag_embeds)
        _check_rows("hashtag_mask", hashtag_mask, image_embeds.shape[0])
        if hashtag_mask is not None:
            keep = hashtag_mask.to(device=image_embeds.device, dtype=torch.bool)
            image_embeds, hashtag_embeds = image_embeds[keep], hashtag_embeds[keep]
            group_ids = None if group_ids is None else group_ids[keep]
        return self.contrastive(image_embeds, hashtag_embeds, logit_scale, logit_bias, group_ids=group_ids)


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
        hashtag_group_ids: torch.Tensor | None = None,
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
                               group_ids=group_ids, hashtag_group_ids=hashtag_group_ids, output_dict=True)
        terms = {"contrastive_loss": siamese.pop("caption_loss"), **siamese}  # the caption term's weight is 1
        if slip_embeds_1 is not None and self.slip_weight:
            terms["slip_loss"] = self.slip_weight * self.slip(slip_embeds_1, slip_embeds_2)
        if denoised_embeds is not None and self.lambda_den:
            terms["denoise_loss"] = self.lambda_den * self.denoise(denoised_embeds, denoise_target)
        total = sum(terms.values())
        return {**terms, "loss": total} if output_dict else total
