"""Map-style tables: a dataset opened by name or path, cut to `max_samples`, and decoded deterministically.

Evaluation sets (`xray_hf.eval.data.load_eval_set`), the stages' evaluation sets and vocabularies
(`xray_hf.data.inputs`), embedded training streams and curation all open their rows here, so `max_samples` means
one thing everywhere: evenly spaced rows of an embedded split (embedded splits are ordered by class, so a prefix
would hold one class), the first rows of a local source (a stream, read in file order).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import datasets
import numpy as np
import torch

from .embedded import NAMES, load_embedded
from .sources import load_source


def take_samples(table: datasets.Dataset, max_samples: int | None) -> datasets.Dataset:
    """`max_samples` evenly spaced rows of `table` (all of it when None or when it has no more rows)."""
    if max_samples is None or max_samples >= len(table):
        return table
    return table.select(np.linspace(0, len(table) - 1, max_samples).round().astype(int).tolist())


def _flatten_json(rows: list[dict], features: datasets.Features | None) -> tuple[list[dict], datasets.Features | None]:
    """Promote the fields of a WebDataset `json` member to columns (existing columns win)."""
    if not rows or not isinstance(rows[0].get("json"), dict):
        return rows, features
    flat = [{**{k: v for k, v in row["json"].items() if k not in row}, **{k: v for k, v in row.items() if k != "json"}}
            for row in rows]
    if features is not None and isinstance(features.get("json"), dict):
        merged = {k: v for k, v in features["json"].items() if k not in features}
        merged.update({k: v for k, v in features.items() if k != "json"})
        features = datasets.Features(merged)
    return flat, features


def _read_source(path: str, split: str, max_samples: int | None) -> datasets.Dataset:
    source = load_source(path, split=split)
    rows = list(itertools.islice(iter(source), max_samples))
    if not rows:
        raise ValueError(f"source {path!r} has no rows")
    rows, features = _flatten_json(rows, source.features)
    return datasets.Dataset.from_list(rows, features=features)


def open_table(dataset: str, split: str = "train", *, max_samples: int | None = None) -> datasets.Dataset:
    """`dataset` as a map-style table: an embedded set by name (`load_embedded`) or a local folder / Parquet /
    WebDataset source by path (`load_source`, read whole into memory; a WebDataset `json` member's fields become
    columns). `max_samples` keeps evenly spaced rows of an embedded split and the first rows of a local source."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if dataset in NAMES:
        return take_samples(load_embedded(dataset, split), max_samples)
    if os.path.exists(dataset) or any(ch in dataset for ch in "*?["):
        return _read_source(dataset, split, max_samples)
    raise ValueError(f"dataset {dataset!r} is neither an embedded set {NAMES} nor an existing path")


class DecodedDataset(torch.utils.data.Dataset):
    """Map-style, deterministic decoding of a `datasets.Dataset` for evaluation (no augmentation): row `index` is
    decoded with a generator seeded by (`seed`, `index`)."""

    def __init__(self, dataset: datasets.Dataset, decoder: Callable, seed: int = 0):
        column = getattr(decoder, "column", None)
        if column is not None and column in dataset.column_names:
            feature = dataset.features[column]
            if isinstance(feature, datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
            elif isinstance(feature, datasets.Video):
                dataset = dataset.cast_column(column, datasets.Video(decode=False))
        self.dataset, self.decoder, self.seed = dataset, decoder, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.decoder(self.dataset[index], np.random.default_rng([self.seed, index]))


__all__ = ["DecodedDataset", "open_table", "take_samples"]
