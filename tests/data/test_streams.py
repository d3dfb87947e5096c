"""Tests for xray_hf.data.streams: bad samples are counted and skipped, good ones arrive once; shard counts are
checked; shuffling is seeded; a stream resumes exactly from its state."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from xray_hf.data.decoding import ImageDecoder, VideoDecoder
from xray_hf.data.sources import load_source
from xray_hf.data.streams import DecodedStream, ShardCountError, check_num_shards


def _ids(stream, key="id"):
    return [sample[key] for sample in stream]


def test_corrupt_images_are_counted_and_skipped(corrupt_image_folder, caplog):
    folder, good, expected = corrupt_image_folder
    stream = DecodedStream(load_source(folder, num_shards=3), ImageDecoder(), shuffle=True, shuffle_buffer=4)
    with caplog.at_level(logging.WARNING, logger="xray_hf.data.streams"):
        ids = _ids(stream)
    assert sorted(ids) == sorted(good)  # every good image exactly once
    assert dict(stream.state_dict()["skipped"]) == expected
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert all(reason in logged for reason in expected)  # each reason is logged (once per worker)


def test_corrupt_videos_are_counted_and_skipped(corrupt_video_folder):
    folder, good, expected = corrupt_video_folder
    decoder = VideoDecoder(num_frames=4, stride=2, short_side=32)
    stream = DecodedStream(load_source(folder, num_shards=3), decoder, shuffle_buffer=3)
    samples = list(stream)
    assert sorted(s["id"] for s in samples) == sorted(good)
    assert dict(stream.state_dict()["skipped"]) == expected
    assert all(s["pixel_values"].shape[:2] == (4, 3) and min(s["pixel_values"].shape[-2:]) == 32 for s in samples)


def test_corrupt_samples_with_workers(corrupt_image_folder):
    from xray_hf.data.loader import StreamingDataLoader

    folder, good, expected = corrupt_image_folder
    stream = DecodedStream(load_source(folder, num_shards=4), ImageDecoder(), shuffle_buffer=3)
    loader = StreamingDataLoader(stream, batch_size=2, num_workers=2)
    ids = [i for batch in loader for i in batch["id"]]
    assert sorted(ids) == sorted(good)
    assert dict(loader.last_epoch_stats.skipped) == expected
    assert loader.last_epoch_stats.samples == len(good)


def test_too_many_skips_means_a_bug(tmp_path):
    rows = "".join(f'{{"file_name": "gone-{i}.png"}}\n' for i in range(80))
    (tmp_path / "metadata.jsonl").write_text(rows)
    stream = DecodedStream(load_source(str(tmp_path)), ImageDecoder(), max_skip_fraction=0.5)
    with pytest.raises(RuntimeError, match="max_skip_fraction"):
        list(stream)


def test_shard_count_check(make_parquet_shards):
    source = load_source(make_parquet_shards(3, 2))
    assert check_num_shards(source, world_size=1, num_workers=3)
    with pytest.raises(ShardCountError, match="3 shards but 2 ranks x 2 workers"):
        check_num_shards(source, world_size=2, num_workers=2)
    assert check_num_shards(source, world_size=2, num_workers=2, allow_example_split=True) is False
    with pytest.raises(ShardCountError):
        DecodedStream(source, ImageDecoder(), rank=0, world_size=4)


def test_shard_count_checked_after_transforms(make_parquet_shards):
    # a transform that shrinks the shard count is caught when the stream is built, not by idle workers
    source = load_source(make_parquet_shards(4, 2))
    DecodedStream(source, ImageDecoder(), world_size=2)
    with pytest.raises(ShardCountError, match="source: the dataset has 1 shards"):
        DecodedStream(source.shard(num_shards=4, index=0), ImageDecoder(), world_size=2)


def test_decoder_column_must_exist(make_parquet_shards):
    with pytest.raises(ValueError, match="column 'video'"):
        DecodedStream(load_source(make_parquet_shards(2, 2)), VideoDecoder())


def test_shuffle_is_seeded_and_changes_with_epoch(make_parquet_shards):
    source = load_source(make_parquet_shards(4, 5))
    first = _ids(DecodedStream(source, ImageDecoder(), seed=3, shuffle_buffer=8))
    again = _ids(DecodedStream(source, ImageDecoder(), seed=3, shuffle_buffer=8))
    other_seed = _ids(DecodedStream(source, ImageDecoder(), seed=4, shuffle_buffer=8))
    stream = DecodedStream(source, ImageDecoder(), seed=3, shuffle_buffer=8)
    stream.set_epoch(1)
    next_epoch = _ids(stream)
    assert first == again
    assert first != other_seed and first != next_epoch
    assert sorted(first) == sorted(other_seed) == sorted(next_epoch)
    assert Counter(first).most_common(1)[0][1] == 1


def test_state_dict_resume_in_process(make_parquet_shards):
    source = load_source(make_parquet_shards(4, 5))
    full = list(DecodedStream(source, ImageDecoder(), seed=1, shuffle_buffer=6))
    stream = DecodedStream(source, ImageDecoder(), seed=1, shuffle_buffer=6)
    iterator = iter(stream)
    head = [next(iterator) for _ in range(7)]
    state = stream.state_dict()
    resumed = DecodedStream(source, ImageDecoder(), seed=1, shuffle_buffer=6)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert [s["id"] for s in head + tail] == [s["id"] for s in full]
    with pytest.raises(ValueError, match="not a DecodedStream state"):
        resumed.load_state_dict({"position": 3})
