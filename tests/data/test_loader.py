"""Tests for xray_hf.data.loader: sharding over ranks x workers, exact resume (twice), equal steps per rank."""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections import Counter

import numpy as np
import pytest
import torch

from xray_hf.data.decoding import ImageDecoder
from xray_hf.data.loader import SampleCollator, StreamingDataLoader, steps_per_epoch
from xray_hf.data.sources import load_source
from xray_hf.data.streams import DecodedStream, ShardCountError
from xray_hf.data.transforms import Resolution, TrainTransform


def _loader(source, rank=0, world_size=1, num_workers=0, batch_size=4, **stream_kwargs):
    stream_kwargs.setdefault("shuffle_buffer", 5)
    decoder = ImageDecoder(transform=TrainTransform(8, blur_p=0.5))
    stream = DecodedStream(source, decoder, rank=rank, world_size=world_size, seed=7, **stream_kwargs)
    return StreamingDataLoader(stream, batch_size=batch_size, num_workers=num_workers)


@pytest.mark.parametrize("allow_example_split", [False, True])
def test_two_ranks_two_workers_see_each_sample_once(make_parquet_shards, allow_example_split):
    source = load_source(make_parquet_shards(8, 6))
    per_rank, steps = [], []
    for rank in range(2):
        loader = _loader(source, rank, 2, num_workers=2, allow_example_split=allow_example_split)
        batches = list(loader)
        per_rank.append([i for batch in batches for i in batch["id"]])
        steps.append(len(batches))
        assert loader.last_epoch_stats.samples == len(per_rank[-1]) and loader.last_epoch_stats.skipped == {}
    everything = per_rank[0] + per_rank[1]
    assert len(everything) == 48 and Counter(everything).most_common(1)[0][1] == 1
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert steps[0] == steps[1] == 6  # 24 samples per rank in batches of 4 (2 workers x 3 full batches)


def test_too_few_shards_raise_unless_example_split(make_parquet_shards):
    source = load_source(make_parquet_shards(3, 4))
    stream = DecodedStream(source, ImageDecoder(), rank=0, world_size=1)
    with pytest.raises(ShardCountError, match=r"3 shards but 1 ranks x 4 workers"):
        StreamingDataLoader(stream, batch_size=2, num_workers=4)
    with pytest.raises(ShardCountError, match="2 ranks x 2 workers"):
        _loader(source, 0, 2, num_workers=2)
    ids = []
    for rank in range(2):
        ids += [i for b in _loader(source, rank, 2, num_workers=2, allow_example_split=True) for i in b["id"]]
    assert sorted(ids) == sorted(f"s{s}-{i}" for s in range(3) for i in range(4))


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("num_workers, epoch", [(0, 0), (2, 0), (2, 1)])
def test_resume_twice_at_random_steps_matches_uninterrupted_run(make_parquet_shards, num_workers, epoch):
    source = load_source(make_parquet_shards(4, 9))
    reference = _loader(source, num_workers=num_workers)
    reference.set_epoch(epoch)
    full = list(reference)
    total = len(full)  # 36 samples, 2 workers x 18 -> 5 batches each (last one of 2)
    rng = np.random.default_rng(100 * num_workers + epoch)
    first_stop, second_stop = sorted(rng.choice(np.arange(1, total - 1), size=2, replace=False).tolist())

    run = _loader(source, num_workers=num_workers)
    run.set_epoch(epoch)
    got = _take(iter(run), first_stop)
    state = run.state_dict()
    del run

    resumed = _loader(source, num_workers=num_workers)
    resumed.load_state_dict(state)
    got += _take(iter(resumed), second_stop - first_stop)
    state = resumed.state_dict()  # a state written by a resumed run: the 'second resume' case
    del resumed

    resumed_again = _loader(source, num_workers=num_workers)
    resumed_again.load_state_dict(state)
    got += list(resumed_again)

    assert [b["id"] for b in got] == [b["id"] for b in full]
    for mine, theirs in zip(got, full):  # augmentations are seeded per sample: pixels match too
        assert torch.equal(mine["pixel_values"], theirs["pixel_values"])
    assert resumed_again.last_epoch_stats.steps == total
    # the next epoch after a resumed one starts from the beginning of that epoch
    resumed_again.set_epoch(epoch + 1)
    assert sum(len(b["id"]) for b in resumed_again) == 36


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_saved_after_the_epochs_last_step_resumes_into_a_full_next_epoch(make_parquet_shards, num_workers):
    # a MultimodalLoader stops asking a loader once its share of the epoch is used, so a checkpoint can hold a
    # loader that has yielded its last step but never finished; the resumed run only reads it in the next epoch
    source = load_source(make_parquet_shards(4, 9))
    reference = _loader(source, num_workers=num_workers)
    reference.steps_per_epoch = 3
    list(reference)
    reference.set_epoch(1)
    next_epoch = [b["id"] for b in reference]

    run = _loader(source, num_workers=num_workers)
    run.steps_per_epoch = 3
    _take(iter(run), 3)
    state = run.state_dict()
    del run
    resumed = _loader(source, num_workers=num_workers)
    resumed.steps_per_epoch = 3
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert [b["id"] for b in resumed] == next_epoch and len(next_epoch) == 3


