"""The compressed-embedding loss (paper 6.3): a low-dimensional projection trained to keep the full embedding's
similarities, at every Matryoshka size."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..configuration.compression import XrayCompressionConfig
from .distributed import BatchCoupledLoss, _local_reduce, gather_rows


class SimilarityDistillationLoss(BatchCoupledLoss):
    """Train the projection to keep the full embedding's similarities (relational distillation from it), at every
    Matryoshka size: for each size `d` (weight `w_d`), the batch's cosine matrix of the first `d` compressed
    outputs (renormalised) is pulled to the full embeddings' cosine matrix by

    - `similarity_kl_loss`: KL(teacher || student) of each row's softmax over the *other* rows (open_clip's
      `DistillClipLoss` on similarity logits; it keeps the nearest neighbours in order). The logits are the cosines
      divided by `temperature` x the spread (std) of that row's teacher cosines, for both: embeddings often sit in
      a narrow cone (all cosines near one value), where a fixed temperature would see flat distributions;
    - `similarity_mse_loss`: mean squared difference of the off-diagonal cosines over the variance of the
      teacher's (the share of the similarity structure not kept; 1 = no better than a constant).

    The total `loss` is `kl_weight * sum_d w_d KL_d + mse_weight * sum_d w_d MSE_d` (sentence-transformers'
    `MatryoshkaLoss` sums its inner loss over the sizes the same way). Computed in fp32 with autocast off.

    The batch is the global one, as in [`ContrastiveLoss`]: both sides are gathered from every rank (the compressed
    outputs with gradients by default) and each rank computes its own rows against all columns (`local_loss`), so
    under DDP or FSDP2 the synchronised gradient is the one-process gradient of the concatenated batch.
    """

    def __init__(
        self,
        dims: Sequence[int] | Mapping[int, float],
        temperature: float = 0.2,
        kl_weight: float = 1.0,
        mse_weight: float = 1.0,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__(local_loss, gather_with_grad, rank, world_size)
        weights = dict(dims) if isinstance(dims, Mapping) else {int(d): 1.0 for d in dims}
        if not weights or not all(isinstance(d, int) and d > 0 for d in weights):
            raise ValueError(f"dims must be positive ints, got {list(weights)}")
        for name, value in (("temperature", temperature), ("kl_weight", kl_weight), ("mse_weight", mse_weight)):
            if not isinstance(value, (int, float)) or value < 0 or (name == "temperature" and value == 0):
                raise ValueError(f"{name} must be a number {'> 0' if name == 'temperature' else '>= 0'}, got {value!r}")
        self.weights = {d: float(weights[d]) for d in sorted(weights, reverse=True)}
        self.temperature, self.kl_weight, self.mse_weight = float(temperature), float(kl_weight), float(mse_weight)

    @classmethod
    def from_config(cls, config: XrayCompressionConfig | Mapping[str, Any], **kwargs: Any) -> SimilarityDistillationLoss:
        """The loss over the sizes (and Matryoshka weights) of a compression config."""
        return cls(XrayCompressionConfig.from_dict(config).dim_weights, **kwargs)

    def forward(
        self, compressed_embeds: torch.Tensor, embeds: torch.Tensor, output_dict: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """`compressed_embeds` (B, compressed_dim): the projection's outputs (raw or normalised: each size is
        renormalised); `embeds` (B, D): the full embeddings of the same items (the teacher; no gradient flows into
        it). B is this rank's batch; the similarities are over every rank's."""
        if compressed_embeds.ndim != 2 or embeds.ndim != 2 or compressed_embeds.shape[0] != embeds.shape[0]:
            raise ValueError(
                f"expected (B, d) compressed and (B, D) full embeddings, got {tuple(compressed_embeds.shape)} and "
                f"{tuple(embeds.shape)}"
            )
        if max(self.weights) > compressed_embeds.shape[1]:
            raise ValueError(f"dims {list(self.weights)} exceed the compressed width {compressed_embeds.shape[1]}")
        rank, world_size = self.ranks()
        (all_compressed, all_embeds), sizes = gather_rows(
            [compressed_embeds, embeds.detach()], rank, world_size, self.gather_with_grad
        )
        total = sum(sizes)
        if total < 3:
            raise ValueError("similarity distillation needs at least 3 embeddings per batch (a spread of similarities)")
        start = sum(sizes[:rank]) if self.local_loss else 0
        rows = sizes[rank] if self.local_loss else total
        with torch.autocast(compressed_embeds.device.type, enabled=False):
            teacher = F.normalize(all_embeds.float(), dim=-1)
            full_target = teacher @ teacher.T
            off_all = ~torch.eye(total, dtype=torch.bool, device=teacher.device)
            variance = full_target[off_all].var(unbiased=False).clamp_min(1e-12)  # over the global batch
            target = full_target[start : start + rows]  # (rows, total): this rank's rows against every column
            off = off_all[start : start + rows]
            others = target[off].view(rows, total - 1)  # each row without itself
            scale = self.temperature * others.std(-1, unbiased=False, keepdim=True).clamp_min(1e-6)  # per row
            log_p_teacher = F.log_softmax((target / scale).masked_fill(~off, -math.inf), dim=-1)
            p_teacher = log_p_teacher.exp()
            students = all_compressed[start : start + rows] if self.local_loss else all_compressed
            kl = mse = compressed_embeds.new_zeros((), dtype=torch.float32)
            for dim, weight in self.weights.items():
                columns = F.normalize(all_compressed[:, :dim].float(), dim=-1)
                similarity = F.normalize(students[:, :dim].float(), dim=-1) @ columns.T
                mse = mse + weight * (similarity - target)[off].pow(2).sum() / variance
                log_p_student = F.log_softmax((similarity / scale).masked_fill(~off, -math.inf), dim=-1)
                row_kl = (p_teacher * (log_p_teacher - log_p_student)).masked_fill(~off, 0.0).sum(-1)
                kl = kl + weight * row_kl.sum()
            terms = {
                "similarity_kl_loss": self.kl_weight * _local_reduce(kl, total, world_size, self.local_loss),
                "similarity_mse_loss": self.mse_weight * _local_reduce(mse, total * (total - 1), world_size,
                                                                       self.local_loss),
            }
        loss = terms["similarity_kl_loss"] + terms["similarity_mse_loss"]
        return {"loss": loss, **terms} if output_dict else loss
