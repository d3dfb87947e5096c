"""Tests for xray_hf.data.writers: shards in each layout stream back through load_source, including videos."""

from __future__ import annotations

import os
import tarfile

import datasets
import numpy as np
import pytest

from xray_hf.data import load_embedded
from xray_hf.data.decoding import VideoDecoder
from xray_hf.data.sources import load_source
from xray_hf.data.streams import DecodedStream
from xray_hf.data.writers import write_shards


@pytest.fixture(scope="module")
def clips() -> datasets.Dataset:
    return load_embedded("moving-shapes", "validation")


@pytest.mark.parametrize("layout", ["parquet", "webdataset", "folder"])
def test_video_shards_roundtrip(tmp_path, clips, layout):
    paths = write_shards(clips, str(tmp_path), format=layout, num_shards=3)
    assert paths and all(os.path.isfile(p) for p in paths)
    source = load_source(str(tmp_path), num_shards=3)
    column = "mp4" if layout == "webdataset" else "video"
    key = "__key__" if layout == "webdataset" else "id"
    samples = list(DecodedStream(source, VideoDecoder(column=column, num_frames=4, stride=4), shuffle=False))
    assert sorted(s[key] for s in samples) == sorted(clips["id"])
    assert all(s["pixel_values"].shape == (4, 3, 64, 64) for s in samples)


def test_webdataset_layout(tmp_path, clips):
    (path,) = write_shards(clips.select(range(2)), str(tmp_path), format="webdataset", num_shards=1)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    first = clips[0]["id"]
    assert names[:2] == [f"{first}.mp4", f"{first}.json"]


def test_write_shards_errors(tmp_path, clips):
    with pytest.raises(ValueError, match="format"):
        write_shards(clips, str(tmp_path), format="zip")
    with pytest.raises(ValueError, match="num_shards"):
        write_shards(clips, str(tmp_path), num_shards=len(clips) + 1)
    dotted = clips.select(range(2)).map(lambda row, i: {"id": f"a.{i}"}, with_indices=True)
    with pytest.raises(ValueError, match="must not contain"):
        write_shards(dotted, str(tmp_path), format="webdataset", num_shards=1)
    two_media = datasets.Dataset.from_dict(
        {"a": [np.zeros((2, 2, 3), np.uint8)], "b": [np.zeros((2, 2, 3), np.uint8)]},
        features=datasets.Features({"a": datasets.Image(), "b": datasets.Image()}),
    )
    with pytest.raises(ValueError, match="exactly one image or video column"):
        write_shards(two_media, str(tmp_path), format="folder", num_shards=1)
