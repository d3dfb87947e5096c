"""What the embedding caches share: content hashing for their fingerprints, the stale-cache error, and
`load_or_build`, which opens a cache or rebuilds it when it is missing or stale."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

Cache = TypeVar("Cache")


class StaleCacheError(ValueError):
    """A cache was built from other inputs (weights, settings, texts or samples) than those given."""


def sha256_tensors(state_dict: dict[str, torch.Tensor]) -> str:
    """The sha256 (hex) of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """The sha256 (hex) of `value` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def text_sha256(text: str) -> str:
    """The sha256 (hex) of one caption text, as stored beside its embedding."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_or_build(load: Callable[[], Cache], build: Callable[[], Cache], path: str | os.PathLike, what: str) -> Cache:
    """`load()`, or `build()` when the cache at `path` is missing (`FileNotFoundError`) or stale (`StaleCacheError`);
    `what` names the cache in the log line that says why it is built."""
    try:
        return load()
    except (FileNotFoundError, StaleCacheError) as reason:
        logger.info("building the %s at %s (%s)", what, path, reason)
        return build()


__all__ = ["StaleCacheError", "load_or_build", "sha256_json", "sha256_tensors", "text_sha256"]
