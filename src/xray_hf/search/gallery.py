"""A search gallery: the images and videos of one or more sources the data layer reads, with stable item ids and the
metadata an index stores beside its vectors.

A source is an embedded set by name (`openmoji`, `mnist`, `moving-shapes`, ...; with a split), a folder with a
metadata file, or WebDataset / Parquet shards (`eval.data.load_eval_set` opens them all, media left undecoded).

Item ids are stable across builds, so a build can skip what it already holds: the set's `id` column, else the
folder's `file_name`, else the media file's path, else `<source>#<row>`. Stored columns: `id`, `source`,
`modality` (`image` / `video`), `file_path` (the media file, when it is one; not `path`, which gradio's client
takes for a file to download), `caption` (a list of captions joined with
" | "), a small PNG `thumbnail` (for the demo; the middle frame of a video), and every other column holding strings,
numbers, booleans or lists of strings (class labels as their names).
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import datasets
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..eval.data import load_eval_set

RESERVED = ("id", "source", "modality", "file_path", "caption", "thumbnail", "semantic_ids", "vector_id")
THUMBNAIL_SIZE = 128


@dataclass
class GallerySource:
    """One opened source: its undecoded rows (`eval_set.dataset`), modality and the id of every row."""

    name: str
    eval_set: Any  # eval.data.EvalSet
    ids: list[str]

    @property
    def modality(self) -> str:
        return self.eval_set.modality

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def features(self) -> datasets.Features:
        """The columns' features, read once: `Dataset.features` deep-copies them on every access (~0.5 ms a row)."""
        return self.eval_set.dataset.features


def _id_column(dataset: datasets.Dataset, media_column: str) -> list[str] | None:
    for column in ("id", "file_name"):
        if column in dataset.column_names:
            return [str(value) for value in dataset[column]]
    records = dataset[media_column]
    paths = [record.get("path") if isinstance(record, dict) else None for record in records]
    if all(paths) and len(set(paths)) == len(paths):
        return [str(path) for path in paths]
    return None


def _parquet_files(source: str) -> list[str]:
    if os.path.isdir(source):
        return sorted(glob.glob(os.path.join(source, "*.parquet")))
    matched = sorted(glob.glob(source)) if source.endswith(".parquet") else []
    return matched


def open_source(source: str, split: str = "test", media_column: str | None = None,
                max_items: int | None = None) -> GallerySource:
    """Open one source (see the module docstring); an empty one is an error naming it."""
    parquet = _parquet_files(source)
    if parquet and sum(pq.read_metadata(path).num_rows for path in parquet) == 0:
        # checked here: datasets' Parquet reader fails on a file without rows with an arrow batch-size error
        raise ValueError(f"the gallery source {source!r} is empty: nothing to index (its Parquet files have no rows)")
    try:
        eval_set = load_eval_set(source, split, max_samples=max_items, media_column=media_column)
    except ValueError as error:
        if "no rows" in str(error) or "Empty" in str(error):  # data layer / pyarrow words for an empty source
            raise ValueError(f"the gallery source {source!r} is empty: nothing to index ({error})") from None
        raise
    dataset = eval_set.dataset
    if len(dataset) == 0:
        raise ValueError(f"the gallery source {source!r} (split {split!r}) is empty: nothing to index")
    ids = _id_column(dataset, eval_set.media_column) or [f"{source}#{row}" for row in range(len(dataset))]
    duplicates = len(ids) - len(set(ids))
    if duplicates:
        raise ValueError(f"the gallery source {source!r} has {duplicates} duplicate item ids; ids must be unique")
    return GallerySource(source, eval_set, ids)


def open_gallery(sources: str | Sequence[str], split: str = "test", media_column: str | None = None,
                 max_items: int | None = None) -> list[GallerySource]:
    """Open every source of a gallery; ids must be unique across them."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not sources:
        raise ValueError("a gallery needs at least one source")
    opened = [open_source(os.fspath(s), split, media_column, max_items) for s in sources]
    seen: set[str] = set()
    for source in opened:
        clash = seen.intersection(source.ids)
        if clash:
            raise ValueError(f"sources share item ids (e.g. {sorted(clash)[:3]}); index them separately")
        seen.update(source.ids)
    return opened


def _plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def metadata(source: GallerySource, row: dict[str, Any], item_id: str) -> dict[str, Any]:
    """The stored columns of one row (without thumbnail and vectors)."""
    eval_set = source.eval_set
    record = row[eval_set.media_column]
    path = record.get("path") if isinstance(record, dict) else None
    caption = row.get(eval_set.caption_column) if eval_set.caption_column else None
    if isinstance(caption, list):
        caption = " | ".join(str(c) for c in caption)
    out: dict[str, Any] = {"id": item_id, "source": source.name, "modality": source.modality,
                           "file_path": path if path and os.path.isfile(path) else None,
                           "caption": None if caption is None else str(caption)}
    features = source.features
    for column, value in row.items():
        if column in RESERVED or column in (eval_set.media_column, eval_set.caption_column, "file_name"):
            continue
        feature = features.get(column)
        if isinstance(feature, datasets.ClassLabel) and isinstance(value, int):
            value = feature.int2str(value)
        if _plain(value):
            out[column] = value
    return out


def thumbnail(image: torch.Tensor, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG bytes of a decoded (C, H, W) uint8 image shrunk to fit `size` x `size`."""
    array = image.as_subclass(torch.Tensor).permute(1, 2, 0).contiguous().numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3])
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def rows(source: GallerySource, skip: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(id, row)` of every item whose id is not in `skip`, in source order."""
    dataset = source.eval_set.dataset
    for position, item_id in enumerate(source.ids):
        if item_id not in skip:
            yield item_id, dataset[position]


__all__ = ["GallerySource", "RESERVED", "metadata", "open_gallery", "open_source", "rows", "thumbnail"]
