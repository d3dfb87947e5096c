"""Reading a sentence-transformers folder (`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`)
into the settings of the LLM2CLIP tower, so a frozen sentence embedder gives exactly what
`SentenceTransformer(folder).encode(texts)` gives: the transformer, its pooling, its normalisation, its max length.

Only the modules that map onto the tower are accepted (Transformer, Pooling with one mode, Normalize); a Dense
layer or several pooling modes would make the tower's pooled output differ, so they are refused by name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configuration.text import SENTENCE_TRANSFORMERS_POOLING

_MODULES_FILE = "modules.json"
_KNOWN = ("Transformer", "Pooling", "Normalize")


@dataclass
class SentenceEmbedderFolder:
    """Where a sentence-transformers model keeps its transformer, and the tower settings it implies."""

    model_path: Path
    config_kwargs: dict[str, Any] = field(default_factory=dict)


def is_sentence_transformers_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / _MODULES_FILE).is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def read_sentence_transformers_folder(path: str | os.PathLike) -> SentenceEmbedderFolder:
    """The transformer's folder and `{pooling, normalize_pooled, max_text_length}` of a sentence-transformers
    folder; raises `ValueError` naming a module the tower cannot reproduce."""
    root = Path(path)
    modules = _read_json(root / _MODULES_FILE)
    kinds = {}
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in _KNOWN:
            raise ValueError(
                f"{root} has a {module.get('type')!r} module ({module.get('path')!r}); the LLM2CLIP tower reproduces "
                f"only {', '.join(_KNOWN)} (its own adapter and projection come after the pooled output)"
            )
        kinds[kind] = root / module.get("path", "")
    if "Transformer" not in kinds:
        raise ValueError(f"{root}/{_MODULES_FILE} lists no Transformer module")
    kwargs: dict[str, Any] = {"normalize_pooled": "Normalize" in kinds}
    if "Pooling" in kinds:
        pooling = _read_json(kinds["Pooling"] / "config.json")
        if isinstance(pooling.get("pooling_mode"), str):  # sentence-transformers >= 6
            modes = [pooling["pooling_mode"]]
        else:
            modes = [name.removeprefix("pooling_mode_") for name, on in pooling.items()
                     if name.startswith("pooling_mode_") and on is True]
        if len(modes) != 1 or modes[0] not in SENTENCE_TRANSFORMERS_POOLING:
            raise ValueError(
                f"{kinds['Pooling']}/config.json turns on {modes or 'no pooling mode'}; the tower pools with exactly "
                f"one of {sorted(SENTENCE_TRANSFORMERS_POOLING)}"
            )
        kwargs["pooling"] = SENTENCE_TRANSFORMERS_POOLING[modes[0]]
        if pooling.get("include_prompt", True) is False:
            raise ValueError(f"{kinds['Pooling']}/config.json excludes the prompt from pooling (include_prompt), "
                             "which the tower does not reproduce")
    model_path = kinds["Transformer"]
    max_length = _max_seq_length(model_path)
    if max_length is not None:
        kwargs["max_text_length"] = max_length
    model_settings = root / "config_sentence_transformers.json"
    if model_settings.is_file() and _read_json(model_settings).get("default_prompt_name"):
        raise ValueError(f"{model_settings} sets a default prompt, which encode() prepends and the tower does not; "
                         "remove default_prompt_name or put the prompt into the captions")
    return SentenceEmbedderFolder(model_path=model_path, config_kwargs=kwargs)


def _max_seq_length(model_path: Path) -> int | None:
    """The Transformer module's token limit: `sentence_bert_config.json`'s `max_seq_length` (sentence-transformers
    < 6), else the tokenizer's `model_max_length` (where version 6 keeps it)."""
    settings = model_path / "sentence_bert_config.json"
    if settings.is_file() and _read_json(settings).get("max_seq_length"):
        return int(_read_json(settings)["max_seq_length"])
    tokenizer = model_path / "tokenizer_config.json"
    limit = _read_json(tokenizer).get("model_max_length") if tokenizer.is_file() else None
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None


__all__ = ["SentenceEmbedderFolder", "is_sentence_transformers_folder", "read_sentence_transformers_folder"]
