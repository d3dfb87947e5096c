"""Tests for xray_hf.data.sources: every layout streams undecoded; bad samples are counted, good ones arrive once."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from xray_hf.data.decoding import ImageDecoder, VideoDecoder
from xray_hf.data.sources import (
    DecodedStream,
    ShardCountError,
    check_num_shards,
    folder_source,
    load_source,
    media_columns,
)
from xray_hf.data.writers import write_shards


def _ids(stream, key="id"):
    return [sample[key] for sample in stream]


@pytest.fixture(scope="module")
def small_images() -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(24)]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.Value("int64"),
            "id": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "caption": [f"c{i}" for i in range(24)],
            "label": [i % 3 for i in range(24)],
            "id": [f"img{i:02d}" for i in range(24)],
        },
        features=features,
    )


@pytest.mark.parametrize("layout", ["parquet", "webdataset", "folder"])
def test_every_layout_streams_undecoded_and_roundtrips(tmp_path, small_images, layout):
    write_shards(small_images, str(tmp_path), format=layout, num_shards=4)
    source = load_source(str(tmp_path), num_shards=4)
    assert isinstance(source, datasets.IterableDataset) and source.num_shards == 4
    first = next(iter(source))
    media = "jpg" if layout == "webdataset" and "jpg" in first else ("png" if layout == "webdataset" else "image")
    assert set(first[media]) == {"bytes", "path"}  # undecoded record
    key = "__key__" if layout == "webdataset" else "id"
    stream = DecodedStream(source, ImageDecoder(column=media), shuffle=False)
    samples = list(stream)
    assert sorted(s[key] for s in samples) == list(small_images["id"])
    by_id = {s[key]: s for s in samples}
    for row in small_images.select(range(0, 24, 7)):
        expected = torch.from_numpy(np.array(row["image"].convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(by_id[row["id"]]["pixel_values"], expected)  # PNG is lossless
        meta = by_id[row["id"]]["json"] if layout == "webdataset" else by_id[row["id"]]
        assert meta["caption"] == row["caption"] and meta["label"] == row["label"]


def test_load_source_from_glob_and_file_list(make_parquet_shards):
    folder = make_parquet_shards(4, 3)
    by_glob = load_source(f"{folder}/*.parquet")
    by_list = load_source([f"{folder}/shard-00000.parquet", f"{folder}/shard-00001.parquet"])
    assert by_glob.num_shards == 4 and by_list.num_shards == 2
    assert media_columns(by_glob.features) == {"image": "image"}
    assert by_glob.features["image"].decode is False


def test_load_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_source(str(tmp_path / "nothing-*.tar"))
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="only .tar"):
        load_source([str(tmp_path / "a.tar"), str(tmp_path / "b.parquet")])
    with pytest.raises(FileNotFoundError, match="metadata"):
        folder_source(str(tmp_path))


def test_folder_source_rejects_mixed_media(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n{"file_name": "b.mp4"}\n')
    with pytest.raises(ValueError, match="separate folders"):
        folder_source(str(tmp_path))


def test_corrupt_images_are_counted_and_skipped(corrupt_image_folder, caplog):
    folder, good, expected = corrupt_image_folder
    stream = DecodedStream(load_source(folder, num_shards=3), ImageDecoder(), shuffle=True, shuffle_buffer=4)
    with caplog.at_level(logging.WARNING, logger="xray_hf.data.sources"):
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
