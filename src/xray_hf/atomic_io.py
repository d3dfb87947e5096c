"""Files a kill must never leave half-written (run states, data positions, reports): written to a temporary file
beside the target, then renamed over it, so a reader finds the old file or the new one."""

from __future__ import annotations

import json
import os
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, value: Any, **dump_kwargs: Any) -> None:
    """`json.dumps(value, **dump_kwargs)` to `path` atomically."""
    write_text_atomic(path, json.dumps(value, **dump_kwargs))


__all__ = ["write_json_atomic", "write_text_atomic"]
