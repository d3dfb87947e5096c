"""An index directory on disk: the faiss index, the items' metadata in Parquet, and a JSON manifest tying them.

Layout:
- `index.json`: the manifest (kind, sizes, model fingerprint, settings, item count, the files below, skipped items);
- `items-00000.parquet`, ...: one part per commit, rows in vector-id order (row i of the parts = faiss id i);
- `index-<generation>.faiss` (and `index-<generation>.vectors.faiss`, the float vectors `binary` and `int8`
  re-rank with): written by faiss' own writer.

A commit writes a new part and a new index generation, then replaces the manifest atomically: a build killed at any
point leaves the last committed state, which the next build continues from. Files no manifest names (a commit that
did not finish) are removed when the directory is opened for building. Nothing is pickled.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic_io import write_json_atomic
from .kinds import FaissIndex, KindParams

MANIFEST = "index.json"
FORMAT = "xray-hf-search-index"
FORMAT_VERSION = 1


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an index directory; a clear error when there is none."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no search index at {directory!r}: the directory does not exist (build one with "
                                "xray-hf index --model DIR --source SRC --output INDEX)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no search index at {directory!r}: it has no {MANIFEST} (build one with "
                                "xray-hf index)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rebuild the index") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xray-hf search index manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer xray-hf (format {manifest['format_version']}); upgrade")
    return manifest


class IndexStore:
    """Read and commit an index directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, manifest: dict[str, Any]):
        self.directory = os.fspath(directory)
        self.manifest = manifest

    # ------------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: str | os.PathLike) -> IndexStore:
        return cls(directory, read_manifest(directory))

    @classmethod
    def create_or_resume(cls, directory: str | os.PathLike, settings: dict[str, Any]) -> IndexStore:
        """Open `directory` to build into: a new manifest from `settings`, or the existing one when its settings
        are the same (a different kind, size, compression or model is an error: build into a new directory)."""
        directory = os.fspath(directory)
        if os.path.isfile(os.path.join(directory, MANIFEST)):
            store = cls.open(directory)
            for key, value in settings.items():
                if key in ("params", "fingerprint"):  # the model is compared by the caller, within float noise
                    continue
                if store.manifest.get(key) != value:
                    raise ValueError(
                        f"{directory} already holds an index with another {key} ({store.manifest.get(key)!r} vs "
                        f"{value!r} now): resume it with the same settings and checkpoint, or use a new --output")
            store._remove_orphans()
            return store
        if os.path.isdir(directory) and os.listdir(directory):
            raise ValueError(f"{directory} exists and is not an index directory; choose an empty or new --output")
        os.makedirs(directory, exist_ok=True)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings, "count": 0, "generation": 0,
                    "parts": [], "index_files": [], "skipped": [], "sources": []}
        return cls(directory, manifest)

    def _remove_orphans(self) -> None:
        keep = set(self.manifest["parts"]) | set(self.manifest["index_files"]) | {MANIFEST}
        for path in glob.glob(os.path.join(self.directory, "*")):
            name = os.path.basename(path)
            if name not in keep and (name.startswith(("items-", "index-")) or name.endswith(".tmp")):
                os.remove(path)

    # ------------------------------------------------------------------------------------------------ reading
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def params(self) -> KindParams:
        return KindParams.from_dict(self.manifest.get("params"))

    def load_index(self) -> FaissIndex:
        index = FaissIndex.load(self.directory, self.manifest["index_files"], self.manifest["kind"],
                                self.manifest["dim"], self.params())
        if index.ntotal != self.count:
            raise ValueError(f"{self.directory}: the faiss index holds {index.ntotal} vectors but the manifest "
                             f"{self.count} items; the index is damaged, rebuild it")
        return index

    def load_table(self) -> pa.Table:
        """The items' metadata (one row per vector, in vector-id order)."""
        parts = [pq.read_table(os.path.join(self.directory, name)) for name in self.manifest["parts"]]
        if not parts:
            return pa.table({"id": pa.array([], pa.string())})
        table = pa.concat_tables(parts, promote_options="default")
        if table.num_rows != self.count:
            raise ValueError(f"{self.directory}: the metadata holds {table.num_rows} rows but the manifest "
                             f"{self.count} items; the index is damaged, rebuild it")
        return table

    def done_ids(self) -> set[str]:
        """Ids already indexed or skipped as undecodable (a resumed build does not redo them)."""
        done = {item["id"] for item in self.manifest["skipped"]}
        for name in self.manifest["parts"]:
            done.update(pq.read_table(os.path.join(self.directory, name), columns=["id"]).column("id").to_pylist())
        return done

    # ------------------------------------------------------------------------------------------------ writing
    def commit(self, index: FaissIndex, rows: list[dict[str, Any]], skipped: list[dict[str, Any]],
               updates: dict[str, Any] | None = None) -> None:
        """Persist `rows` (already added to `index`, in order) and `skipped` items, then swap the manifest."""
        manifest = dict(self.manifest)
        generation = manifest["generation"] + 1
        parts = list(manifest["parts"])
        if rows:
            name = f"items-{len(parts):05d}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), os.path.join(self.directory, name))
            parts.append(name)
        files = index.save(self.directory, f"index-{generation:06d}") if index.ntotal or index.index is not None \
            else []
        manifest.update(updates or {})
        manifest.update(generation=generation, parts=parts, index_files=files, count=index.ntotal,
                        skipped=manifest["skipped"] + skipped, params=index.params.to_dict())
        if manifest["count"] != sum(pq.read_metadata(os.path.join(self.directory, p)).num_rows for p in parts):
            raise RuntimeError("internal error: index and metadata counts differ")
        write_json_atomic(os.path.join(self.directory, MANIFEST), manifest, indent=2)
        old = set(self.manifest["index_files"]) - set(files)
        self.manifest = manifest
        for name in old:
            path = os.path.join(self.directory, name)
            if os.path.exists(path):
                os.remove(path)

    def update_manifest(self, updates: dict[str, Any]) -> None:
        self.manifest = {**self.manifest, **updates}
        write_json_atomic(os.path.join(self.directory, MANIFEST), self.manifest, indent=2)


__all__ = ["FORMAT", "MANIFEST", "IndexStore", "read_manifest"]
