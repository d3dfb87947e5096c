"""Settings of the compressed embeddings (paper 6.3-6.4): a learned low-dimensional projection (100-d by default),
optionally with Matryoshka nested dimensions, beside int8 and binary quantisation of the full embedding.

`XrayCLIPConfig.compression_config` holds these settings as a plain dict (so `config.json` stays plain JSON);
`XrayCompressionConfig` is its validated form. The int8 ranges are data, not settings: they live as buffers in the
model's weights (see `xray_hf.modeling.compression`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

# what `compression=` accepts in XrayCLIPModel.get_*_features and XrayEmbeddingCompression.forward
COMPRESSIONS = ("projection", "int8", "binary")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class XrayCompressionConfig:
    r"""
    Settings of [`XrayEmbeddingCompression`].

    Args:
        compressed_dim (`int`, *optional*, defaults to 100):
            Output size of the learned projection (paper 6.3: 100-d embeddings from the 1024/1280-d ones); must
            not exceed the embedding it projects (the CLIP `projection_dim`).
        matryoshka_dims (`list[int]`, *optional*):
            Nested sizes trained together with `compressed_dim` (Matryoshka: the first `d` outputs, renormalised,
            are an embedding of their own). At inference, `dim=` may be any of these or `compressed_dim`.
        matryoshka_weights (`list[float]`, *optional*):
            Loss weight of each of `matryoshka_dims` (default 1 each; `compressed_dim` has weight 1 unless listed), as
            sentence-transformers' `MatryoshkaLoss`.
    """

    compressed_dim: int = 100
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.matryoshka_dims, Sequence) and not isinstance(self.matryoshka_dims, str):
            self.matryoshka_dims = list(self.matryoshka_dims)
        if isinstance(self.matryoshka_weights, Sequence) and not isinstance(self.matryoshka_weights, str):
            self.matryoshka_weights = [float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else w
                                       for w in self.matryoshka_weights]
        self.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | XrayCompressionConfig) -> XrayCompressionConfig:
        """From a dict (e.g. `config.compression_config`), refusing unknown keys; a config is copied."""
        if isinstance(values, XrayCompressionConfig):
            return cls(**values.to_dict())
        if not isinstance(values, Mapping):
            raise TypeError(f"compression_config must be a dict or an XrayCompressionConfig, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown compression_config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_string(self) -> str:
        """The settings as JSON, as `PreTrainedConfig.to_json_string` (what Trainer integrations such as TensorBoard
        log about the model being trained: the compress stage trains this module alone)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @property
    def dims(self) -> tuple[int, ...]:
        """Every output size the projection is trained for, largest first (`compressed_dim` and the nested ones)."""
        return tuple(sorted({self.compressed_dim, *(self.matryoshka_dims or ())}, reverse=True))

    @property
    def dim_weights(self) -> dict[int, float]:
        """Loss weight of each size in `dims`."""
        nested = self.matryoshka_dims or []
        weights = {self.compressed_dim: 1.0, **dict(zip(nested, self.matryoshka_weights or [1.0] * len(nested)))}
        return {dim: weights[dim] for dim in self.dims}

    def validate(self, embedding_dim: int | None = None) -> None:
        """Raise a `ValueError` naming the first bad setting; with `embedding_dim`, also check the sizes fit."""
        if not _positive_int(self.compressed_dim):
            raise ValueError(f"compressed_dim must be a positive int, got {self.compressed_dim!r}")
        dims = self.matryoshka_dims
        if dims is not None:
            if not isinstance(dims, list) or not dims or not all(_positive_int(d) for d in dims):
                raise ValueError(f"matryoshka_dims must be a non-empty list of positive ints, got {dims!r}")
            if len(set(dims)) != len(dims):
                raise ValueError(f"matryoshka_dims has duplicates: {dims}")
            too_big = [d for d in dims if d > self.compressed_dim]
            if too_big:
                raise ValueError(
                    f"matryoshka_dims {too_big} exceed compressed_dim ({self.compressed_dim}): nested dimensions "
                    "are prefixes of the projection's output"
                )
        weights = self.matryoshka_weights
        if weights is not None:
            if dims is None:
                raise ValueError("matryoshka_weights needs matryoshka_dims")
            if not isinstance(weights, list) or len(weights) != len(dims):
                raise ValueError(f"matryoshka_weights must give one weight per matryoshka_dims entry, got {weights!r}")
            if not all(isinstance(w, float) and w >= 0 for w in weights):
                raise ValueError(f"matryoshka_weights must be numbers >= 0, got {weights!r}")
        if embedding_dim is not None and self.compressed_dim > embedding_dim:
            raise ValueError(
                f"compressed_dim ({self.compressed_dim}) is larger than the embedding it compresses ({embedding_dim})"
            )

    def check_dim(self, dim: int | None) -> int:
        """The output size to use for `dim` (None: `compressed_dim`); a size the projection was not trained for
        raises a `ValueError`."""
        if dim is None:
            return self.compressed_dim
        if not _positive_int(dim) or dim not in self.dims:
            raise ValueError(
                f"dim must be one of the trained sizes {list(self.dims)} (compressed_dim and matryoshka_dims), "
                f"got {dim!r}"
            )
        return dim


__all__ = ["COMPRESSIONS", "XrayCompressionConfig"]
