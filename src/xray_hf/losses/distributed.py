"""What the losses share: fp32 under autocast, ranks, gathering rows across ranks (with gradients), InfoNCE rows
with excluded columns, input checks and the local reduction that keeps DDP's gradient mean exact."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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


class BatchCoupledLoss(nn.Module):
    """Base of the losses that couple the batch across ranks (contrastive, SLIP, relational distillation): whether
    each rank computes only its own rows (`local_loss`), whether the gather carries gradients, and the ranks, which
    default to torch.distributed's, read at call time (see the package docstring for the gradient rule)."""

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__()
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def ranks(self) -> tuple[int, int]:
        return resolve_ranks(self.rank, self.world_size)


def check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
