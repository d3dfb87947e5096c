"""Losses of the recipe (`clip`, `distill`, `compression`, `per_sample`; shared machinery in `distributed`), one `nn.Module` (or function, for per-sample losses) per objective, open_clip's shape:
`forward(..., output_dict=False)` returns the loss, or named `*_loss` terms with `output_dict=True`. All math is in
fp32 (fp64 stays fp64), whatever the input dtype.

Losses that couple the batch (contrastive, SLIP, siamese, relational and similarity distillation) handle
distribution themselves, as open_clip's `ClipLoss`: features of the other ranks are gathered (with gradients by
default) and each rank computes the loss of its own rows against all columns (`local_loss`).

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

from .clip import (
    CLIPStageLoss,
    ContrastiveLoss,
    DenoisingLoss,
    SiameseCaptionLoss,
    SLIPLoss,
)
from .compression import SimilarityDistillationLoss
from .distill import (
    FEATURE_METRICS,
    DistillationLoss,
    FeatureDistillationLoss,
    RelationalDistillationLoss,
)
from .distributed import (
    BatchCoupledLoss,
    fp32_loss,
    gather_rows,
    info_nce_rows,
    resolve_ranks,
    same_group_mask,
)
from .per_sample import HASHTAG_LOSSES, hashtag_loss, masked_patch_loss, simcse_loss

__all__ = [
    "FEATURE_METRICS", "HASHTAG_LOSSES", "BatchCoupledLoss", "CLIPStageLoss", "ContrastiveLoss", "DenoisingLoss",
    "DistillationLoss", "FeatureDistillationLoss", "RelationalDistillationLoss", "SLIPLoss", "SiameseCaptionLoss",
    "fp32_loss", "gather_rows", "hashtag_loss", "info_nce_rows", "masked_patch_loss", "resolve_ranks",
    "SimilarityDistillationLoss", "same_group_mask", "simcse_loss",
]
