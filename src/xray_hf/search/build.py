"""`xray-hf index`: embed a gallery with a CLIP checkpoint and write a search index, incrementally and resumably.

Items are decoded one at a time inside a try (a corrupt or missing file is counted by reason, listed in the report
and skipped, never fatal), preprocessed by the checkpoint's processors, embedded in batches (videos through the
model's video path) behind a progress bar, and added to the faiss index of the chosen kind (`kinds.py`). Every few
thousand items (and a quarter of what the index already holds, so rewriting the index stays linear overall) the
index, the new metadata and the manifest are committed (`store.py`).

Building into a directory that already holds an index of the same settings and checkpoint continues it: items whose
ids are indexed or were skipped are not decoded or embedded again, so an interrupted build resumes and files added
to a source later are the only ones embedded. Semantic IDs are stored per item when a quantiser is given (or found
beside the checkpoint, fitted on it: `<model>/quantizer`, `<model>/../semantic_ids/quantizer`).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import SampleDecodeError
from ..eval.options import EmbedOptions
from .embedder import SearchEmbedder
from .gallery import metadata, open_gallery, rows, thumbnail
from .kinds import KIND_COMPRESSION, FaissIndex, KindParams, check_kind
from .store import IndexStore

COMMIT_EVERY = 4096


def find_quantizer(model_dir: str, embedding_dim: int) -> str | None:
    """A semantic-ID quantiser fitted on `model_dir`'s embeddings, saved beside it by `xray-hf semantic-ids`."""
    model_dir = os.path.abspath(model_dir)
    for candidate in (os.path.join(model_dir, "quantizer"),
                      os.path.join(os.path.dirname(model_dir), "semantic_ids", "quantizer")):
        config_path = os.path.join(candidate, "config.json")
        if not os.path.isfile(config_path):
            continue
        report_path = os.path.join(os.path.dirname(candidate), "report.json")
        fitted_on = None
        if os.path.isfile(report_path):
            with open(report_path, encoding="utf-8") as handle:
                report = json.load(handle)
            fitted_on, feature = report.get("model"), report.get("feature", "embedding")
            if feature != "embedding":
                continue
        with open(config_path, encoding="utf-8") as handle:
            width = json.load(handle).get("embedding_dim")
        same_model = fitted_on is None or os.path.abspath(fitted_on) == model_dir
        if width == embedding_dim and (same_model or candidate.startswith(model_dir + os.sep)):
            return candidate
    return None


