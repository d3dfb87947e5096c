"""The model side of search: one checkpoint embeds gallery items and queries into the index's space.

`SearchEmbedder` loads an `XrayCLIPModel` checkpoint, or an `xray-hf export` folder run in onnxruntime (int8 image
encoder: faster indexing), with its processors (`xray_hf.checkpoint.load_checkpoint`) and embeds
decoded images (C, H, W), video clips (T, C, H, W) and texts exactly as `xray-hf eval` does
(`eval.features.image_features` / `encode_texts`: videos through `get_video_features`). Embeddings are then brought
into the index's space: L2-normalised, or the model's learned low-dimensional projection
(`compression="projection"`, unit-norm); the compressed kinds also take the model's own int8 codes or sign bits
(`compress_embeddings`).

A fingerprint (the embeddings of a fixed text and a fixed image) is stored with an index, so that a query with
another checkpoint is refused rather than answered with meaningless scores.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import decode_image, decode_video_clip
from ..eval.data import ProcessorTransform
from ..eval.features import device_and_dtype, encode_texts, frozen, image_features
from ..eval.options import EmbedOptions
from ..export.runtime import is_export_folder
from ..modeling.compression import quantize_binary

PROBE_TEXT = "xray-hf search index probe: a red heart"
FINGERPRINT_COSINE = 0.999  # same checkpoint: the probes agree to float noise; another one: far below


def probe_image(size: int = 64) -> torch.Tensor:
    """A fixed (3, size, size) uint8 image: colour gradients, so every channel and position differ."""
    ramp = torch.linspace(0, 255, size)
    return torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                        (255 - ramp)[None, :].expand(size, size)]).round().to(torch.uint8)


class SearchEmbedder:
    """A CLIP checkpoint ready to embed gallery items and queries (see the module docstring)."""

    def __init__(self, model_dir: str | os.PathLike, compression: str | None = None,
                 compressed_dim: int | None = None, embed: EmbedOptions | None = None):
        from ..checkpoint import load_checkpoint

        if compression not in (None, "projection"):
            raise ValueError(f"compression must be None or 'projection' (int8 and binary are index kinds), "
                             f"got {compression!r}")
        self.model_dir = os.fspath(model_dir)
        if not os.path.isdir(self.model_dir):
            raise FileNotFoundError(f"model directory {self.model_dir!r} does not exist")
        pieces = load_checkpoint(self.model_dir, need_text=True, video=True)
        if not hasattr(pieces.model, "get_image_features") or not hasattr(pieces.model, "get_text_features"):
            raise ValueError(f"{self.model_dir} holds a {type(pieces.model).__name__}, not a CLIP model: search "
                             "needs get_image_features and get_text_features")
        embed = embed or EmbedOptions()
        self.model = embed.place(pieces.model)  # on its device, the vision tower compiled when asked
        self.tokenizer = pieces.tokenizer
        self.transform = ProcessorTransform(pieces.image_processor, pieces.video_processor)
        self.num_frames = embed.frames(pieces.video_processor)
        self.stride = embed.stride
        self.compression, self.compressed_dim = compression, compressed_dim
        if compression == "projection":
            self._check_compression("projection")
            self.compressed_dim = self.model.embedding_compression.config.check_dim(compressed_dim)

    # ------------------------------------------------------------------------------------------------ sizes
    @property
    def embedding_dim(self) -> int:
        """Width of the raw embedding (`projection_dim`)."""
        return int(self.model.config.projection_dim)

    @property
    def dim(self) -> int:
        """Width of the vectors in the index: the raw embedding or the projection."""
        return int(self.compressed_dim) if self.compression == "projection" else self.embedding_dim

    def _check_compression(self, what: str) -> Any:
        module = getattr(self.model, "embedding_compression", None)
        if module is None and is_export_folder(self.model_dir):
            raise ValueError(f"{what} needs the model's compressed embeddings, and {self.model_dir} is an ONNX export "
                             "folder, which holds the encoders only: index with the checkpoint it was exported from")
        if module is None:
            raise ValueError(f"{what} needs the model's compressed embeddings, and {self.model_dir} has none: train "
                             "the compress stage (xray-hf train compress) and index with its checkpoint")
        return module

    def int8_ranges(self) -> np.ndarray:
        """The calibrated int8 ranges (2, dim) of the compress stage."""
        module = self._check_compression("an int8 index")
        if not bool(module.int8_calibrated):
            raise ValueError(f"{self.model_dir} has no calibrated int8 ranges: train the compress stage first")
        return module.int8_ranges.float().cpu().numpy()

    # ------------------------------------------------------------------------------------------------ inputs
    def prepare_image(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded (C, H, W) uint8 image -> the processor's pixel values."""
        return self.transform(image)

    def prepare_video(self, clip: torch.Tensor) -> torch.Tensor:
        """A decoded (T, C, H, W) uint8 clip -> the processor's pixel values (T, C, H, W)."""
        return self.transform(clip)

    def load_image(self, image: Any) -> torch.Tensor:
        """A PIL image, an (H, W, C) array or a path / media record -> decoded (C, H, W) uint8."""
        if isinstance(image, np.ndarray):
            array = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
            return torch.from_numpy(np.ascontiguousarray(array[:, :, :3])).permute(2, 0, 1)
        if hasattr(image, "convert"):  # PIL
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
        return decode_image(image).as_subclass(torch.Tensor)

    def load_video(self, video: Any) -> torch.Tensor:
        """A path / media record -> the centre clip (T, C, H, W) uint8 the index's videos were embedded from."""
        clip = decode_video_clip(video, self.num_frames, self.stride, "center", np.random.default_rng(0))
        return clip.frames.as_subclass(torch.Tensor)

    # ------------------------------------------------------------------------------------------------ embeddings
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw float32 embeddings (B, projection_dim) of processed images (B, C, H, W) or clips (B, T, C, H, W)."""
        device, dtype = device_and_dtype(self.model)
        with frozen(self.model):
            return image_features(self.model, pixel_values.to(device, dtype)).cpu()

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Raw float32 embeddings (B, projection_dim) of texts."""
        return encode_texts(texts, self.model, self.tokenizer)

    def index_vectors(self, raw: torch.Tensor) -> np.ndarray:
        """Raw embeddings -> the index's vectors: L2-normalised, or the model's unit-norm projection."""
        if self.compression == "projection":
            with torch.no_grad():
                vectors = self.model.compress_embeddings(raw, "projection", self.compressed_dim)
        else:
            vectors = F.normalize(raw.float(), dim=-1)
        return vectors.float().cpu().numpy()

    def codes(self, raw: torch.Tensor, kind: str) -> np.ndarray | None:
        """The model's compressed codes a kind stores: int8 codes (`int8`), packed sign bits (`binary`)."""
        with torch.no_grad():
            if kind == "int8":
                return self._check_compression("an int8 index")(raw, "int8").cpu().numpy()
            if kind == "binary":
                module = getattr(self.model, "embedding_compression", None)
                bits = module(raw, "binary") if module is not None else quantize_binary(raw)
                return bits.cpu().numpy()
        return None

    def fingerprint(self) -> dict[str, list[float]]:
        """Index-space vectors of a fixed text and a fixed image (what `matches` compares)."""
        text = self.index_vectors(self.embed_texts([PROBE_TEXT]))[0]
        image = self.index_vectors(self.embed_pixels(self.prepare_image(probe_image())[None]))[0]
        return {"text": [float(v) for v in text], "image": [float(v) for v in image]}

    def check_fingerprint(self, stored: dict[str, list[float]], index_path: str,
                          mine: dict[str, list[float]] | None = None) -> None:
        """Refuse a checkpoint whose probes (`mine`, computed when not given) differ from those the index was built
        with."""
        mine = mine if mine is not None else self.fingerprint()
        for name in ("text", "image"):
            a, b = np.asarray(mine[name]), np.asarray(stored.get(name, []))
            if a.shape != b.shape:
                raise ValueError(f"the index at {index_path} holds {b.shape[0] if b.ndim else 0}-d embeddings, but "
                                 f"{self.model_dir} gives {a.shape[0]}-d ones: use the checkpoint the index was "
                                 "built with")
            cosine = float(a @ b / max(1e-12, np.linalg.norm(a) * np.linalg.norm(b)))
            if cosine < FINGERPRINT_COSINE:
                raise ValueError(f"the index at {index_path} was built with another checkpoint than {self.model_dir} "
                                 f"(its {name} probe embeds differently: cosine {cosine:.4f}); use the same model, or "
                                 "rebuild the index with xray-hf index")


__all__ = ["PROBE_TEXT", "SearchEmbedder", "probe_image"]
