"""Batches from a `DecodedStream`: torchdata's `StatefulDataLoader`, equal steps on every rank, skip accounting.

`StreamingDataLoader` is what a trainer iterates. Its `state_dict()` is the whole input pipeline (every
worker's source position and shuffle block, the epoch, the step count), so a run interrupted at step k and
resumed produces the same samples as an uninterrupted one, however many times it is resumed.

Ranks read different shards, which can hold different numbers of samples; data-parallel training needs the
same number of steps on every rank. With `torch.distributed` initialised, every step all-reduces "I have a
batch" (MIN), so all ranks stop at the first rank that runs dry (`steps_per_epoch` also caps an epoch).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms.v2 import functional as F

from .streams import MAX_WORKERS, DecodedStream, check_num_shards

logger = logging.getLogger(__name__)


@dataclass
class EpochStats:
    """What one epoch of one rank produced: batches, samples, and skipped samples by reason."""

    epoch: int
    steps: int = 0
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class SampleCollator:
    """Collate decoded samples: stack tensors, tensorise numbers, keep everything else as lists.

    If `resolution` (a `transforms.Resolution`) is given, image/video tensors whose spatial size differs from
    it (the resolution changed while a worker was assembling a batch) are resized to it; otherwise differing
    shapes are an error.
    """

    def __init__(self, resolution: Any | None = None, tensor_keys: Sequence[str] | None = None) -> None:
        self.resolution = resolution
        self.tensor_keys = tensor_keys

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        keys = samples[0].keys()
        batch: dict[str, Any] = {}
        for key in keys:
            values = [sample[key] for sample in samples]
            first = values[0]
            if isinstance(first, torch.Tensor):
                batch[key] = self._stack(key, values)
            elif isinstance(first, bool) or not isinstance(first, (int, float)):
                batch[key] = values
            else:
                batch[key] = torch.tensor(values)
        return batch

    def _stack(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            if self.resolution is None or values[0].ndim < 3:
                raise ValueError(f"cannot stack {key!r}: samples have shapes {sorted(shapes)}")
            size = list(self.resolution.size)
            values = [v if list(v.shape[-2:]) == size else F.resize(v, size, antialias=True) for v in values]
        return torch.stack([v.as_subclass(torch.Tensor) for v in values])


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
            if isinstance(value, list):
                return len(value)
    return 0


def _sync_device() -> torch.device:
    config = str(dist.get_backend_config())
    if "cpu" in config or config in ("gloo", "mpi"):
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


class StreamingDataLoader:
    """Iterate batches of a `DecodedStream` with resumable state and equal steps on every rank.

    Args:
        stream: the decoded stream of this rank.
        batch_size: samples per batch (per rank).
        num_workers: DataLoader worker processes; the source needs at least ranks x workers shards.
        collate_fn: defaults to `SampleCollator()`.
        drop_last: drop each worker's last incomplete batch.
        steps_per_epoch: cap on batches per epoch (same on every rank).
        sync_ranks: all-reduce per step so ranks stop together; defaults to True when `torch.distributed` is
            initialised with more than one process.
        prefetch_factor, pin_memory, persistent_workers, multiprocessing_context: as for `DataLoader`.
    """

    def __init__(
        self,
        stream: DecodedStream,
        batch_size: int,
        num_workers: int = 0,
        collate_fn: Callable[[list[dict]], Any] | None = None,
        drop_last: bool = False,
        steps_per_epoch: int | None = None,
        sync_ranks: bool | None = None,
        prefetch_factor: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        multiprocessing_context: Any = None,
    ) -> None:
        if not isinstance(stream, DecodedStream):
            raise TypeError(f"stream must be a DecodedStream, got {type(stream).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        if num_workers > MAX_WORKERS:
            raise ValueError(f"num_workers must be <= {MAX_WORKERS} per rank, got {num_workers}")
        check_num_shards(stream.source, stream.world_size, num_workers, stream.allow_example_split, where="loader")
        self.stream = stream
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.steps_per_epoch = steps_per_epoch
        if sync_ranks is None:
            sync_ranks = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.sync_ranks = sync_ranks
        self._loader_kwargs = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "collate_fn": collate_fn or SampleCollator(),
            "drop_last": drop_last,
            "prefetch_factor": prefetch_factor if num_workers > 0 else None,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
            "multiprocessing_context": multiprocessing_context if num_workers > 0 else None,
        }
        self._loader = StatefulDataLoader(stream, **self._loader_kwargs)
        self._restored_epoch: int | None = None  # epoch of a loaded state that no iteration has consumed yet
        self._steps = 0
        self._samples = 0
        self.last_epoch_stats: EpochStats | None = None

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch`: the streams reshuffle and the step count restarts.

        A loaded state of another epoch that was never iterated is dropped: e.g. a checkpoint taken once a
        `MultimodalLoader` had used this loader's share of the epoch, so nothing read it before the next epoch
        (the `StatefulDataLoader` would otherwise resume it there, at the end of the old epoch's data)."""
        if self._restored_epoch is not None and epoch != self._restored_epoch:
            self._loader = StatefulDataLoader(self.stream, **self._loader_kwargs)
            self._restored_epoch = None
        self.stream.set_epoch(epoch)
        self._steps = 0
        self._samples = 0

    def __len__(self) -> int:
        if self.steps_per_epoch is None:
            raise TypeError("a streaming loader has no length unless steps_per_epoch is set")
        return self.steps_per_epoch

    def _all_ranks_have(self, have: bool) -> bool:
        if not self.sync_ranks:
            return have
        flag = torch.tensor([int(have)], dtype=torch.int32, device=_sync_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def skipped(self) -> Counter:
        """Samples skipped so far this epoch on this rank, by reason (summed over workers, including skips after
        a worker's last batch)."""
        return self.stream.skipped()

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self._loader)
        self._restored_epoch = None
        dropped = 0
        while self.steps_per_epoch is None or self._steps < self.steps_per_epoch:
            try:
                batch = next(iterator)
                have = True
            except StopIteration:
                batch, have = None, False
            if not self._all_ranks_have(have):
                dropped += int(have)
                break
            self._steps += 1
            self._samples += _batch_size(batch)
            yield batch
        stats = EpochStats(self.epoch, self._steps, self._samples, dict(self.skipped()))
        self.last_epoch_stats = stats
        logger.info(
            "epoch %d: %d steps, %d samples, skipped %s%s",
            stats.epoch,
            stats.steps,
            stats.samples,
            stats.skipped or "none",
            f", dropped {dropped} batch(es) to stay in step with other ranks" if dropped else "",
        )
        self._steps = 0
        self._samples = 0
        return stats

    def state_dict(self) -> dict:
        """The whole input pipeline: loader and worker states, epoch and steps taken in it."""
        return {
            "loader": self._loader.state_dict(),
            "epoch": self.epoch,
            "steps": self._steps,
            "samples": self._samples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`: the next batch is the one that followed it."""
        missing = {"loader", "epoch", "steps", "samples"} - set(state)
        if missing:
            raise ValueError(f"not a StreamingDataLoader state: missing {sorted(missing)}")
        self.stream.set_epoch(state["epoch"])
        self._loader.load_state_dict(state["loader"])
        self._restored_epoch = state["epoch"]
        self._steps = state["steps"]
        self._samples = state["samples"]


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """Steps per rank for `num_samples` split evenly over `world_size` ranks."""
    per_rank = num_samples // world_size
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


__all__ = ["EpochStats", "SampleCollator", "StreamingDataLoader", "steps_per_epoch"]
