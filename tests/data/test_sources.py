"""Tests for xray_hf.data.sources: every layout (Parquet, WebDataset, folder, glob, file list) streams undecoded."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from xray_hf.data.decoding import ImageDecoder
from xray_hf.data.sources import folder_source, load_source, media_columns
from xray_hf.data.streams import DecodedStream
from xray_hf.data.writers import write_shards


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
