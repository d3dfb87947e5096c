"""Embedding cache for the frozen LLM of the LLM2CLIP text tower.

In the CLIP stage the LLM is frozen, so its pooled output for a caption never changes: run it once over the
caption dataset (`datasets.map`, batched), store the pooled outputs as Arrow keyed by caption id, and let each
CLIP step run only the adapter and projection (`XrayLLM2CLIPTextModel(llm_pooled_output=cache.lookup(ids))`).

The cache records a fingerprint of everything that changes a pooled output: the LLM's weights, the tokenizer,
the embedding settings of the config (nested LLM config, pooling, bidirectional attention, max length,
padding side), and the caption texts themselves: each row stores the sha256 of the text it embedded
(`text_sha256`) and the metadata a digest of all (id, text sha256) pairs. Opening it with a different model or
tokenizer raises `StaleTextCacheError` naming what changed; opening it with `captions=` (the caption dataset
about to be trained on) also raises if any of those captions' texts differ from the cached ones, or if any id
is missing, and names the ids. A cache over a superset of the captions (e.g. all splits) is accepted.

`build` keys its `datasets.map` call (`new_fingerprint`) on the model digest, the caption digest and the text
and id column names, so a disk-backed dataset's `datasets` cache can only hand back rows embedded from the same
texts by the same model; it then checks every stored text hash against the captions before returning.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, load_from_disk
from transformers import PreTrainedTokenizerBase

from ..modeling.llm2clip import XrayLLM2CLIPTextModel
from .common import StaleCacheError, sha256_json, sha256_tensors, text_sha256

CACHE_FORMAT = 2  # 2: per-row text_sha256 and a captions digest (format 1 caches were not keyed on texts)
_METADATA_FILE = "xray_text_cache.json"
_EMBEDDINGS_DIR = "embeddings"


class StaleTextCacheError(StaleCacheError):
    """The cache was built with a different LLM, tokenizer, embedding settings or caption texts than those given."""


def _caption_hashes(captions: Dataset, text_column: str, id_column: str) -> dict[str, str]:
    """`{caption id: sha256 of its text}` for every row of `captions`; raises `ValueError` on bad columns or ids."""
    for column in (text_column, id_column):
        if column not in captions.column_names:
            raise ValueError(f"captions has no column {column!r} (columns: {captions.column_names})")
    hashes: dict[str, str] = {}
    rows = captions.select_columns(list(dict.fromkeys([id_column, text_column]))).with_format(None)
    for batch in rows.iter(batch_size=10_000):
        for caption_id, text in zip(batch[id_column], batch[text_column]):
            caption_id = str(caption_id)
            if not isinstance(text, str):
                raise ValueError(f"caption {caption_id!r} in column {text_column!r} is {type(text).__name__}, not str")
            if caption_id in hashes:
                raise ValueError(f"caption ids in column {id_column!r} are not unique ({caption_id!r} repeats)")
            hashes[caption_id] = text_sha256(text)
    return hashes


def _captions_digest(hashes: dict[str, str]) -> str:
    """One digest of all (id, text sha256) pairs, independent of row order (the cache is keyed by id)."""
    return sha256_json(sorted(hashes.items()))


def _examples(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of what the tokenizer does to text: its full serialisation (fast tokenizers) or vocab, plus specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # padding/truncation are per-call state (set by every padded call), not what the tokenizer does
        serialised = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        body = json.dumps(serialised, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = {"class": type(tokenizer).__name__, "special_tokens": tokenizer.special_tokens_map}
    return hashlib.sha256(body.encode() + sha256_json(specials).encode()).hexdigest()


@dataclass(frozen=True)
class TextCacheFingerprint:
    """The three things a cached pooled LLM output depends on, hashed separately for clear stale errors."""

    llm_weights: str
    tokenizer: str
    embedding_settings: str

    @classmethod
    def of(cls, model: XrayLLM2CLIPTextModel, tokenizer: PreTrainedTokenizerBase) -> "TextCacheFingerprint":
        return cls(
            llm_weights=sha256_tensors(model.llm.state_dict()),
            tokenizer=tokenizer_fingerprint(tokenizer),
            embedding_settings=sha256_json(model.config.embedding_settings()),
        )

    def differences(self, other: "TextCacheFingerprint") -> list[str]:
        return [name for name, value in asdict(self).items() if getattr(other, name) != value]

    @property
    def digest(self) -> str:
        return sha256_json(asdict(self))


def _tokenize_for(model: XrayLLM2CLIPTextModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]):
    return model.config.tokenize(tokenizer, texts)


class TextEmbeddingCache:
    """Pooled LLM outputs keyed by caption id, memory-mapped from Arrow; `lookup(ids)` gives a `(B, D)` tensor."""

    def __init__(
        self, path: str | os.PathLike, dataset: Dataset, fingerprint: TextCacheFingerprint, captions_sha256: str
    ):
        self.path = Path(path)
        self.dataset = dataset
        self.fingerprint = fingerprint
        self.captions_sha256 = captions_sha256
        column = dataset.data.table.column("embedding")
        self.dim = column.type.list_size
        # Arrow fixed-size lists of float32: zero-copy (n, D) views over the memory-mapped file, one per chunk.
        self._chunks = [chunk.flatten().to_numpy(zero_copy_only=True).reshape(-1, self.dim) for chunk in column.chunks]
        self._offsets = np.cumsum([0] + [len(chunk) for chunk in self._chunks])
        self._index = {caption_id: row for row, caption_id in enumerate(dataset["caption_id"])}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, caption_id: str) -> bool:
        return caption_id in self._index

    def lookup(self, caption_ids: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """The cached pooled LLM outputs of `caption_ids`, `(len(caption_ids), D)` float32."""
        try:
            rows = [self._index[caption_id] for caption_id in caption_ids]
        except KeyError as err:
            raise KeyError(f"caption id {err.args[0]!r} is not in the text cache at {self.path}") from None
        rows = np.asarray(rows, dtype=np.int64)
        chunk_of_row = np.searchsorted(self._offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for chunk in np.unique(chunk_of_row):
            where = chunk_of_row == chunk
            out[where] = self._chunks[chunk][rows[where] - self._offsets[chunk]]
        return torch.from_numpy(out).to(device or "cpu")

    def check_captions(self, captions: Dataset, text_column: str = "caption", id_column: str = "caption_id") -> None:
        """Raise `StaleTextCacheError` unless every caption of `captions` is cached, embedded from the same text."""
        self._check_hashes(_caption_hashes(captions, text_column, id_column))

    def _check_hashes(self, hashes: dict[str, str], every_row: bool = False) -> None:
        """Compare texts by digest first (fast path); per row when it differs or `every_row` is set."""
        if not every_row and _captions_digest(hashes) == self.captions_sha256:
            return
        stored = self.dataset.data.table.column("text_sha256").to_pylist()
        missing = [i for i in hashes if i not in self._index]
        changed = [i for i, digest in hashes.items() if i in self._index and stored[self._index[i]] != digest]
        problems = []
        if changed:
            problems.append(f"{len(changed)} of {len(hashes)} caption texts changed since it was built "
                            f"({_examples(changed)})")
        if missing:
            problems.append(f"{len(missing)} of {len(hashes)} caption ids are not in the cache ({_examples(missing)})")
        if problems:
            raise StaleTextCacheError(
                f"text cache at {self.path} does not match the captions: {'; '.join(problems)}; "
                "rebuild it with TextEmbeddingCache.build"
            )

    @classmethod
    def build(
        cls,
        model: XrayLLM2CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        captions: Dataset,
        output_dir: str | os.PathLike,
        text_column: str = "caption",
        id_column: str = "caption_id",
        batch_size: int = 64,
    ) -> "TextEmbeddingCache":
        """Run the (frozen) LLM once over `captions` and save the pooled outputs to `output_dir`.

        The `datasets.map` result is keyed on the model, the caption texts and the column names, so a disk-backed
        dataset reuses a previous result only when all of them are unchanged.
        """
        hashes = _caption_hashes(captions, text_column, id_column)
        captions_sha256 = _captions_digest(hashes)
        fingerprint = TextCacheFingerprint.of(model, tokenizer)
        map_key = sha256_json({"format": CACHE_FORMAT, "model": fingerprint.digest, "captions": captions_sha256,
                                "text_column": text_column, "id_column": id_column})
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device

        def embed(batch: dict) -> dict:
            tokens = _tokenize_for(model, tokenizer, batch[text_column]).to(device)
            with torch.inference_mode():
                pooled = model.get_llm_pooled_output(tokens["input_ids"], tokens["attention_mask"])
            return {
                "caption_id": [str(i) for i in batch[id_column]],
                "text_sha256": [text_sha256(text) for text in batch[text_column]],
                "embedding": pooled.float().cpu().numpy(),
            }

        features = Features({
            "caption_id": Value("string"),
            "text_sha256": Value("string"),
            "embedding": List(Value("float32"), length=model.config.llm_hidden_size),
        })
        try:
            embedded = captions.map(
                embed,
                batched=True,
                batch_size=batch_size,
                remove_columns=captions.column_names,
                features=features,
                new_fingerprint=map_key,
                desc="caching pooled LLM outputs",
            )
        finally:
            model.train(was_training)
        output_dir = Path(output_dir)
        (output_dir / _METADATA_FILE).unlink(missing_ok=True)  # no metadata until the new rows are checked
        embedded.save_to_disk(output_dir / _EMBEDDINGS_DIR)
        cache = cls(output_dir, load_from_disk(str(output_dir / _EMBEDDINGS_DIR)), fingerprint, captions_sha256)
        # the stored per-row text hashes (of the texts actually embedded), not only the digest, must match
        cache._check_hashes(hashes, every_row=True)
        metadata = {
            "format": CACHE_FORMAT, "count": len(embedded), "dim": model.config.llm_hidden_size,
            "fingerprint": asdict(fingerprint),
            "captions": {"sha256": captions_sha256, "text_column": text_column, "id_column": id_column},
        }
        (output_dir / _METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        return cache

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: XrayLLM2CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        captions: Dataset | None = None,
        text_column: str | None = None,
        id_column: str | None = None,
    ) -> "TextEmbeddingCache":
        """Open a cache for `model` + `tokenizer`; raise `StaleTextCacheError` if it was built with others.

        Pass `captions` (the caption dataset to look up) to also refuse a cache whose texts differ from the
        dataset's or that lacks some of its ids; the column names default to those the cache was built from.
        """
        path = Path(path)
        metadata_file = path / _METADATA_FILE
        if not metadata_file.is_file():
            raise FileNotFoundError(f"no text cache at {path} ({_METADATA_FILE} missing)")
        metadata = json.loads(metadata_file.read_text())
        if metadata.get("format") != CACHE_FORMAT:
            why = " (format 1 caches were not keyed on the caption texts)" if metadata.get("format") == 1 else ""
            raise StaleTextCacheError(
                f"text cache at {path} has format {metadata.get('format')}, expected {CACHE_FORMAT}{why}; "
                "rebuild it with TextEmbeddingCache.build"
            )
        stored = TextCacheFingerprint(**metadata["fingerprint"])
        current = TextCacheFingerprint.of(model, tokenizer)
        changed = current.differences(stored)
        if changed:
            raise StaleTextCacheError(
                f"text cache at {path} is stale: changed since it was built: {', '.join(changed)}; "
                "rebuild it with TextEmbeddingCache.build"
            )
        built_from = metadata["captions"]
        cache = cls(path, load_from_disk(str(path / _EMBEDDINGS_DIR)), stored, built_from["sha256"])
        if captions is not None:
            cache.check_captions(captions, text_column or built_from["text_column"],
                                 id_column or built_from["id_column"])
        return cache


__all__ = ["StaleTextCacheError", "TextCacheFingerprint", "TextEmbeddingCache", "tokenizer_fingerprint"]
