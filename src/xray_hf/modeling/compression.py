"""Compressed embeddings for deployment (paper 6.3-6.4): a learned low-dimensional projection (100-d by default,
optionally Matryoshka-nested), int8 quantisation with per-dimension ranges calibrated on a sample, and binary
quantisation (packed sign bits, Hamming search) with float re-ranking of the top candidates.

Everything works on the L2-normalised embedding, the one similarity is computed on:

- `projection`: `normalize(W @ normalize(e))[:dim]`, renormalised (Matryoshka: any trained `dim` is a prefix);
  `W` is trained by `xray_hf.losses.SimilarityDistillationLoss` to keep the full embedding's similarities.
- `int8`: sentence-transformers' `quantize_embeddings(..., "int8", calibration_embeddings=...)`: per dimension,
  `floor((x - min) / ((max - min) / 255)) - 128`, clipped, with `min`/`max` from the calibration sample
  (stored as the `int8_ranges` buffer, so they save and load with the weights).
- `binary`: one bit per dimension (`x > 0`), packed 8 to a byte as `numpy.packbits` (sentence-transformers'
  `ubinary`); searched by Hamming distance, the top candidates re-scored with float embeddings.

`XrayEmbeddingCompression` holds the projection and the int8 ranges; `XrayCompressionMixin` gives
`XrayCLIPModel` one call for all of it: `model.get_image_features(pixel_values, compression="int8")` (also
`get_video_features` / `get_text_features`, and `compress_embeddings` on precomputed embeddings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration.compression import COMPRESSIONS, XrayCompressionConfig

_POPCOUNT = torch.tensor([value.bit_count() for value in range(256)], dtype=torch.int32)
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)  # numpy.packbits' big-endian order
HAMMING_CHUNK_ELEMENTS = 1 << 26  # query rows x corpus rows x bytes per XOR block


# ------------------------------------------------------------------------------------------------ functions
def _float_2d(name: str, embeddings: torch.Tensor) -> torch.Tensor:
    embeddings = torch.as_tensor(embeddings)
    if embeddings.ndim != 2 or not embeddings.is_floating_point():
        raise ValueError(f"{name} must be a 2-D float tensor (batch, dim), got {embeddings.dtype} {tuple(embeddings.shape)}")
    return embeddings


def int8_ranges(calibration_embeddings: torch.Tensor) -> torch.Tensor:
    """Per-dimension `[min, max]` (2, D) of a calibration sample (sentence-transformers' int8 ranges)."""
    sample = _float_2d("calibration_embeddings", calibration_embeddings).float()
    if sample.shape[0] < 2:
        raise ValueError("int8 calibration needs at least 2 embeddings (ranges from one embedding are degenerate)")
    if not torch.isfinite(sample).all():
        raise ValueError("calibration embeddings contain NaN or infinite values")
    return torch.stack([sample.amin(0), sample.amax(0)])


def _starts_steps(ranges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ranges = ranges.float()
    steps = (ranges[1] - ranges[0]) / 255
    return ranges[0], torch.where(steps == 0, torch.ones_like(steps), steps)


def quantize_int8(embeddings: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """int8 codes (B, D) of `embeddings` with per-dimension `ranges` (2, D), as sentence-transformers'
    `quantize_embeddings(embeddings, "int8", ranges=ranges)`: 256 equal bins per dimension, values outside clipped."""
    embeddings = _float_2d("embeddings", embeddings).float()
    if ranges.shape != (2, embeddings.shape[1]):
        raise ValueError(f"ranges must have shape (2, {embeddings.shape[1]}), got {tuple(ranges.shape)}")
    starts, steps = _starts_steps(ranges.to(embeddings.device))
    codes = torch.floor((embeddings - starts) / steps).clamp(0, 255)
    return (codes - 128).to(torch.int8)


def dequantize_int8(codes: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Float32 values (B, D) at the lower edge of each int8 code's bin (sentence-transformers' dequantisation)."""
    if codes.dtype != torch.int8:
        raise ValueError(f"codes must be int8, got {codes.dtype}")
    starts, steps = _starts_steps(ranges.to(codes.device))
    return (codes.float() + 128) * steps + starts


def quantize_binary(embeddings: torch.Tensor) -> torch.Tensor:
    """Packed sign bits (B, ceil(D / 8)) uint8: bit `x > 0` per dimension, 8 to a byte, first dimension in the
    high bit (`numpy.packbits(embeddings > 0, axis=-1)`, sentence-transformers' `ubinary`)."""
    embeddings = _float_2d("embeddings", embeddings)
    bits = (embeddings > 0).to(torch.int32)
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = F.pad(bits, (0, pad))
    packed = (bits.view(bits.shape[0], -1, 8) * _BIT_WEIGHTS.to(bits.device)).sum(-1)
    return packed.to(torch.uint8)


def unpack_binary(bits: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed bits (B, ceil(dim / 8)) -> float +-1 vectors (B, dim) (their dot product is dim - 2 x Hamming)."""
    if bits.dtype != torch.uint8 or bits.ndim != 2:
        raise ValueError(f"bits must be a 2-D uint8 tensor, got {bits.dtype} {tuple(bits.shape)}")
    if bits.shape[1] != math.ceil(dim / 8):
        raise ValueError(f"{bits.shape[1]} bytes per row cannot hold exactly {dim} bits")
    unpacked = (bits.to(torch.int32).unsqueeze(-1) & _BIT_WEIGHTS.to(bits.device)).ne(0).flatten(1)[:, :dim]
    return unpacked.float() * 2 - 1


def hamming_distance(query_bits: torch.Tensor, corpus_bits: torch.Tensor) -> torch.Tensor:
    """Hamming distances (Q, N) int32 between packed bit rows (popcount of XOR, in query chunks)."""
    for name, bits in (("query_bits", query_bits), ("corpus_bits", corpus_bits)):
        if bits.dtype != torch.uint8 or bits.ndim != 2:
            raise ValueError(f"{name} must be a 2-D uint8 tensor of packed bits, got {bits.dtype} {tuple(bits.shape)}")
    if query_bits.shape[1] != corpus_bits.shape[1]:
        raise ValueError(f"bytes per row differ: {query_bits.shape[1]} and {corpus_bits.shape[1]}")
    table = _POPCOUNT.to(query_bits.device)
    # the (rows, N, bytes) XOR block and its int64 lookup grow with the corpus: size the query chunk to a fixed
    # number of elements (~512 MB of int64 indices), not a fixed number of rows
    rows = max(1, HAMMING_CHUNK_ELEMENTS // max(1, corpus_bits.shape[0] * corpus_bits.shape[1]))
    blocks = []
    for start in range(0, query_bits.shape[0], rows):
        xor = torch.bitwise_xor(query_bits[start : start + rows, None, :], corpus_bits[None, :, :])
        blocks.append(table[xor.long()].sum(-1, dtype=torch.int32))
    return torch.cat(blocks) if blocks else torch.zeros(0, corpus_bits.shape[0], dtype=torch.int32)


def _check_k(top_k: int, corpus_size: int) -> int:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    return min(top_k, corpus_size)


def binary_search(
    query_bits: torch.Tensor, corpus_bits: torch.Tensor, top_k: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top_k` nearest corpus rows of each query by Hamming distance: `(distances, indices)` (Q, k), nearest
    first, ties in corpus order."""
    distances = hamming_distance(query_bits, corpus_bits)
    k = _check_k(top_k, corpus_bits.shape[0])
    key = distances.long() * corpus_bits.shape[0] + torch.arange(corpus_bits.shape[0], device=distances.device)
    indices = key.topk(k, dim=1, largest=False).indices
    return distances.gather(1, indices), indices


def rerank(
    query_embeds: torch.Tensor, corpus_embeds: torch.Tensor, candidates: torch.Tensor, top_k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score each query's `candidates` (Q, C) (corpus indices) by cosine with the float embeddings and keep
    the best `top_k` (default all): `(scores, indices)` (Q, k), best first."""
    query = F.normalize(_float_2d("query_embeds", query_embeds).float(), dim=-1)
    corpus = F.normalize(_float_2d("corpus_embeds", corpus_embeds).float(), dim=-1)
    if candidates.ndim != 2 or candidates.shape[0] != query.shape[0]:
        raise ValueError(f"candidates must be (queries, C) = ({query.shape[0]}, C), got {tuple(candidates.shape)}")
    scores = torch.einsum("qd,qcd->qc", query, corpus[candidates])
    k = _check_k(top_k if top_k is not None else candidates.shape[1], candidates.shape[1])
    scores, order = scores.topk(k, dim=1)
    return scores, candidates.gather(1, order)


def binary_search_rerank(
    query_embeds: torch.Tensor,
    corpus_bits: torch.Tensor,
    corpus_embeds: torch.Tensor,
    top_k: int = 10,
    rescore_multiplier: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary search then float re-ranking (sentence-transformers' `rescore_multiplier`): the query's bits find
    `top_k * rescore_multiplier` candidates by Hamming distance, whose float `corpus_embeds` (kept on disk, say)
    re-score them against the float query; returns the best `top_k` `(scores, indices)`."""
    if not isinstance(rescore_multiplier, int) or rescore_multiplier < 1:
        raise ValueError(f"rescore_multiplier must be a positive int, got {rescore_multiplier!r}")
    _, candidates = binary_search(quantize_binary(query_embeds), corpus_bits, top_k * rescore_multiplier)
    return rerank(query_embeds, corpus_embeds, candidates, top_k)


def embedding_bytes(compression: str | None, embedding_dim: int, dim: int | None = None) -> int:
    """Storage of one embedding: float32 (`None`), the projection's `dim` float32 values, `int8` (one byte per
    dimension) or `binary` (one bit per dimension, whole bytes)."""
    if compression is None:
        return 4 * embedding_dim
    if compression == "projection":
        if dim is None:
            raise ValueError("the projection's size needs dim")
        return 4 * dim
    if compression == "int8":
        return embedding_dim
    if compression == "binary":
        return math.ceil(embedding_dim / 8)
    raise ValueError(f"compression must be one of {COMPRESSIONS} or None, got {compression!r}")


# ---------------------------------------------------------------------------------------------------- module
class XrayEmbeddingCompression(nn.Module):
    """The learned projection (`projection`, D -> `compressed_dim`, no bias) and the int8 ranges (`int8_ranges`
    (2, D) and `int8_calibrated`, buffers saved with the weights) of one embedding space."""

    def __init__(self, config: XrayCompressionConfig | Mapping[str, Any], embedding_dim: int):
        super().__init__()
        self.config = XrayCompressionConfig.from_dict(config)
        self.config.validate(embedding_dim)
        self.embedding_dim = embedding_dim
        self.projection = nn.Linear(embedding_dim, self.config.compressed_dim, bias=False)
        self.register_buffer("int8_ranges", torch.zeros(2, embedding_dim))
        self.register_buffer("int8_calibrated", torch.tensor(False))

    def _check_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        embeds = _float_2d("embeddings", embeds)
        if embeds.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings have {embeds.shape[1]} dimensions; this compression expects {self.embedding_dim}")
        return embeds

    def project(self, embeds: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """Unit-norm `dim`-d embeddings (B, dim) (default `compressed_dim`; Matryoshka: any trained size)."""
        dim = self.config.check_dim(dim)
        weight = self.projection.weight
        outputs = self.projection(F.normalize(self._check_embeds(embeds).float(), dim=-1).to(weight.dtype))
        return F.normalize(outputs[:, :dim].float(), dim=-1)

    @torch.no_grad()
    def calibrate_int8(self, embeds: torch.Tensor) -> torch.Tensor:
        """Set the int8 ranges from a sample (B, D) of (unnormalised or normalised) embeddings; returns them.
        Use a sample of what will be quantised: both modalities for a shared image-text space."""
        ranges = int8_ranges(F.normalize(self._check_embeds(embeds).float(), dim=-1))
        self.int8_ranges.copy_(ranges.to(self.int8_ranges))
        self.int8_calibrated.fill_(True)
        return self.int8_ranges

    def _ranges(self) -> torch.Tensor:
        if not bool(self.int8_calibrated):
            raise ValueError(
                "int8 quantisation is not calibrated: call calibrate_int8(sample_embeddings) (or train the compress "
                "stage, which calibrates it) before compression='int8'"
            )
        return self.int8_ranges

    def quantize_int8(self, embeds: torch.Tensor) -> torch.Tensor:
        """int8 codes (B, D) of the normalised embeddings with the calibrated ranges."""
        return quantize_int8(F.normalize(self._check_embeds(embeds).float(), dim=-1), self._ranges())

    def dequantize_int8(self, codes: torch.Tensor) -> torch.Tensor:
        """Approximate normalised embeddings (B, D) float32 from int8 codes."""
        if codes.ndim != 2 or codes.shape[1] != self.embedding_dim:
            raise ValueError(f"codes must be (batch, {self.embedding_dim}), got {tuple(codes.shape)}")
        return dequantize_int8(codes, self._ranges())

    def quantize_binary(self, embeds: torch.Tensor) -> torch.Tensor:
        """Packed sign bits (B, ceil(D / 8)) uint8."""
        return quantize_binary(self._check_embeds(embeds))

    def forward(self, embeds: torch.Tensor, compression: str, dim: int | None = None) -> torch.Tensor:
        """`embeds` (B, D) -> `projection`: unit-norm float (B, dim); `int8`: int8 codes (B, D); `binary`: packed
        uint8 bits (B, ceil(D / 8))."""
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if dim is not None and compression != "projection":
            raise ValueError(f"dim sets the projection's size; it does not apply to compression={compression!r}")
        if compression == "projection":
            return self.project(embeds, dim)
        if compression == "int8":
            return self.quantize_int8(embeds)
        return self.quantize_binary(embeds)

    def extra_repr(self) -> str:
        return f"dims={list(self.config.dims)}, int8_calibrated={bool(self.int8_calibrated)}"


def init_compression_weights(module: XrayEmbeddingCompression) -> None:
    """Initialise through `transformers.initialization` (loaded tensors are skipped): a random orthonormal
    projection (a Johnson-Lindenstrauss start, which training improves on) and uncalibrated int8 ranges."""
    from transformers import initialization as init

    init.orthogonal_(module.projection.weight)
    init.zeros_(module.int8_ranges)
    init.zeros_(module.int8_calibrated)


# ----------------------------------------------------------------------------------------------------- model
class XrayCompressionMixin:
    """Compressed embeddings for a CLIP-shaped `PreTrainedModel` whose config has `projection_dim` and
    `compression_config`: the module sits at `embedding_compression` (None without a compression config)."""

    embedding_compression: XrayEmbeddingCompression | None

    def _build_embedding_compression(self) -> None:
        settings = getattr(self.config, "compression_config", None)
        self.embedding_compression = (
            None if settings is None else XrayEmbeddingCompression(settings, self.config.projection_dim)
        )

    def add_embedding_compression(
        self, compression_config: XrayCompressionConfig | Mapping[str, Any] | None = None
    ) -> XrayEmbeddingCompression:
        """Attach a new compression module (untrained projection, uncalibrated int8), replacing any present, and
        record its settings in `config.compression_config` so it saves and loads with the model."""
        config = XrayCompressionConfig.from_dict(compression_config or {})
        config.validate(self.config.projection_dim)
        self.config.compression_config = config.to_dict()
        module = XrayEmbeddingCompression(config, self.config.projection_dim)
        init_compression_weights(module)
        reference = next(self.parameters())
        self.embedding_compression = module.to(device=reference.device)
        return self.embedding_compression

    def compress_embeddings(
        self, embeds: torch.Tensor, compression: str, dim: int | None = None
    ) -> torch.Tensor:
        """Compress embeddings (B, projection_dim), e.g. a `pooler_output` computed earlier; see
        `XrayEmbeddingCompression.forward`."""
        if self.embedding_compression is None:
            raise ValueError(
                f"compression={compression!r} needs a compression module: this model's config has no "
                "compression_config (add one with add_embedding_compression() and train it with the compress stage)"
            )
        return self.embedding_compression(embeds, compression, dim)

    def _compressed_output(self, outputs: Any, compression: str | None, compressed_dim: int | None) -> Any:
        """`outputs` with `pooler_output` replaced by its compressed form (unchanged when `compression` is None)."""
        if compression is None:
            if compressed_dim is not None:
                raise ValueError("compressed_dim needs compression='projection'")
            return outputs
        outputs.pooler_output = self.compress_embeddings(outputs.pooler_output, compression, compressed_dim)
        return outputs


__all__ = [
    "COMPRESSIONS",
    "XrayCompressionMixin",
    "XrayEmbeddingCompression",
    "binary_search",
    "binary_search_rerank",
    "dequantize_int8",
    "embedding_bytes",
    "hamming_distance",
    "init_compression_weights",
    "int8_ranges",
    "quantize_binary",
    "quantize_int8",
    "rerank",
    "unpack_binary",
]
