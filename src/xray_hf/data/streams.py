"""Decoded streams: undecoded sources sharded per rank and worker, shuffled, decoded per sample, resumable.

`DecodedStream` turns a source from `xray_hf.data.sources.load_source` into a PyTorch iterable of decoded,
augmented samples:

- sharding: each (rank, DataLoader worker) pair reads its own shards, through
  `datasets.distributed.split_dataset_by_node(rank=rank * workers + worker, world_size=ranks * workers)`.
  The shard count is checked after every step that can change it, and fewer shards than ranks x workers is an
  error (idle workers and uneven epochs) unless `allow_example_split=True`, which reads every shard everywhere
  and keeps one example in ranks x workers.
- shuffling: shard order is shuffled per epoch by `datasets` (seeded); examples are shuffled in blocks of
  `shuffle_buffer` raw records with a NumPy generator keyed by (seed, epoch, stream, block). Unlike a rolling
  buffer, whose content is lost on resume, a block can be read again, so resuming is exact.
- decoding: inside a try per sample; a `SampleDecodeError` is counted by reason and skipped.
- resume: `state_dict()` holds the `datasets` source position at the start of the current block, the position
  inside the block, the epoch and the skip counts. torchdata's `StatefulDataLoader` collects it from every worker.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from .decoding import SKIP_REASONS, SampleDecodeError

logger = logging.getLogger(__name__)

MAX_WORKERS = 256  # DataLoader workers per rank (rows of the shared skip tally)


class ShardCountError(ValueError):
    """Fewer shards than ranks x workers: some workers would idle and ranks would see unequal data."""


# --------------------------------------------------------------------------------------------------- sharding


def check_num_shards(
    dataset: datasets.IterableDataset,
    world_size: int,
    num_workers: int,
    allow_example_split: bool = False,
    where: str = "",
) -> bool:
    """Check that `dataset` has at least `world_size * max(1, num_workers)` shards.

    Returns True when shard-level splitting applies, False when the caller opted into example-level splitting;
    otherwise raises `ShardCountError` saying how to fix it.
    """
    streams = world_size * max(1, num_workers)
    if dataset.num_shards >= streams:
        return True
    if allow_example_split:
        logger.warning(
            "%s%d shards for %d ranks x %d workers: splitting by example, so every stream reads every shard.",
            f"{where}: " if where else "",
            dataset.num_shards,
            world_size,
            max(1, num_workers),
        )
        return False
    raise ShardCountError(
        f"{where + ': ' if where else ''}the dataset has {dataset.num_shards} shards but {world_size} ranks x "
        f"{max(1, num_workers)} workers = {streams} streams need at least one shard each (otherwise workers idle "
        "and ranks see different amounts of data). Write more shards (e.g. `write_shards(..., num_shards=...)`), "
        "use fewer workers, or pass allow_example_split=True to split by example (every stream then reads all "
        "shards)."
    )


class _QuietShuffleBufferResume(logging.Filter):
    # Our shard-order shuffle uses a shuffle buffer of size 1, which holds nothing across a checkpoint, so the
    # `datasets` warning about losing buffer content on resume does not apply to it.
    def filter(self, record: logging.LogRecord) -> bool:
        return "state dict of a shuffle buffer" not in record.getMessage()


@contextlib.contextmanager
def _quiet_shuffle_buffer_resume():
    target = logging.getLogger("datasets.iterable_dataset")
    quiet = _QuietShuffleBufferResume()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


# --------------------------------------------------------------------------------------------------- stream


@contextlib.contextmanager
def _torch_threads(count: int):
    # one sample's tensors are small: more intra-op threads only contend with each other and with the model
    # (with num_workers=0 the stream runs in the training process, with the model's thread count)
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def _seeded_cpu_rng(seed: int):
    # torchvision v2 draws from the global CPU generator: seed it per sample and restore it afterwards.
    # (torch.manual_seed inside fork_rng cost ~50x more and also reseeded, without restoring, any GPU generator.)
    generator = torch.random.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


class DecodedStream(torch.utils.data.IterableDataset):
    """Decoded, shuffled, sharded samples from an undecoded streaming source, with exact `state_dict()`.

    Args:
        source: an undecoded `datasets.IterableDataset` (see `load_source`).
        decoder: `decoder(example, rng) -> sample dict`; raises `SampleDecodeError` for a bad sample (see
            `xray_hf.data.decoding.ImageDecoder` / `VideoDecoder`). Runs with the torch RNG seeded per sample,
            so augmentations are reproducible too.
        rank, world_size: this process among the data-parallel ranks.
        seed: shuffling and per-sample randomness.
        shuffle: shuffle shard order (per epoch) and examples (in blocks of `shuffle_buffer`).
        shuffle_buffer: raw records per shuffle block (memory: this many undecoded records per worker).
        allow_example_split: accept fewer shards than ranks x workers by splitting examples instead.
        max_skip_fraction: raise once more than this fraction of the samples seen by a worker are skipped
            (after 64 samples): a wrong column or codec is a bug, not bad data. `None` disables the check.
        decode_threads: torch intra-op threads while one sample is decoded and augmented.
    """

    def __init__(
        self,
        source: datasets.IterableDataset,
        decoder: Callable[[dict, np.random.Generator], dict],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        allow_example_split: bool = False,
        max_skip_fraction: float | None = 0.5,
        decode_threads: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(source, datasets.IterableDataset):
            raise TypeError(f"source must be a datasets.IterableDataset, got {type(source).__name__}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if max_skip_fraction is not None and not 0 < max_skip_fraction <= 1:
            raise ValueError(f"max_skip_fraction must be in (0, 1] or None, got {max_skip_fraction}")
        column = getattr(decoder, "column", None)
        if column is not None and source.column_names is not None and column not in source.column_names:
            raise ValueError(f"decoder reads column {column!r} but the source has {source.column_names}")
        self.decoder = decoder
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.allow_example_split = allow_example_split
        self.max_skip_fraction = max_skip_fraction
        if decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {decode_threads}")
        self.decode_threads = decode_threads
        check_num_shards(source, world_size, 1, allow_example_split, where="source")
        if shuffle:
            # shard order only: a buffer of one record keeps the `datasets` state exact
            source = source.shuffle(seed=seed, buffer_size=1, max_buffer_input_shards=1)
            check_num_shards(source, world_size, 1, allow_example_split, where="after shuffle")
        self.source = source
        # shared with DataLoader workers (also persistent ones), like `datasets` does for its epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # skip counts per worker, written by the worker itself: a worker's state reaches the main process only with
        # a batch, so skips after its last batch would otherwise be lost. Row: [epoch + 1 (0: empty), counts...]
        self._skip_tally = torch.zeros(MAX_WORKERS, 1 + len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        self._resume: dict | None = None
        self._state: dict | None = None

    @property
    def modality(self) -> str | None:
        return getattr(self.decoder, "modality", None)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (new shard order and shuffle); call before iterating, on every rank."""
        self._epoch.fill_(int(epoch))
        self._skip_tally.zero_()

    def skipped(self, epoch: int | None = None) -> Counter:
        """Samples skipped in `epoch` (default: the current one) by this rank's workers so far, by reason; every
        skip counts, also those after a worker's last batch."""
        epoch = self.epoch if epoch is None else epoch
        rows = self._skip_tally[self._skip_tally[:, 0] == epoch + 1, 1:].sum(dim=0).tolist()
        return Counter({reason: count for reason, count in zip(SKIP_REASONS, rows) if count})

    def _tally(self, worker_id: int, epoch: int, skipped: Counter) -> None:
        self._skip_tally[worker_id] = torch.tensor([epoch + 1] + [skipped.get(r, 0) for r in SKIP_REASONS])

    def node_dataset(self, worker_id: int, num_workers: int) -> datasets.IterableDataset:
        """The part of the source read by `worker_id` of `num_workers` on this rank."""
        workers = max(1, num_workers)
        by_shards = check_num_shards(self.source, self.world_size, workers, self.allow_example_split, where="stream")
        node = split_dataset_by_node(
            self.source,
            rank=self.rank * workers + worker_id,
            world_size=self.world_size * workers,
            strategy="shards" if by_shards else "examples",
        )
        if by_shards and node.num_shards < 1:
            raise ShardCountError(f"stream {self.rank * workers + worker_id} received no shard")
        return node

    # -- state
    def state_dict(self) -> dict:
        """Position of this worker (or of the main process with `num_workers=0`)."""
        if self._state is not None:
            return dict(self._state, skipped=dict(self._state["skipped"]))
        if self._resume is not None:
            return dict(self._resume)
        return {"epoch": self.epoch, "source": None, "block": 0, "offset": 0, "seen": 0, "skipped": {}, "stream": None}

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state` on the next iteration (consumed once)."""
        required = {"epoch", "source", "block", "offset", "seen", "skipped", "stream"}
        if not isinstance(state, dict) or not required <= set(state):
            raise ValueError(f"not a DecodedStream state: expected keys {sorted(required)}, got {state!r:.200}")
        self._resume = dict(state)
        self._state = None
        self.set_epoch(state["epoch"])

    # -- iteration
    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream_id = self.rank * num_workers + worker_id
        epoch = self.epoch
        resume, self._resume = self._resume, None
        if resume is not None and resume["stream"] is not None:
            if resume["stream"] != [stream_id, self.world_size * num_workers]:
                raise ValueError(
                    f"cannot resume stream {resume['stream'][0]} of {resume['stream'][1]} as stream {stream_id} of "
                    f"{self.world_size * num_workers}: keep the same ranks and workers when resuming"
                )
        if resume is not None and (resume["epoch"] != epoch or resume["stream"] is None):
            resume = None
        node = self.node_dataset(worker_id, num_workers)
        node.set_epoch(epoch)
        source_state = resume["source"] if resume else None
        block, offset = (resume["block"], resume["offset"]) if resume else (0, 0)
        seen = resume["seen"] if resume else 0
        skipped = Counter(resume["skipped"]) if resume else Counter()
        if source_state is not None:
            node.load_state_dict(source_state)
        rows = node.iter(batch_size=1)
        warned: set[str] = set(skipped)
        self._tally(worker_id, epoch, skipped)
        while True:
            with _quiet_shuffle_buffer_resume():
                records = [
                    {k: v[0] for k, v in batch.items()} for batch in itertools.islice(rows, self.shuffle_buffer)
                ]
            if not records:
                break
            next_source_state = node.state_dict()
            order = (
                np.random.default_rng(_seed(self.seed, epoch, stream_id, block)).permutation(len(records))
                if self.shuffle
                else np.arange(len(records))
            )
            for position in range(offset, len(records)):
                seen += 1
                self._state = {
                    "epoch": epoch,
                    "source": source_state,
                    "block": block,
                    "offset": position + 1,
                    "seen": seen,
                    "skipped": skipped,
                    "stream": [stream_id, self.world_size * num_workers],
                }
                sample_seed = _seed(self.seed, epoch, stream_id, block, position, 1)
                try:
                    with _seeded_cpu_rng(sample_seed), _torch_threads(self.decode_threads):
                        sample = self.decoder(records[order[position]], np.random.default_rng(sample_seed))
                except SampleDecodeError as error:
                    skipped[error.reason] += 1
                    self._tally(worker_id, epoch, skipped)
                    if error.reason not in warned:
                        warned.add(error.reason)
                        logger.warning("skipping a sample (stream %d): %s", stream_id, error)
                    else:
                        logger.debug("skipping a sample (stream %d): %s", stream_id, error)
                    self._check_skips(seen, skipped, stream_id)
                    continue
                yield sample
            source_state, block, offset = next_source_state, block + 1, 0
        if skipped:
            logger.info("stream %d, epoch %d: %d samples, skipped %s", stream_id, epoch, seen, dict(skipped))

    def _check_skips(self, seen: int, skipped: Counter, stream_id: int) -> None:
        total = sum(skipped.values())
        if self.max_skip_fraction is not None and seen >= 64 and total > self.max_skip_fraction * seen:
            raise RuntimeError(
                f"stream {stream_id} skipped {total} of {seen} samples ({dict(skipped)}), more than "
                f"max_skip_fraction={self.max_skip_fraction}: check the media column, codecs and file paths"
            )


__all__ = [
    "DecodedStream",
    "ShardCountError",
    "check_num_shards",
]
