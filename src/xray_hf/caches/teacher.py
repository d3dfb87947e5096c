"""Precomputed teacher embeddings for distillation, keyed by sample id and by the teacher's weights.

The teacher is frozen, so its embedding of a sample's clean view (the evaluation transform: no augmentation, the
middle clip of a video) never changes: compute it once per training sample and let every distillation step look
it up instead of running the teacher's vision tower. The student still sees its augmented view, so the target is
the clean view's embedding (a consistency target, as precomputed-teacher distillation does at scale); without the
cache the teacher sees the student's exact pixels.

Files: `teacher_embeddings.safetensors` (one `(N, D)` float32 tensor) and `teacher_cache.json` (the keys in row
order, and the fingerprint). A key is `"<modality>/<id>"` (ids come from the sources' `id` column). The fingerprint
records the sha256 of the teacher's weights and of the input settings (sources, resolution, normalisation, frames):
`load` raises `StaleTeacherCacheError` naming what differs, and `lookup` raises on ids the cache does not hold.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .common import StaleCacheError, sha256_json, sha256_tensors

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_EMBEDDINGS_FILE = "teacher_embeddings.safetensors"
_METADATA_FILE = "teacher_cache.json"


class StaleTeacherCacheError(StaleCacheError):
    """The cache was built by another teacher, with other input settings, or over other samples."""


def teacher_cache_key(modality: str, sample_id: Any) -> str:
    return f"{modality}/{sample_id}"


def teacher_fingerprint(teacher: torch.nn.Module, settings: dict[str, Any]) -> dict[str, str]:
    """What a cached embedding depends on, hashed separately for clear stale errors."""
    return {"teacher_weights": sha256_tensors(teacher.state_dict()), "input_settings": sha256_json(settings)}


class TeacherEmbeddingCache:
    """Teacher embeddings by key (`teacher_cache_key`); `lookup(keys)` gives a `(B, D)` float32 tensor."""

    def __init__(self, path: str | os.PathLike, embeddings: torch.Tensor, keys: Sequence[str],
                 fingerprint: dict[str, str]):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
            raise ValueError(f"need one embedding row per key: {tuple(embeddings.shape)} for {len(keys)} keys")
        self.path, self.embeddings, self.fingerprint = Path(path), embeddings, dict(fingerprint)
        self._index = {key: row for row, key in enumerate(keys)}
        if len(self._index) != len(keys):
            raise ValueError("teacher cache keys are not unique (two samples of one modality share an id)")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def keys(self) -> list[str]:
        return list(self._index)

    def lookup(self, keys: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        missing = [key for key in keys if key not in self._index]
        if missing:
            raise StaleTeacherCacheError(f"teacher cache at {self.path} has no embedding for {missing[:3]}: rebuild it")
        rows = torch.tensor([self._index[key] for key in keys], dtype=torch.long)
        return self.embeddings[rows].to(device or "cpu")

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.contiguous()}, str(self.path / _EMBEDDINGS_FILE),
                  metadata={"format": str(CACHE_FORMAT)})
        with open(self.path / _METADATA_FILE, "w", encoding="utf-8") as f:
            json.dump({"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "keys": self.keys}, f)

    @classmethod
    def load(cls, path: str | os.PathLike, teacher: torch.nn.Module, settings: dict[str, Any],
             keys: Sequence[str] | None = None) -> TeacherEmbeddingCache:
        """Open the cache at `path` for `teacher` and `settings`; with `keys`, also require every one of them."""
        path = Path(path)
        if not (path / _METADATA_FILE).is_file() or not (path / _EMBEDDINGS_FILE).is_file():
            raise FileNotFoundError(f"no teacher cache at {path}")
        with open(path / _METADATA_FILE, encoding="utf-8") as f:
            metadata = json.load(f)
        if metadata.get("format") != CACHE_FORMAT:
            raise StaleTeacherCacheError(f"teacher cache at {path} has format {metadata.get('format')}, not {CACHE_FORMAT}")
        want = teacher_fingerprint(teacher, settings)
        changed = [name for name, value in want.items() if metadata["fingerprint"].get(name) != value]
        if changed:
            raise StaleTeacherCacheError(f"teacher cache at {path} was built with different {' and '.join(changed)}; "
                                         "rebuild it")
        cache = cls(path, load_file(str(path / _EMBEDDINGS_FILE))["embeddings"], metadata["keys"], want)
        if keys is not None:
            missing = [key for key in keys if key not in cache]
            if missing:
                raise StaleTeacherCacheError(f"teacher cache at {path} lacks {len(missing)} of {len(keys)} samples "
                                             f"(e.g. {missing[:3]}); rebuild it")
        return cache

    @classmethod
    def build(cls, path: str | os.PathLike, teacher: torch.nn.Module, settings: dict[str, Any],
              datasets: dict[str, Any], embed: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 64,
              id_column: str = "id") -> TeacherEmbeddingCache:
        """Embed every sample of `datasets` (modality -> a map-style dataset of decoded samples with `pixel_values`
        and `id_column`) with `embed` (the teacher's image embedding, run without gradients), then save."""
        device = next(teacher.parameters()).device
        keys, rows = [], []
        teacher.eval()
        for modality, dataset in datasets.items():
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=list)
            for samples in loader:
                if id_column not in samples[0]:
                    raise ValueError(f"the {modality} samples have no {id_column!r} column to key the teacher cache by")
                pixels = torch.stack([sample["pixel_values"] for sample in samples]).to(device)
                with torch.no_grad():
                    rows.append(embed(pixels).float().cpu())
                keys += [teacher_cache_key(modality, sample[id_column]) for sample in samples]
        cache = cls(path, torch.cat(rows), keys, teacher_fingerprint(teacher, settings))
        cache.save()
        logger.info("teacher cache: %d embeddings written to %s", len(keys), path)
        return cache


__all__ = ["StaleTeacherCacheError", "TeacherEmbeddingCache", "teacher_cache_key", "teacher_fingerprint"]