class _Builder:
    """The state of one build: model, index, pending rows; `run` does the work."""

    def __init__(self, embedder: SearchEmbedder, store: IndexStore, index: FaissIndex, quantizer: Any,
                 thumbnails: bool, commit_every: int):
        self.embedder, self.store, self.index, self.quantizer = embedder, store, index, quantizer
        self.thumbnails, self.commit_every = thumbnails, commit_every
        self.pending_rows: list[dict[str, Any]] = []
        self.pending_vectors: list[np.ndarray] = []
        self.pending_codes: list[np.ndarray] = []
        self.skipped: list[dict[str, Any]] = []
        self.seconds = Counter()
        self.embedded = 0

    def embed_batch(self, batch: list[tuple[dict[str, Any], torch.Tensor]]) -> None:
        start = time.perf_counter()
        raw = self.embedder.embed_pixels(torch.stack([pixels for _, pixels in batch]))
        self.seconds["embed"] += time.perf_counter() - start
        start = time.perf_counter()
        vectors = self.embedder.index_vectors(raw)
        codes = self.embedder.codes(raw, self.index.kind)
        meta = [row for row, _ in batch]
        if self.quantizer is not None:
            ids = self.quantizer.encode(raw).cpu().numpy().astype(np.int32)
            for row, semantic in zip(meta, ids):
                row["semantic_ids"] = semantic.tolist()
        self.pending_rows += meta
        self.pending_vectors.append(vectors)
        if codes is not None:
            self.pending_codes.append(codes)
        self.embedded += len(batch)
        self.seconds["index"] += time.perf_counter() - start

    def maybe_commit(self, final: bool = False) -> None:
        pending = len(self.pending_rows)
        threshold = max(self.commit_every, self.index.ntotal // 4)
        if self.index.needs_training:
            threshold = max(threshold, self.index.params.train_size)
        if not final and pending < threshold:
            return
        start = time.perf_counter()
        vectors = np.concatenate(self.pending_vectors) if pending else None
        if vectors is not None and self.index.needs_training:
            self.index.train(vectors[: self.index.params.train_size])
        if vectors is not None:
            self.index.add(vectors, np.concatenate(self.pending_codes) if self.pending_codes else None)
        self.seconds["index"] += time.perf_counter() - start
        start = time.perf_counter()
        if pending or self.skipped:
            rows_out = [{**row, "vector_id": self.index.ntotal - pending + i} for i, row in enumerate(self.pending_rows)]
            self.store.commit(self.index, rows_out, self.skipped)
        self.seconds["write"] += time.perf_counter() - start
        self.pending_rows, self.pending_vectors, self.pending_codes, self.skipped = [], [], [], []

    def prepare(self, source, item_id: str, row: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor] | None:
        """Decode and preprocess one item; None (and a skip record) when it cannot be decoded."""
        start = time.perf_counter()
        record = row[source.eval_set.media_column]
        try:
            if source.modality == "video":
                media = self.embedder.load_video(record)
                picture = media[media.shape[0] // 2]
                pixels = self.embedder.prepare_video(media)
            else:
                media = picture = self.embedder.load_image(record)
                pixels = self.embedder.prepare_image(media)
        except SampleDecodeError as error:
            self.skipped.append({"id": item_id, "source": source.name, "reason": error.reason, "error": str(error)})
            return None
        finally:
            self.seconds["decode"] += time.perf_counter() - start
        meta = metadata(source, row, item_id)
        meta["thumbnail"] = thumbnail(picture) if self.thumbnails else None
        return meta, pixels


def build_index(
    model: str | os.PathLike,
    sources: str | Sequence[str],
    output: str | os.PathLike,
    *,
    kind: str = "flat",
    split: str = "test",
    compression: str | None = None,
    compressed_dim: int | None = None,
    quantizer: str | os.PathLike | None = None,
    media_column: str | None = None,
    max_items: int | None = None,
    embed: EmbedOptions | None = None,
    thumbnails: bool = True,
    params: dict[str, Any] | None = None,
    commit_every: int = COMMIT_EVERY,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or continue) the index at `output` of `sources` embedded with the checkpoint `model`; returns the
    report, also saved in the manifest (`report`). See the module docstring."""
    check_kind(kind)
    embed = embed or EmbedOptions()
    if compression is not None and KIND_COMPRESSION[kind] is not None:
        raise ValueError(f"--compression {compression} applies to float kinds (flat, hnsw, ivfpq); {kind} already "
                         "stores the model's own compressed codes")
    total_start = time.perf_counter()
    gallery = open_gallery(sources, split, media_column, max_items)
    embedder = SearchEmbedder(model, compression, compressed_dim, embed)
    settings = {"kind": kind, "dim": embedder.dim, "embedding_dim": embedder.embedding_dim,
                "compression": compression, "compressed_dim": embedder.compressed_dim if compression else None,
                "num_frames": embedder.num_frames, "stride": embedder.stride, "fingerprint": embedder.fingerprint(),
                "params": KindParams.from_dict(params).to_dict()}
    store = IndexStore.create_or_resume(output, settings)
    if store.count or store.manifest["skipped"]:  # continuing: the same checkpoint (its probes, within float noise)
        embedder.check_fingerprint(store.manifest["fingerprint"], os.fspath(output), settings["fingerprint"])
    if store.count or store.manifest["index_files"]:
        index = store.load_index()
    else:
        index = FaissIndex(kind, embedder.dim, KindParams.from_dict(params))
        if kind == "int8":
            index.set_int8_ranges(embedder.int8_ranges())
    quantizer_path = os.fspath(quantizer) if quantizer is not None else find_quantizer(embedder.model_dir,
                                                                                      embedder.embedding_dim)
    semantic = None
    if quantizer_path is not None:
        from ..modeling.semantic_ids import XraySemanticIDModel

        semantic = XraySemanticIDModel.from_pretrained(quantizer_path).eval()
        if semantic.config.embedding_dim != embedder.embedding_dim:
            raise ValueError(f"the quantiser at {quantizer_path} takes {semantic.config.embedding_dim}-d embeddings; "
                             f"{embedder.model_dir} gives {embedder.embedding_dim}-d ones")
    builder = _Builder(embedder, store, index, semantic, thumbnails, commit_every)
    done = store.done_ids()
    todo = sum(len(set(source.ids) - done) for source in gallery)
    bar = tqdm(total=todo, desc=f"indexing ({kind})", unit="item", disable=not progress)
    loop_start = time.perf_counter()
    try:
        for source in gallery:
            batch: list[tuple[dict[str, Any], torch.Tensor]] = []
            for item_id, row in rows(source, done):
                prepared = builder.prepare(source, item_id, row)
                bar.update(1)
                if prepared is None:
                    continue
                batch.append(prepared)
                if len(batch) == embed.batch_size:
                    builder.embed_batch(batch)
                    batch = []
                    builder.maybe_commit()
            if batch:
                builder.embed_batch(batch)
        builder.maybe_commit(final=True)
        # the whole pass over the items (reading rows included), without loading the model or the done ids
        builder.seconds["loop"] = time.perf_counter() - loop_start
    finally:
        bar.close()
    skipped = store.manifest["skipped"]
    if store.count == 0:
        reasons = Counter(item["reason"] for item in skipped)
        detail = f": all {len(skipped)} items failed to decode ({dict(reasons)})" if skipped else ""
        raise ValueError(f"the gallery {[s.name for s in gallery]} gave no item to index{detail}")
    seconds = dict(builder.seconds)
    wall = time.perf_counter() - total_start
    report = {
        "index": os.fspath(output), "model": embedder.model_dir, "kind": kind, "dim": embedder.dim,
        "compression": compression, "count": store.count, "added": builder.embedded,
        "already_indexed": len(done), "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(item["reason"] for item in skipped)),
        "skipped_items": [{k: item[k] for k in ("id", "source", "reason")} for item in skipped],
        "semantic_ids": quantizer_path, "seconds": {**{k: round(v, 3) for k, v in seconds.items()},
                                                    "total": round(wall, 3)},
        "items_per_second": round(builder.embedded / wall, 2) if builder.embedded else None,
        "bytes_per_item": {k: v if v is None else round(v, 2) for k, v in index.bytes_per_item().items()},
    }
    sources_seen = sorted(set(store.manifest["sources"]) | {s.name for s in gallery})
    # absolute: `xray-hf search INDEX` finds the checkpoint from any working directory
    store.update_manifest({"report": report, "sources": sources_seen, "model": os.path.abspath(embedder.model_dir),
                           "split": split})
    return report


__all__ = ["build_index", "find_quantizer"]