def test_steps_per_epoch_caps_and_len(make_parquet_shards):
    loader = _loader(load_source(make_parquet_shards(2, 10)), batch_size=3)
    loader.steps_per_epoch = 4
    assert len(list(loader)) == 4 == len(loader)
    assert steps_per_epoch(100, 8, world_size=3) == 4 and steps_per_epoch(100, 8, 3, drop_last=False) == 5


def test_collator_stacks_tensors_and_keeps_lists():
    samples = [
        {"pixel_values": torch.zeros(3, 4, 4), "id": "a", "label": 1, "hashtags": ["x", "y"], "score": 0.5},
        {"pixel_values": torch.ones(3, 4, 4), "id": "b", "label": 2, "hashtags": ["z"], "score": 1.5},
    ]
    batch = SampleCollator()(samples)
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["id"] == ["a", "b"]
    assert torch.equal(batch["label"], torch.tensor([1, 2])) and batch["hashtags"] == [["x", "y"], ["z"]]
    assert batch["score"].dtype == torch.float32
    samples[1]["pixel_values"] = torch.ones(3, 8, 8)
    with pytest.raises(ValueError, match="cannot stack"):
        SampleCollator()(samples)
    mixed = SampleCollator(resolution=Resolution(8))(samples)  # a batch straddling a resolution change
    assert mixed["pixel_values"].shape == (2, 3, 8, 8)


def _rank_steps(rank: int, folder: str, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        stream = DecodedStream(load_source(folder), ImageDecoder(), rank=rank, world_size=2, shuffle=False)
        loader = StreamingDataLoader(stream, batch_size=4)
        steps = [len(batch["id"]) for batch in loader]
        results.put((rank, len(steps), loader.sync_ranks))
    finally:
        dist.destroy_process_group()


def test_ranks_with_unequal_data_take_equal_steps(make_parquet_shards):
    # shards 0 and 2 (rank 0) hold 8 + 8 samples, shards 1 and 3 (rank 1) 8 + 2: without syncing, rank 0 would
    # take 4 steps and rank 1 3 (and DDP would hang waiting for the missing one)
    folder = make_parquet_shards(4, 8, name="uneven")
    os.remove(os.path.join(folder, "shard-00003.parquet"))
    small = make_parquet_shards(1, 2, name="uneven-small")
    os.replace(os.path.join(small, "shard-00000.parquet"), os.path.join(folder, "shard-00003.parquet"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")  # the children reuse this process's imports
    results = context.Queue()
    processes = [context.Process(target=_rank_steps, args=(r, folder, port, results)) for r in range(2)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=240)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    assert sorted(results.get(timeout=5) for _ in range(2)) == [(0, 3, True), (1, 3, True)]


def test_resume_with_persistent_workers_then_full_next_epoch(make_parquet_shards):
    # datasets#7447: with persistent workers a resumed epoch's state must not shorten the following epochs
    source = load_source(make_parquet_shards(4, 9))

    def make():
        stream = DecodedStream(source, ImageDecoder(), seed=7, shuffle_buffer=5)
        return StreamingDataLoader(stream, batch_size=4, num_workers=2, persistent_workers=True)

    reference = make()
    epochs = [[b["id"] for b in reference]]
    reference.set_epoch(1)
    epochs.append([b["id"] for b in reference])
    interrupted = make()
    iterator = iter(interrupted)
    got = [next(iterator)["id"] for _ in range(3)]
    state = interrupted.state_dict()
    del iterator, interrupted
    resumed = make()
    resumed.load_state_dict(state)
    got += [b["id"] for b in resumed]
    resumed.set_epoch(1)
    assert got == epochs[0] and [b["id"] for b in resumed] == epochs[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_skip_is_counted_also_after_a_workers_last_batch(num_workers):
    import io

    import datasets
    from PIL import Image

    from xray_hf.data.sources import undecoded

    def png_bytes(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    # two shards of 4 rows whose last row is corrupt: each worker yields one batch of 3, then skips one sample
    images = [{"bytes": png_bytes(i) if i not in (3, 7) else b"not an image", "path": None} for i in range(8)]
    table = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    source = undecoded(table.to_iterable_dataset(num_shards=2))
    stream = DecodedStream(source, ImageDecoder(transform=TrainTransform(8)), shuffle=False)
    loader = StreamingDataLoader(stream, batch_size=3, num_workers=num_workers, drop_last=True)
    assert sum(1 for _ in loader) == 2
    assert loader.last_epoch_stats.skipped == {"corrupt_image": 2}
    assert loader.skipped() == Counter(corrupt_image=2)
    loader.set_epoch(1)  # a new epoch starts counting afresh
    assert loader.skipped() == Counter()
