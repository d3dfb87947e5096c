"""Index kinds: how a gallery's embeddings are stored and searched with faiss.

Every kind scores by inner product of L2-normalised embeddings (cosine), and a vector's faiss id is its row in the
index's metadata table. Compressed kinds store the model's own compressed embeddings (`xray_hf.modeling.compression`):

| kind | faiss index | stores per item | search |
|---|---|---|---|
| `flat` | `IndexFlatIP` | float32 embedding | exact |
| `hnsw` | `IndexHNSWFlat` (inner product) | float32 embedding + graph links | approximate (`ef_search`) |
| `int8` | `IndexScalarQuantizer` (QT_8bit) + `IndexFlatIP` | the model's int8 codes (+ floats for re-ranking) | float query vs codes, top k x m re-scored in float |
| `binary` | `IndexBinaryFlat` + `IndexFlatIP` | the model's packed sign bits (+ floats for re-ranking) | Hamming top k x m, re-scored in float |
| `ivfpq` | `IndexIVFPQ` (inner product) | `dim / 4` bytes: 16x smaller than float32 | approximate (`nprobe`) |

`int8` writes the model's codes into faiss as they are (`add_sa_codes`; faiss' 8-bit code = the model's int8 code +
128, the same bins): the scalar quantiser's trained ranges are the model's calibrated `int8_ranges`. `binary`
searches the model's `compression="binary"` bits; the float vectors it re-ranks with are a file of their own. `int8`
re-ranks likewise (`int8_rescore_multiplier`, default 4; 0 stores no float vectors and scores with the codes alone):
steps of a dimension's range / 255 (~0.002 for a 64-d model's unit vectors) leave a cosine error of ~step / sqrt(12)
(~6e-4), more than the gap between the 10th and 11th neighbours of a dense gallery (~1e-4), so the codes find the
neighbourhood and the floats order it. An int8 index built without float vectors searches its codes alone whatever
the multiplier. IVF-PQ trains its coarse quantiser and codebooks on the first `train_size` items of a build.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "int8", "binary", "ivfpq")
RERANK_CHUNK_FLOATS = 1 << 24  # float32 values of candidate vectors re-scored at once (64 MB)
# the model compression a kind stores (None: float embeddings)
KIND_COMPRESSION = {"flat": None, "hnsw": None, "int8": "int8", "binary": "binary", "ivfpq": None}


@dataclass
class KindParams:
    """Settings of the faiss indexes (saved in the index manifest; search-time ones may be changed after loading)."""

    hnsw_m: int = 32  # graph links per node
    ef_construction: int = 80
    ef_search: int = 128  # candidates kept while searching (raised to k when smaller)
    nlist: int | None = None  # IVF cells (default: about sqrt of the training items)
    nprobe: int | None = None  # cells visited per query (default: nlist / 8, at least 8)
    pq_m: int | None = None  # PQ sub-vectors (default: dim / 4: 16x smaller than float32 with 8-bit codes)
    pq_nbits: int = 8
    train_size: int = 20000  # IVF-PQ: items its quantisers are trained on
    rescore_multiplier: int = 10  # binary: Hamming candidates per result re-scored in float
    int8_rescore_multiplier: int = 4  # int8: code-scored candidates per result re-scored in float (0: codes only)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> KindParams:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown index parameters {sorted(unknown)}; known: {sorted(known)}")
        out = cls(**values)
        if out.rescore_multiplier < 1:
            raise ValueError(f"rescore_multiplier must be >= 1, got {out.rescore_multiplier}")
        if out.int8_rescore_multiplier < 0:
            raise ValueError("int8_rescore_multiplier must be >= 0 (0: no re-ranking), got "
                             f"{out.int8_rescore_multiplier}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    return kind


class FaissIndex:
    """A gallery's faiss index of one kind (see the module docstring): `add` rows, `search` them by inner product."""

    def __init__(self, kind: str, dim: int, params: KindParams | None = None, index: Any = None,
                 vectors: Any = None):
        self.kind, self.dim = check_kind(kind), int(dim)
        self.params = params or KindParams()
        if kind == "binary" and dim % 8:
            raise ValueError(f"a binary index needs an embedding size divisible by 8, got {dim}")
        new = index is None
        self.index = index if index is not None else self._new()
        # binary, int8 (when re-ranking): the float vectors re-ranking reads; a loaded index keeps what it has
        reranks = kind == "binary" or (kind == "int8" and self.params.int8_rescore_multiplier > 0)
        self.vectors = vectors if vectors is not None or not (new and reranks) else faiss.IndexFlatIP(dim)

    def _new(self) -> Any:
        p = self.params
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = p.ef_construction
            return index
        if self.kind == "int8":
            return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        if self.kind == "binary":
            return faiss.IndexBinaryFlat(self.dim)
        return None  # ivfpq: built by `train`, once the training items are known

    # ------------------------------------------------------------------------------------------------ building
    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        return self.kind == "ivfpq" and self.index is None

    def set_int8_ranges(self, ranges: np.ndarray) -> None:
        """The scalar quantiser's ranges from the model's calibrated int8 ranges (2, dim): [min, max] per dimension."""
        ranges = np.asarray(ranges, dtype=np.float32)
        if ranges.shape != (2, self.dim):
            raise ValueError(f"int8 ranges must have shape (2, {self.dim}), got {ranges.shape}")
        faiss.copy_array_to_vector(np.concatenate([ranges[0], ranges[1] - ranges[0]]), self.index.sq.trained)
        self.index.is_trained = True

    def train(self, embeddings: np.ndarray) -> None:
        """IVF-PQ: build and train the index on `embeddings` (n, dim); the cell and code counts follow n."""
        x = _float32(embeddings, self.dim)
        n = x.shape[0]
        p = self.params
        m = p.pq_m or max(1, self.dim // 4)
        if self.dim % m:
            raise ValueError(f"pq_m={m} must divide the embedding size {self.dim}")
        nbits = min(p.pq_nbits, max(1, int(math.log2(max(2, n)))))  # k-means needs at least 2**nbits items
        nlist = p.nlist or max(1, min(int(round(math.sqrt(n))), n // 39 or 1))
        nlist = min(nlist, n)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small galleries: no warnings, faiss subsamples large ones itself
        index.pq.cp.min_points_per_centroid = 1
        index.train(x)
        index.nprobe = min(nlist, p.nprobe or max(8, nlist // 8))
        self.index = index
        self.params.nlist, self.params.pq_m, self.params.pq_nbits = nlist, m, nbits
        self.params.nprobe = int(index.nprobe)

    def add(self, embeddings: np.ndarray, codes: np.ndarray | None = None) -> None:
        """Append rows: normalised float embeddings (n, dim) and, for `int8` / `binary`, the model's codes of them
        (int8 (n, dim) / packed uint8 (n, dim / 8))."""
        x = _float32(embeddings, self.dim)
        if self.needs_training:
            raise ValueError("an IVF-PQ index must be trained before items are added")
        if self.kind in ("int8", "binary"):
            if codes is None or len(codes) != len(x):
                raise ValueError(f"a {self.kind} index adds the model's {self.kind} codes of every item")
            codes = np.asarray(codes)
        if self.kind == "int8":
            if not self.index.is_trained:
                raise ValueError("the int8 index has no ranges: set_int8_ranges(model's int8_ranges) first")
            self.index.add_sa_codes((codes.astype(np.int16) + 128).astype(np.uint8))
            if self.vectors is not None:
                self.vectors.add(x)
        elif self.kind == "binary":
            self.index.add(np.ascontiguousarray(codes, dtype=np.uint8))
            self.vectors.add(x)
        else:
            self.index.add(x)

    # ------------------------------------------------------------------------------------------------ searching
    def search(self, queries: np.ndarray, k: int, query_bits: np.ndarray | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` `(scores, ids)` (Q, k) of normalised float `queries` (Q, dim), best first; missing results have
        id -1. `allowed`: the only ids that may be returned (a metadata filter). `binary` needs `query_bits`."""
        q = _float32(queries, self.dim)
        if self.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        selector = None if allowed is None else faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
        pool = self.ntotal if allowed is None else len(allowed)
        if self.kind == "binary":
            if query_bits is None:
                raise ValueError("a binary index is searched with the query's bits (query_bits)")
            candidates = min(self.ntotal, k * self.params.rescore_multiplier)
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            _, ids = self.index.search(np.ascontiguousarray(query_bits, dtype=np.uint8), candidates, params=params)
            return self._rerank(q, ids, k)
        if self.kind == "hnsw":
            ef = max(self.params.ef_search, k)
            if allowed is not None:  # a narrow filter leaves few allowed nodes on the graph's paths: look wider
                ef = min(self.ntotal, max(ef, int(k * self.ntotal / max(1, pool))))
            params = faiss.SearchParametersHNSW(efSearch=ef)
            if selector is not None:
                params.sel = selector
        elif self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=int(self.index.nprobe))
            if selector is not None:
                params.sel = selector
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        if self.kind == "int8" and self.vectors is not None and self.params.int8_rescore_multiplier > 0:
            candidates = min(self.ntotal, k * self.params.int8_rescore_multiplier)
            _, ids = self.index.search(q, candidates, params=params)
            return self._rerank(q, ids, k)
        scores, ids = self.index.search(q, k, params=params)
        return scores, ids

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` of each query's `candidates` (Q, C) (ids, -1 for none) by inner product with the stored
        float vectors: `(scores, ids)` (Q, k), best first, ties in candidate order."""
        q, c = candidates.shape
        scores = np.full((q, k), -np.inf, np.float32)
        ids = np.full((q, k), -1, np.int64)
        rows = max(1, RERANK_CHUNK_FLOATS // max(1, c * self.dim))  # bounded memory for large k x multiplier
        for start in range(0, q, rows):
            found = candidates[start : start + rows]
            valid = found >= 0
            vectors = self.vectors.reconstruct_batch(np.where(valid, found, 0).ravel()).reshape(*found.shape, self.dim)
            sims = np.einsum("qcd,qd->qc", vectors, queries[start : start + rows])
            sims[~valid] = -np.inf
            order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            best, chosen = np.take_along_axis(sims, order, 1), np.take_along_axis(found, order, 1)
            chosen[~np.isfinite(best)] = -1
            width = best.shape[1]
            scores[start : start + rows, :width], ids[start : start + rows, :width] = best, chosen
        return scores, ids

    # ------------------------------------------------------------------------------------------------ files
    def bytes_per_item(self) -> dict[str, float]:
        """Bytes per item: of one stored code (`code`), of the whole serialised index (`index`: with graph links,
        inverted-list ids, codebooks) and, for `binary`, of the float vectors kept for re-ranking."""
        n = max(1, self.ntotal)
        code = {"flat": 4 * self.dim, "hnsw": 4 * self.dim, "int8": self.dim, "binary": self.dim // 8}.get(self.kind)
        if self.kind == "ivfpq":
            code = int(self.index.pq.code_size) if self.index is not None else None
        sizes = {"code": code, "index": _serialized_size(self.index, self.kind == "binary") / n if self.index else 0}
        if self.vectors is not None:
            sizes["rerank_vectors"] = _serialized_size(self.vectors, False) / n
        return sizes

    def save(self, directory: str | os.PathLike, stem: str) -> list[str]:
        """Write the index with faiss' own writer (`<stem>.faiss`, and `<stem>.vectors.faiss` with the float
        vectors of `binary` and re-ranking `int8`)."""
        names = [f"{stem}.faiss"]
        path = os.path.join(os.fspath(directory), names[0])
        (faiss.write_index_binary if self.kind == "binary" else faiss.write_index)(self.index, path)
        if self.vectors is not None:
            names.append(f"{stem}.vectors.faiss")
            faiss.write_index(self.vectors, os.path.join(os.fspath(directory), names[1]))
        return names

    @classmethod
    def load(cls, directory: str | os.PathLike, files: list[str], kind: str, dim: int,
             params: KindParams) -> FaissIndex:
        paths = [os.path.join(os.fspath(directory), name) for name in files]
        if kind == "binary":
            return cls(kind, dim, params, faiss.read_index_binary(paths[0]), faiss.read_index(paths[1]))
        if not paths:  # ivfpq before its training
            return cls(kind, dim, params, None)
        vectors = faiss.read_index(paths[1]) if len(paths) > 1 else None
        return cls(kind, dim, params, faiss.read_index(paths[0]), vectors)


def _float32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {x.shape}")
    return x


def _serialized_size(index: Any, binary: bool) -> int:
    writer = faiss.VectorIOWriter()
    (faiss.write_index_binary if binary else faiss.write_index)(index, writer)
    return int(writer.data.size())


__all__ = ["KINDS", "KIND_COMPRESSION", "FaissIndex", "KindParams", "check_kind"]
