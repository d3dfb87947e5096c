"""Streaming sources: open images or videos as undecoded `datasets.IterableDataset`s.

`load_source` opens a folder of images or videos with a metadata file, WebDataset tar shards, Parquet shards, or
a Hub dataset id, always as a streaming `datasets.IterableDataset` whose media columns stay undecoded (records
`{"bytes", "path"}`), so decoding happens per sample in `xray_hf.data.streams.DecodedStream`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import datasets
import pyarrow as pa

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def media_columns(features: datasets.Features | None) -> dict[str, str]:
    """Columns holding images or videos, mapped to `"image"` or `"video"`."""
    found = {}
    for name, feature in (features or {}).items():
        if isinstance(feature, datasets.Image):
            found[name] = "image"
        elif isinstance(feature, datasets.Video):
            found[name] = "video"
    return found


def undecoded(dataset: datasets.IterableDataset) -> datasets.IterableDataset:
    """Cast every image/video column to `decode=False`, so records stay `{"bytes", "path"}` until we decode them."""
    for name, kind in media_columns(dataset.features).items():
        feature = datasets.Image(decode=False) if kind == "image" else datasets.Video(decode=False)
        dataset = dataset.cast_column(name, feature)
    return dataset


def _read_metadata(path: str) -> pa.Table:
    if path.endswith(".jsonl"):
        import pyarrow.json

        return pyarrow.json.read_json(path)
    if path.endswith(".csv"):
        import pyarrow.csv

        return pyarrow.csv.read_csv(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet

        return pyarrow.parquet.read_table(path)
    raise ValueError(f"metadata file must be .jsonl, .csv or .parquet, got {path!r}")


def folder_source(root: str, metadata: str | None = None, num_shards: int | None = None) -> datasets.IterableDataset:
    """Stream a folder of images or videos described by a metadata file.

    The metadata (`metadata.jsonl`, `.csv` or `.parquet`, as for `datasets`' imagefolder) has a `file_name`
    column relative to `root` plus any other columns (captions, hashtags, labels). The media column is named
    `image` or `video` after the file extensions. A row whose file is missing stays in the stream and is
    counted as `missing_file` when decoded. `num_shards` (default `min(rows, 64)`) contiguous shards let
    ranks and workers split the folder; `datasets`' own imagefolder streams a folder as a single shard.
    """
    if metadata is None:
        candidates = [os.path.join(root, name) for name in METADATA_FILES if os.path.isfile(os.path.join(root, name))]
        if not candidates:
            raise FileNotFoundError(f"no metadata file in {root!r}: expected one of {METADATA_FILES}")
        metadata = candidates[0]
    table = _read_metadata(metadata)
    if "file_name" not in table.column_names:
        raise ValueError(f"metadata {metadata!r} needs a 'file_name' column, has {table.column_names}")
    if table.num_rows == 0:
        raise ValueError(f"metadata {metadata!r} has no rows")
    names = table.column("file_name").to_pylist()
    extensions = {os.path.splitext(str(name))[1].lower() for name in names}
    if extensions <= set(IMAGE_EXTENSIONS):
        kind = "image"
    elif extensions <= set(VIDEO_EXTENSIONS):
        kind = "video"
    else:
        raise ValueError(
            f"{metadata!r} mixes or uses unknown extensions {sorted(extensions)}; images: {IMAGE_EXTENSIONS}, "
            f"videos: {VIDEO_EXTENSIONS}. Put images and videos in separate folders."
        )
    if kind in table.column_names:
        raise ValueError(f"metadata {metadata!r} must not have a column named {kind!r}; it is filled from file_name")
    paths = pa.array([os.path.join(root, str(name)) for name in names], pa.string())
    records = pa.StructArray.from_arrays([pa.nulls(len(paths), pa.binary()), paths], names=["bytes", "path"])
    feature = datasets.Image(decode=False) if kind == "image" else datasets.Video(decode=False)
    features = datasets.Features({kind: feature, **datasets.Features.from_arrow_schema(table.schema)})
    table = table.add_column(0, kind, records).cast(features.arrow_schema)
    info = datasets.DatasetInfo(features=features, description=f"{kind} folder {root}")
    dataset = datasets.Dataset(table, info=info)
    num_shards = min(len(dataset), 64) if num_shards is None else num_shards
    if not 1 <= num_shards <= len(dataset):
        raise ValueError(f"num_shards must be between 1 and the number of rows ({len(dataset)}), got {num_shards}")
    return dataset.to_iterable_dataset(num_shards=num_shards)


def _expand(paths: str | Sequence[str]) -> list[str]:
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "*.tar")) + glob.glob(os.path.join(path, "*.parquet")))
        else:
            matched = sorted(glob.glob(path))
            if not matched:
                raise FileNotFoundError(f"no file matches {path!r}")
            files += matched
    return files


def load_source(
    path_or_id: str | Sequence[str],
    split: str = "train",
    metadata: str | None = None,
    num_shards: int | None = None,
    **load_kwargs: Any,
) -> datasets.IterableDataset:
    """Open a streaming source with undecoded media.

    Args:
        path_or_id: a folder with a metadata file (see `folder_source`); a folder, glob or list of WebDataset
            `.tar` or `.parquet` shards; or a Hub dataset id (read with `datasets.load_dataset(..., streaming=True)`
            when a Hub is reachable).
        split: the split of a Hub dataset (local shards are one split).
        metadata, num_shards: for folders, see `folder_source`.
        load_kwargs: passed to `datasets.load_dataset` (e.g. `name=`, `revision=`).

    Returns:
        a `datasets.IterableDataset` whose image/video columns are `{"bytes", "path"}` records.
    """
    single = isinstance(path_or_id, (str, os.PathLike))
    if (
        single
        and os.path.isdir(path_or_id)
        and (metadata is not None or any(os.path.isfile(os.path.join(path_or_id, m)) for m in METADATA_FILES))
    ):
        return folder_source(os.fspath(path_or_id), metadata=metadata, num_shards=num_shards)
    if single and not os.path.exists(path_or_id) and not glob.has_magic(str(path_or_id)):
        dataset = datasets.load_dataset(str(path_or_id), split=split, streaming=True, **load_kwargs)
        return undecoded(dataset)
    files = _expand(path_or_id)
    kinds = {os.path.splitext(f)[1] for f in files}
    if kinds == {".tar"}:
        builder = "webdataset"
    elif kinds == {".parquet"}:
        builder = "parquet"
    else:
        raise ValueError(
            f"expected only .tar (WebDataset) or only .parquet shards, got {sorted(kinds)} in {path_or_id!r}"
        )
    dataset = datasets.load_dataset(builder, data_files={"train": files}, split="train", streaming=True, **load_kwargs)
    return undecoded(dataset)


__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "folder_source",
    "load_source",
    "media_columns",
    "undecoded",
]
