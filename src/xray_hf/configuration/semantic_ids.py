"""Configuration of the semantic-ID tokenizer (paper section 6.6): residual or product quantisation of an
embedding into K discrete codes, with EMA codebooks, k-means initialisation and dead-code reset."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .visual import XrayConfigMixin, _is_int, _is_number

METHODS = ("rq", "pq")
DISTANCES = ("cosine", "euclidean")
# the paper matches residuals by cosine similarity (RQ); PQ's chunks are matched as faiss' ProductQuantizer does
DEFAULT_DISTANCE = {"rq": "cosine", "pq": "euclidean"}


class XraySemanticIDConfig(XrayConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an [`XraySemanticIDModel`].

    Args:
        embedding_dim (`int`, *optional*, defaults to 512):
            Dimension D of the embeddings to quantise.
        method (`str`, *optional*, defaults to `"rq"`):
            `"rq"`: residual quantisation, K levels applied one after the other to the residual, codewords
            summed to reconstruct. `"pq"`: product quantisation, the embedding split into K chunks of D / K
            quantised in parallel, codewords concatenated to reconstruct.
        num_levels (`int`, *optional*, defaults to 3):
            K: levels (RQ) or chunks (PQ); the length of a semantic ID.
        codebook_size (`int`, *optional*, defaults to 256):
            N: codes per level (or chunk).
        distance (`str`, *optional*):
            How a vector is matched against a codebook: `"cosine"` (the paper's RQ; each codeword is a unit
            direction times a fitted length, see the model) or `"euclidean"`. Defaults to `"cosine"` for RQ
            and `"euclidean"` for PQ.
        normalize_input (`bool`, *optional*, defaults to `True`):
            L2-normalise embeddings before quantising (CLIP embeddings are compared by cosine).
        decay (`float`, *optional*, defaults to 0.8):
            EMA decay of the codebook updates (vector-quantize-pytorch's default).
        kmeans_iters (`int`, *optional*, defaults to 10):
            Iterations of the k-means that initialises each codebook.
        threshold_ema_dead_code (`float`, *optional*, defaults to 2.0):
            A code whose EMA count of assigned items per batch falls below this is reset to a random item of
            the batch; 0 disables the reset.
    """

    model_type = "xray_semantic_ids"

    def __init__(
        self,
        embedding_dim: int = 512,
        method: str = "rq",
        num_levels: int = 3,
        codebook_size: int = 256,
        distance: str | None = None,
        normalize_input: bool = True,
        decay: float = 0.8,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 2.0,
        **kwargs: Any,
    ) -> None:
        self.embedding_dim = embedding_dim
        self.method = method
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.distance = distance
        self.normalize_input = bool(normalize_input)
        self.decay = decay
        self.kmeans_iters = kmeans_iters
        self.threshold_ema_dead_code = threshold_ema_dead_code
        super().__init__(**kwargs)
        self.normalize_xray()
        self.validate_xray()

    def normalize_xray(self) -> None:
        if self.distance is None and self.method in DEFAULT_DISTANCE:
            self.distance = DEFAULT_DISTANCE[self.method]

    def validate_xray(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        for name in ("embedding_dim", "num_levels", "kmeans_iters"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.codebook_size) or self.codebook_size < 2:
            raise ValueError(f"codebook_size must be an integer >= 2, got {self.codebook_size!r}")
        if self.method == "pq" and self.embedding_dim % self.num_levels:
            raise ValueError(
                f"product quantisation splits the embedding into num_levels chunks: embedding_dim "
                f"{self.embedding_dim} is not divisible by {self.num_levels}"
            )
        if not _is_number(self.decay) or not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay!r}")
        if not _is_number(self.threshold_ema_dead_code) or self.threshold_ema_dead_code < 0:
            raise ValueError(f"threshold_ema_dead_code must be >= 0, got {self.threshold_ema_dead_code!r}")

    @property
    def chunk_dim(self) -> int:
        """Dimension of one codeword: D for RQ, D / K for PQ."""
        return self.embedding_dim // self.num_levels if self.method == "pq" else self.embedding_dim


__all__ = ["DISTANCES", "METHODS", "XraySemanticIDConfig"]
