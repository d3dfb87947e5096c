"""Queries: by text, by image or by video, against an index, with top-k, a minimum score and metadata filters.

```python
from xray_hf.search import Searcher
searcher = Searcher("runs/tiny/openmoji_index")               # the checkpoint the index was built with
searcher.search("a red heart", k=10).rows                    # [{"rank", "score", "id", "caption", ...}, ...]
searcher.search(image="heart.png", min_score=0.2, filters={"modality": "image", "hashtags": "heart"})
```

A query is embedded exactly as the gallery was (`SearchEmbedder`: same normalisation or projection, the model's
binary bits for a binary index), so the CLI (`xray-hf search`), the demo and this API return the same rows. Scores
are cosine similarities (approximate ones for `int8` and `ivfpq`). The checkpoint must be the one the index was
built with: its embedding size and its probe embeddings are checked when the searcher opens.

Filters map a metadata column to a value or a list of accepted values; a list column (e.g. `hashtags`) matches
when it contains one of them. Filtering happens inside faiss (an `IDSelector`), so the top-k are the best allowed
items, not the allowed few of an unfiltered top-k.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..eval.options import EmbedOptions
from .embedder import SearchEmbedder
from .store import IndexStore

HIDDEN_COLUMNS = ("thumbnail", "vector_id")


@dataclass
class SearchResult:
    """The rows of one query, best first, and the time it took (embedding the query + searching), in seconds."""

    rows: list[dict[str, Any]]
    seconds: float
    query: dict[str, Any] = field(default_factory=dict)


def parse_filters(specs: Sequence[str] | None) -> dict[str, list[str]]:
    """`["modality=image", "hashtags=heart", "hashtags=love"]` -> `{"modality": ["image"], "hashtags": ["heart",
    "love"]}` (values of one column are alternatives)."""
    filters: dict[str, list[str]] = {}
    for spec in specs or ():
        column, sep, value = spec.partition("=")
        if not sep or not column.strip():
            raise ValueError(f"a filter is COLUMN=VALUE, got {spec!r}")
        filters.setdefault(column.strip(), []).append(value.strip())
    return filters


class SearchIndex:
    """An index directory opened for searching: the faiss index and the items' metadata (no model)."""

    def __init__(self, directory: str | os.PathLike):
        self.store = IndexStore.open(directory)
        self.directory = self.store.directory
        self.manifest = self.store.manifest
        self.index = self.store.load_index()
        self.table = self.store.load_table()
        self._columns = [c for c in self.table.column_names if c not in HIDDEN_COLUMNS]

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def filter_values(self, column: str, limit: int = 200) -> list[str]:
        """The distinct values of a metadata column (list columns flattened), sorted, at most `limit`."""
        if column not in self.table.column_names:
            return []
        values = self.table.column(column)
        if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            values = pc.list_flatten(values)
        distinct = sorted({str(v) for v in pc.unique(values).to_pylist() if v is not None})
        return distinct[:limit]

    def allowed_ids(self, filters: Mapping[str, Any] | None) -> np.ndarray | None:
        """Vector ids whose metadata passes every filter (None: no filter)."""
        if not filters:
            return None
        mask = np.ones(self.table.num_rows, dtype=bool)
        for column, accepted in filters.items():
            if column not in self.table.column_names or column in HIDDEN_COLUMNS:
                raise ValueError(f"no metadata column {column!r} to filter on; columns: {self._columns}")
            accepted = list(accepted) if isinstance(accepted, (list, tuple, set)) else [accepted]
            values = self.table.column(column)
            listed = pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
            item_type = values.type.value_type if listed else values.type
            try:
                wanted = pa.array(accepted).cast(item_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ValueError(f"filter values {accepted} do not fit column {column!r} ({item_type})") from None
            if listed:
                flat = pc.list_flatten(values)
                parents = pc.list_parent_indices(values).to_numpy()
                hit = pc.fill_null(pc.is_in(flat, value_set=wanted), False).to_numpy(zero_copy_only=False)
                column_mask = np.zeros(self.table.num_rows, dtype=bool)
                column_mask[parents[hit]] = True
            else:
                column_mask = pc.fill_null(pc.is_in(values, value_set=wanted), False).to_numpy(zero_copy_only=False)
            mask &= column_mask
        return np.flatnonzero(mask).astype(np.int64)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, min_score: float | None = None,
                       filters: Mapping[str, Any] | None = None,
                       query_bits: np.ndarray | None = None) -> list[list[dict[str, Any]]]:
        """Rows of each query vector (index space, normalised) (Q, dim): best first, at most `k`."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        allowed = self.allowed_ids(filters)
        if allowed is not None and not len(allowed):
            return [[] for _ in range(len(vectors))]
        scores, ids = self.index.search(vectors, min(k, len(self)), query_bits=query_bits, allowed=allowed)
        return [self._rows(s, i, min_score) for s, i in zip(scores, ids)]

    def _rows(self, scores: np.ndarray, ids: np.ndarray, min_score: float | None) -> list[dict[str, Any]]:
        keep = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0 and (min_score is None or s >= min_score)]
        if not keep:
            return []
        picked = self.table.take(pa.array([i for _, i in keep])).select(self._columns).to_pylist()
        return [{"rank": rank + 1, "score": score, **row} for rank, ((score, _), row) in enumerate(zip(keep, picked))]

    def thumbnail(self, item_id: str) -> bytes | None:
        """The PNG thumbnail of an item (None when the index was built without thumbnails)."""
        if "thumbnail" not in self.table.column_names:
            return None
        hits = pc.index(self.table.column("id"), item_id).as_py()
        return None if hits < 0 else self.table.column("thumbnail")[hits].as_py()


class Searcher:
    """A checkpoint and an index, checked to belong together; `search` embeds a query and returns rows."""

    def __init__(self, index: str | os.PathLike | SearchIndex, model: str | os.PathLike | None = None,
                 device: str | None = None):
        self.index = index if isinstance(index, SearchIndex) else SearchIndex(index)
        manifest = self.index.manifest
        model = model if model is not None else manifest.get("model")
        if model is None:
            raise ValueError(f"the index at {self.index.directory} does not name its model; pass the checkpoint")
        embed = EmbedOptions(num_frames=manifest.get("num_frames"), stride=manifest.get("stride", 2), device=device)
        self.embedder = SearchEmbedder(model, manifest.get("compression"), manifest.get("compressed_dim"), embed)
        if self.embedder.dim != manifest["dim"]:
            raise ValueError(f"the index at {self.index.directory} holds {manifest['dim']}-d embeddings, but "
                             f"{self.embedder.model_dir} gives {self.embedder.dim}-d ones: use the checkpoint the "
                             "index was built with")
        self.embedder.check_fingerprint(manifest["fingerprint"], self.index.directory)

    def embed_query(self, text: str | None = None, image: Any = None, video: Any = None) -> Any:
        """Raw embedding (1, D) of exactly one of text, image (path, PIL image or array) or video (path)."""
        given = [name for name, value in (("text", text), ("image", image), ("video", video))
                 if value is not None and not (isinstance(value, str) and not value.strip())]
        if len(given) != 1:
            raise ValueError(f"give one query: a text, an image or a video (got {given or 'none'})")
        if text is not None and given == ["text"]:
            return self.embedder.embed_texts([text])
        if image is not None:
            return self.embedder.embed_pixels(self.embedder.prepare_image(self.embedder.load_image(image))[None])
        return self.embedder.embed_pixels(self.embedder.prepare_video(self.embedder.load_video(video))[None])

    def search(self, text: str | None = None, *, image: Any = None, video: Any = None, k: int = 10,
               min_score: float | None = None, filters: Mapping[str, Any] | None = None) -> SearchResult:
        """Top-`k` rows for the query (see the module docstring)."""
        start = time.perf_counter()
        raw = self.embed_query(text, image, video)
        vectors = self.embedder.index_vectors(raw)
        bits = self.embedder.codes(raw, "binary") if self.index.kind == "binary" else None
        rows = self.index.search_vectors(vectors, k, min_score, filters, query_bits=bits)[0]
        query = {"text": text, "image": None if image is None else str(getattr(image, "filename", "") or "image"),
                 "video": None if video is None else str(video)}
        return SearchResult(rows, time.perf_counter() - start, {k: v for k, v in query.items() if v is not None})


def search(index: str | os.PathLike, text: str | None = None, *, model: str | os.PathLike | None = None,
           image: Any = None, video: Any = None, k: int = 10, min_score: float | None = None,
           filters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One query against an index directory with its checkpoint (or `model`): the rows, best first."""
    return Searcher(index, model).search(text, image=image, video=video, k=k, min_score=min_score,
                                         filters=filters).rows


__all__ = ["SearchIndex", "SearchResult", "Searcher", "parse_filters", "search"]
