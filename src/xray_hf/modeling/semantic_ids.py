"""Semantic IDs (paper section 6.6): an embedding tokenised into K discrete codes by residual quantisation
(RQ, K levels) or product quantisation (PQ, K chunks), with codebooks from vector-quantize-pytorch.

`XraySemanticIDModel` holds vector-quantize-pytorch's `ResidualVQ` (RQ) or `VectorQuantize(heads=K,
separate_codebook_per_head=True)` (PQ); those give the matching, the k-means initialisation, the EMA codebook
updates (VQ-VAE-2) and the dead-code reset. `fit(embeddings)` trains the codebooks on a fixed set of
embeddings; `encode` gives the ids (B, K), `decode` the reconstruction (B, D); `save_pretrained` /
`from_pretrained` write and read config.json + model.safetensors.

Cosine matching and "codewords summed to reconstruct". With `use_cosine_sim`, the library normalises both the
input and its codes, so a codeword is a unit vector. Summing unit codewords does not reconstruct: after level
1 the residual is shorter than 1, and subtracting a unit codeword from it overshoots (the library's own
cosine `ResidualVQ` reconstructs worse at 2 levels than at 1). Here each code j of a level has a direction
e_j (the library's unit code, matched by cosine) and a length s_j, and its codeword is c_j = s_j e_j:
s_j > 0 does not change which code is the most cosine-similar, so matching by cosine against the codewords
is exactly the library's matching, and the K codewords are summed (RQ) or concatenated (PQ) to reconstruct.
s_j is fitted in closed form after the level's codebook is trained: the mean projection r . e_j of the
residuals r assigned to j (the least-squares length along e_j), clamped at 0; a code no item chose gets the
level's mean. With Euclidean matching the library's codes carry their length and s_j = 1.

What the library lacks, and is done here: the code lengths above; and RQ is trained greedily, level by
level (each level's EMA k-means runs on the fixed residuals of the levels before it, like faiss'
`ResidualQuantizer`), because `ResidualVQ.forward` subtracts the library's unit codes from the residual.
Our loop over `ResidualVQ.layers` gives the same ids as `ResidualVQ.forward` when every length is 1.
The paper's encoder/decoder around the quantiser (a VQ-VAE) is not built: the quantiser sees the (frozen,
optionally L2-normalised) embedding itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..configuration.semantic_ids import XraySemanticIDConfig
from ..hub_mixin import XrayHubMixin

DEFAULT_EPOCHS = 20


@dataclass
class XraySemanticIDOutput(ModelOutput):
    """Semantic IDs (B, K) of a batch and the embedding reconstructed from them (B, D), in the quantiser's
    input space (L2-normalised when `config.normalize_input`)."""

    semantic_ids: torch.LongTensor | None = None
    reconstruction: torch.FloatTensor | None = None


class XraySemanticIDModel(XrayHubMixin, PreTrainedModel):
    """Residual or product quantiser of embeddings into semantic IDs; see the module docstring."""

    config: XraySemanticIDConfig
    remote_code_requirements = ("vector_quantize_pytorch",)  # its quantisers (Hub remote code checks imports)
    config_class = XraySemanticIDConfig
    base_model_prefix = "semantic_ids"
    main_input_name = "embeddings"
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: XraySemanticIDConfig) -> None:
        # imported here: einx (its dependency) adds ~1 s to `import xray_hf`, which registers this class
        from vector_quantize_pytorch import ResidualVQ, VectorQuantize

        super().__init__(config)
        common = {
            "codebook_size": config.codebook_size,
            "use_cosine_sim": config.distance == "cosine",
            "kmeans_init": True,
            "kmeans_iters": config.kmeans_iters,
            "decay": config.decay,
            "threshold_ema_dead_code": config.threshold_ema_dead_code,
            "commitment_weight": 0.0,  # EMA codebooks on frozen embeddings: no loss to train with
            "rotation_trick": False,
            "sync_codebook": False,  # fitting is single-process
        }
        if config.method == "rq":
            self.quantizer: nn.Module = ResidualVQ(dim=config.embedding_dim, num_quantizers=config.num_levels,
                                                   **common)
        else:
            self.quantizer = VectorQuantize(
                dim=config.embedding_dim, heads=config.num_levels, separate_codebook_per_head=True,
                codebook_dim=config.chunk_dim, **common,
            )
        # s_j of every code of every level (chunk); 1 until fitted and for Euclidean matching
        self.register_buffer("codeword_scale", torch.ones(config.num_levels, config.codebook_size))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Codebooks are fitted to data (`fit`), never initialised at random: nothing to do."""

    # the quantiser has buffers only (EMA codebooks), so transformers' parameter-based lookups would fail
    @property
    def dtype(self) -> torch.dtype:
        return self.codeword_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.codeword_scale.device

    # -- codebooks --

    def _library_codebooks(self) -> list[nn.Module]:
        """vector-quantize-pytorch `Codebook` modules: one per RQ level, or the one PQ codebook of K heads."""
        if self.config.method == "rq":
            return [layer._codebook for layer in self.quantizer.layers]
        return [self.quantizer._codebook]

    @property
    def is_fitted(self) -> bool:
        """Whether every codebook has been initialised (by `fit`, or loaded)."""
        return all(bool(codebook.initted) for codebook in self._library_codebooks())

    def unit_codebooks(self) -> torch.Tensor:
        """The library's codes (K, N, d): unit directions under cosine matching."""
        if self.config.method == "rq":
            return torch.stack([codebook.embed[0] for codebook in self._library_codebooks()])
        return self.quantizer._codebook.embed

    def codebooks(self) -> torch.Tensor:
        """Codeword embeddings (K, N, d) that are summed (RQ) or concatenated (PQ) to reconstruct."""
        return self.unit_codebooks() * self.codeword_scale[..., None]

    # -- inputs --

    def prepare_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) as the quantiser sees them: float32, L2-normalised when `normalize_input`."""
        embeddings = torch.as_tensor(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (N, {self.config.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        if not embeddings.is_floating_point() or not torch.isfinite(embeddings).all():
            raise ValueError("embeddings must be finite floating-point values")
        x = embeddings.float().to(self.codeword_scale.device)
        return F.normalize(x, dim=-1) if self.config.normalize_input else x

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError("the quantiser has no codebooks yet: call fit(embeddings) or load a fitted one")

    @contextlib.contextmanager
    def _mode(self, training: bool) -> Iterator[None]:
        was_training = self.quantizer.training
        self.quantizer.train(training)
        try:
            with torch.no_grad():
                yield
        finally:
            self.quantizer.train(was_training)

    # -- encode / decode --

    def _assign(self, vq: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Ids of `x` under one library quantiser in eval mode: (B,) for an RQ level, (B, K) for PQ."""
        with self._mode(False):
            index = vq(x)[1]
        if self.config.method == "pq" and index.ndim == 1:  # the library drops the head axis of one head
            index = index[:, None]
        return index

    def encode(self, embeddings: torch.Tensor) -> torch.LongTensor:
        """Semantic IDs (B, K) of embeddings (B, D)."""
        self._check_fitted()
        x = self.prepare_embeddings(embeddings)
        if self.config.method == "pq":
            return self._assign(self.quantizer, x)
        codebooks = self.codebooks()
        residual, ids = x, []
        for level, layer in enumerate(self.quantizer.layers):
            index = self._assign(layer, residual)
            residual = residual - codebooks[level][index]
            ids.append(index)
        return torch.stack(ids, dim=1)

    def get_codewords(self, semantic_ids: torch.Tensor) -> torch.Tensor:
        """Codeword embeddings (B, K, d) of semantic IDs (B, K)."""
        self._check_fitted()
        ids = torch.as_tensor(semantic_ids).to(self.codeword_scale.device)
        shape = (self.config.num_levels,)
        if ids.ndim != 2 or ids.shape[1:] != shape or ids.is_floating_point():
            raise ValueError(f"semantic_ids must be integers of shape (B, {self.config.num_levels}), "
                             f"got {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.codebook_size):
            raise ValueError(f"semantic ids must lie in [0, {self.config.codebook_size})")
        codebooks = self.codebooks()
        levels = torch.arange(self.config.num_levels, device=ids.device)
        return codebooks[levels, ids.long()]

    def decode(self, semantic_ids: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, D): codewords summed (RQ) or concatenated (PQ)."""
        codewords = self.get_codewords(semantic_ids)
        return codewords.sum(1) if self.config.method == "rq" else codewords.flatten(1)

    def forward(self, embeddings: torch.Tensor) -> XraySemanticIDOutput:
        """Semantic IDs of `embeddings` (B, D) and their reconstruction."""
        ids = self.encode(embeddings)
        return XraySemanticIDOutput(semantic_ids=ids, reconstruction=self.decode(ids))

    # -- fitting --

    def _train_codebook(self, vq: nn.Module, data: torch.Tensor, epochs: int, batch_size: int,
                        generator: torch.Generator) -> None:
        """k-means initialisation on all of `data`, then `epochs` passes of EMA updates and dead-code resets
        over shuffled batches (the last, incomplete batch is dropped: a small batch would starve codes)."""
        with self._mode(True):
            vq(data)  # first training call: the library's k-means init, then one EMA step
            count = data.shape[0]
            for _ in range(epochs):
                order = torch.randperm(count, generator=generator).to(data.device)
                for start in range(0, count - batch_size + 1, batch_size):
                    vq(data[order[start : start + batch_size]])

    def _fit_scale(self, level: int, vectors: torch.Tensor, index: torch.Tensor) -> None:
        """s_j = mean projection of the vectors assigned to code j on its direction (cosine matching only)."""
        if self.config.distance != "cosine":
            return
        directions = self.unit_codebooks()[level]
        projection = (vectors * directions[index]).sum(-1)
        size = self.config.codebook_size
        sums = torch.zeros(size, device=vectors.device).index_add_(0, index, projection)
        counts = torch.bincount(index, minlength=size).float()
        scale = torch.where(counts > 0, sums / counts.clamp(min=1), projection.mean())
        self.codeword_scale[level] = scale.clamp(min=0.0)

    def fit(self, embeddings: torch.Tensor, *, epochs: int = DEFAULT_EPOCHS, batch_size: int | None = None,
            seed: int = 0) -> XraySemanticIDModel:
        """Train the codebooks on `embeddings` (N, D), N >= codebook_size; `batch_size` None = all N per step.
        Deterministic for a given seed; refits from scratch when called again."""
        x = self.prepare_embeddings(embeddings)
        count, size = x.shape[0], self.config.codebook_size
        if count < size:
            raise ValueError(f"codebook_size {size} is larger than the number of embeddings ({count}): "
                             "k-means needs at least one item per code")
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        batch_size = count if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = min(batch_size, count)
        for codebook in self._library_codebooks():
            codebook.initted.fill_(False)
        self.codeword_scale.fill_(1.0)
        generator = torch.Generator().manual_seed(seed)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)  # the library's k-means and dead-code reset sample with torch's RNG
            if self.config.method == "pq":
                self._train_codebook(self.quantizer, x, epochs, batch_size, generator)
                ids = self._assign(self.quantizer, x)
                chunks = x.view(count, self.config.num_levels, self.config.chunk_dim)
                for level in range(self.config.num_levels):
                    self._fit_scale(level, chunks[:, level], ids[:, level])
            else:
                residual = x
                for level, layer in enumerate(self.quantizer.layers):
                    self._train_codebook(layer, residual, epochs, batch_size, generator)
                    index = self._assign(layer, residual)
                    self._fit_scale(level, residual, index)
                    residual = residual - self.codebooks()[level][index]
        return self


__all__ = ["XraySemanticIDModel", "XraySemanticIDOutput"]
