"""Embedding cache for the frozen LLM of the LLM2CLIP text tower.

In the CLIP stage the LLM is frozen, so its pooled output for a caption never changes: run it once over the
caption dataset (`datasets.map`, batched), store the pooled outputs as Arrow keyed by caption id, and let each
CLIP step run only the adapter and projection (`XrayLLM2CLIPTextModel(llm_pooled_output=cache.lookup(ids))`).

The cache records a fingerprint of everything that changes a pooled output: the LLM's weights, the tokenizer,
and the embedding settings of the config (nested LLM config, pooling, bidirectional attention, max length,
padding side). Opening it with a different model or tokenizer raises `StaleTextCacheError` naming what changed.
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

from .llm2clip import XrayLLM2CLIPTextModel

CACHE_FORMAT = 1
_METADATA_FILE = "xray_text_cache.json"
_EMBEDDINGS_DIR = "embeddings"


class StaleTextCacheError(ValueError):
    """The cache was built with a different LLM, tokenizer or embedding settings than the model given."""


def _sha256_tensors(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


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
    return hashlib.sha256(body.encode() + _sha256_json(specials).encode()).hexdigest()


@dataclass(frozen=True)
class TextCacheFingerprint:
    """The three things a cached pooled LLM output depends on, hashed separately for clear stale errors."""

    llm_weights: str
    tokenizer: str
    embedding_settings: str

    @classmethod
    def of(cls, model: XrayLLM2CLIPTextModel, tokenizer: PreTrainedTokenizerBase) -> "TextCacheFingerprint":
        return cls(
            llm_weights=_sha256_tensors(model.llm.state_dict()),
            tokenizer=tokenizer_fingerprint(tokenizer),
            embedding_settings=_sha256_json(model.config.embedding_settings()),
        )

    def differences(self, other: "TextCacheFingerprint") -> list[str]:
        return [name for name, value in asdict(self).items() if getattr(other, name) != value]

    @property
    def digest(self) -> str:
        return _sha256_json(asdict(self))


def _tokenize_for(model: XrayLLM2CLIPTextModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]):
    return tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=model.config.max_text_length,
        padding_side=model.config.padding_side,
        return_tensors="pt",
    )


class TextEmbeddingCache:
    """Pooled LLM outputs keyed by caption id, memory-mapped from Arrow; `lookup(ids)` gives a `(B, D)` tensor."""

    def __init__(self, path: str | os.PathLike, dataset: Dataset, fingerprint: TextCacheFingerprint):
        self.path = Path(path)
        self.dataset = dataset
        self.fingerprint = fingerprint
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
        """Run the (frozen) LLM once over `captions` and save the pooled outputs to `output_dir`."""
        for column in (text_column, id_column):
            if column not in captions.column_names:
                raise ValueError(f"captions has no column {column!r} (columns: {captions.column_names})")
        ids = [str(i) for i in captions[id_column]]
        if len(set(ids)) != len(ids):
            raise ValueError(f"caption ids in column {id_column!r} are not unique")
        fingerprint = TextCacheFingerprint.of(model, tokenizer)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device

        def embed(batch: dict) -> dict:
            tokens = _tokenize_for(model, tokenizer, batch[text_column]).to(device)
            with torch.inference_mode():
                pooled = model.get_llm_pooled_output(tokens["input_ids"], tokens["attention_mask"])
            return {
                "caption_id": [str(i) for i in batch[id_column]],
                "embedding": pooled.float().cpu().numpy(),
            }

        features = Features(
            {"caption_id": Value("string"), "embedding": List(Value("float32"), length=model.config.llm_hidden_size)}
        )
        try:
            embedded = captions.map(
                embed,
                batched=True,
                batch_size=batch_size,
                remove_columns=captions.column_names,
                features=features,
                new_fingerprint=fingerprint.digest[:32] + _sha256_json(ids)[:32],
                desc="caching pooled LLM outputs",
            )
        finally:
            model.train(was_training)
        output_dir = Path(output_dir)
        embedded.save_to_disk(output_dir / _EMBEDDINGS_DIR)
        metadata = {"format": CACHE_FORMAT, "count": len(embedded), "dim": model.config.llm_hidden_size,
                    "fingerprint": asdict(fingerprint)}
        (output_dir / _METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        return cls.load(output_dir, model, tokenizer, _fingerprint=fingerprint)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: XrayLLM2CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        _fingerprint: TextCacheFingerprint | None = None,
    ) -> "TextEmbeddingCache":
        """Open a cache for `model` + `tokenizer`; raise `StaleTextCacheError` if it was built with others."""
        path = Path(path)
        metadata_file = path / _METADATA_FILE
        if not metadata_file.is_file():
            raise FileNotFoundError(f"no text cache at {path} ({_METADATA_FILE} missing)")
        metadata = json.loads(metadata_file.read_text())
        if metadata.get("format") != CACHE_FORMAT:
            raise StaleTextCacheError(
                f"text cache at {path} has format {metadata.get('format')}, expected {CACHE_FORMAT}"
            )
        stored = TextCacheFingerprint(**metadata["fingerprint"])
        current = _fingerprint or TextCacheFingerprint.of(model, tokenizer)
        changed = current.differences(stored)
        if changed:
            raise StaleTextCacheError(
                f"text cache at {path} is stale: changed since it was built: {', '.join(changed)}; "
                "rebuild it with TextEmbeddingCache.build"
            )
        return cls(path, load_from_disk(str(path / _EMBEDDINGS_DIR)), stored)


__all__ = ["TextEmbeddingCache", "TextCacheFingerprint", "StaleTextCacheError", "tokenizer_fingerprint"]
