"""Write a `datasets.Dataset` with an image or video column as shards that `load_source` streams back.

Three layouts: Parquet shards (media bytes embedded), WebDataset tar shards (`<key>.<ext>` media plus
`<key>.json` with the other columns), and a folder of media files with `metadata.jsonl`. Sharding is what
lets ranks and DataLoader workers split a stream, so write at least ranks x workers shards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from typing import Any

import datasets
import numpy as np
import PIL.Image

from .sources import media_columns


@contextlib.contextmanager
def quiet_progress_bars():
    """Hide `datasets` progress bars inside the block (restoring the caller's setting)."""
    were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.utils.enable_progress_bars()


FORMATS = ("parquet", "webdataset", "folder")


def _media_bytes(record: dict) -> bytes:
    if record.get("bytes") is not None:
        return bytes(record["bytes"])
    if record.get("path"):
        with open(record["path"], "rb") as file:
            return file.read()
    raise ValueError(f"media record has neither bytes nor path: {record!r:.200}")


def _extension(record: dict, kind: str, data: bytes) -> str:
    path = record.get("path") or ""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext:
        return ext
    if kind == "video":
        return "mp4"
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return {"JPEG": "jpg"}.get(image.format, (image.format or "png").lower())
    except OSError:
        return "png"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _keys(dataset: datasets.Dataset, key_column: str | None) -> list[str]:
    if key_column is not None:
        keys = [str(k) for k in dataset[key_column]]
        if len(set(keys)) != len(keys):
            raise ValueError(f"key column {key_column!r} has duplicate values")
        bad = [k for k in keys if "." in k or "/" in k]
        if bad:
            raise ValueError(f"keys must not contain '.' or '/' (WebDataset splits names on them): {bad[:3]}")
        return keys
    return [f"{i:08d}" for i in range(len(dataset))]


def write_shards(
    dataset: datasets.Dataset,
    output_dir: str,
    format: str = "parquet",
    num_shards: int = 8,
    key_column: str | None = "id",
) -> list[str]:
    """Write `dataset` as `num_shards` shards under `output_dir`; returns the written paths.

    `key_column` names each WebDataset sample and folder file (defaults to `id` when the dataset has it).
    Folders get one `shard-XXXXX/` sub-folder per shard and a single `metadata.jsonl`; `folder_source` splits
    that back into shards.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    if not 1 <= num_shards <= len(dataset):
        raise ValueError(f"num_shards must be between 1 and len(dataset)={len(dataset)}, got {num_shards}")
    media = media_columns(dataset.features)
    if format != "parquet" and len(media) != 1:
        raise ValueError(f"{format} shards need exactly one image or video column, found {sorted(media)}")
    if key_column is not None and key_column not in dataset.column_names:
        key_column = None
    os.makedirs(output_dir, exist_ok=True)
    if format == "parquet":
        paths = []
        for index in range(num_shards):
            path = os.path.join(output_dir, f"shard-{index:05d}.parquet")
            # embed_external_files (default) puts path-only media bytes into the file
            with quiet_progress_bars():
                dataset.shard(num_shards, index, contiguous=True).to_parquet(path)
            paths.append(path)
        return paths
    ((column, kind),) = media.items()
    raw = dataset.cast_column(
        column, datasets.Image(decode=False) if kind == "image" else datasets.Video(decode=False)
    )
    keys = _keys(dataset, key_column)
    return (_write_webdataset if format == "webdataset" else _write_folder)(
        raw, column, kind, keys, output_dir, num_shards
    )


def _shard_bounds(n: int, num_shards: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, num_shards + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _write_webdataset(raw, column, kind, keys, output_dir, num_shards) -> list[str]:
    paths = []
    for index, (start, stop) in enumerate(_shard_bounds(len(raw), num_shards)):
        path = os.path.join(output_dir, f"shard-{index:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for row, key in zip(raw.select(range(start, stop)), keys[start:stop]):
                data = _media_bytes(row[column])
                meta = json.dumps({k: _jsonable(v) for k, v in row.items() if k != column}).encode()
                for name, payload in ((f"{key}.{_extension(row[column], kind, data)}", data), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def _write_folder(raw, column, kind, keys, output_dir, num_shards) -> list[str]:
    paths = []
    with open(os.path.join(output_dir, "metadata.jsonl"), "w") as metadata:
        for index, (start, stop) in enumerate(_shard_bounds(len(raw), num_shards)):
            folder = f"shard-{index:05d}"
            os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
            for row, key in zip(raw.select(range(start, stop)), keys[start:stop]):
                data = _media_bytes(row[column])
                file_name = f"{folder}/{key}.{_extension(row[column], kind, data)}"
                with open(os.path.join(output_dir, file_name), "wb") as file:
                    file.write(data)
                entry = {"file_name": file_name, **{k: _jsonable(v) for k, v in row.items() if k != column}}
                metadata.write(json.dumps(entry) + "\n")
                paths.append(os.path.join(output_dir, file_name))
    return paths


__all__ = ["FORMATS", "write_shards"]
