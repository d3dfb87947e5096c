"""Run an `xray-hf export` folder in onnxruntime with the PyTorch model's feature API.

`XrayOnnxModel.from_pretrained(folder)` has `get_image_features`, `get_video_features` and `get_text_features`
returning a `ModelOutput` with the embedding in `pooler_output`, as `XrayCLIPModel` does, so evaluation and search
code takes it in place of the PyTorch model. Inputs are checked before they reach the graph: a resolution or frame
count other than the one fixed at export, and attention masks that are not 0/1 or have an empty row (the checks the
eager text towers make, which the exported graph leaves out), get a `ValueError` naming the problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .onnx import INT8_DEFAULT, MANIFEST


def is_export_folder(directory: str | os.PathLike) -> bool:
    """Whether `directory` was written by `xray-hf export` (it has the manifest)."""
    return (Path(directory) / MANIFEST).is_file()


def _with_int8(manifest: dict[str, Any]) -> tuple[str, ...]:
    return tuple(name for name, entry in manifest["encoders"].items() if "int8_file" in entry)


class XrayOnnxModel(nn.Module):
    """The encoders of an export folder as onnxruntime sessions: fp32, every int8 copy the folder has with
    `int8=True` (`--int8` writes the image and video ones: an int8 index queried by fp32 text; README, Deployment),
    or the int8 copies of the encoders named (`int8=("image", "video", "text")`)."""

    def __init__(self, directory: str | os.PathLike, int8: bool | Collection[str] = False,
                 providers: list[str] | None = None, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.directory} has no {MANIFEST}: not a folder written by xray-hf export")
        self.manifest = json.loads(manifest_path.read_text())
        self.config = AutoConfig.from_pretrained(self.directory)
        encoders = self.manifest["encoders"]
        if isinstance(int8, bool):
            self.int8_encoders = set(_with_int8(self.manifest)) if int8 else set()
            if int8 and not self.int8_encoders:
                raise ValueError(f"{self.directory} has no int8 encoder: export it with --int8")
        else:
            self.int8_encoders = set(int8)
            unknown = sorted(self.int8_encoders - set(encoders))
            if unknown:
                raise ValueError(f"int8={sorted(int8)}: {self.directory} has no {unknown} encoder (exported: "
                                 f"{sorted(encoders)})")
        self.int8 = bool(self.int8_encoders)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.sessions = {}
        for name, entry in encoders.items():
            file = entry.get("int8_file") if name in self.int8_encoders else entry["file"]
            if file is None:
                hint = "--int8" if name in INT8_DEFAULT else f"--int8 {' '.join(INT8_DEFAULT)} {name}"
                raise ValueError(f"{self.directory} has no int8 {name} encoder: export it with {hint}")
            self.sessions[name] = ort.InferenceSession(
                str(self.directory / file), options, providers=providers or ["CPUExecutionProvider"]
            )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> "XrayOnnxModel":
        return cls(directory, **kwargs)

    @staticmethod
    def int8_files_in(directory: str | os.PathLike) -> tuple[str, ...]:
        """The encoders of an export folder that have an int8 copy (what `--int8` wrote)."""
        return _with_int8(json.loads((Path(directory) / MANIFEST).read_text()))

    def _session(self, name: str):
        if name not in self.sessions:
            raise ValueError(f"{self.directory} has no {name} encoder (exported: {sorted(self.sessions)})")
        return self.sessions[name]

    def _check_pixels(self, name: str, pixel_values: np.ndarray) -> None:
        expected = self.manifest["encoders"][name]["inputs"]["pixel_values"]
        fixed = expected[1:]
        if pixel_values.ndim != len(expected) or list(pixel_values.shape[1:]) != fixed:
            layout = "(batch, frames, channels, height, width)" if name == "video" else "(batch, channels, height, width)"
            raise ValueError(
                f"the exported {name} encoder takes {layout} = (batch, {', '.join(map(str, fixed))}), fixed at export; "
                f"got {tuple(pixel_values.shape)}. Resize with the processor saved beside it, or export again with "
                f"--image-size{' and --num-frames' if name == 'video' else ''} set to this input's"
            )

    def _run(self, name: str, inputs: dict[str, np.ndarray]) -> BaseModelOutputWithPooling:
        embeds = self._session(name).run(None, inputs)[0]
        return BaseModelOutputWithPooling(pooler_output=torch.from_numpy(embeds))

    def get_image_features(self, pixel_values: torch.Tensor | np.ndarray, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Images `(B, C, H, W)` (or videos, `(B, T, C, H, W)`) at the exported size -> embeddings `(B, D)`."""
        pixels = _numpy(pixel_values, np.float32)
        name = "video" if pixels.ndim == 5 else "image"
        self._check_pixels(name, pixels)
        return self._run(name, {"pixel_values": pixels})

    def get_video_features(self, pixel_values: torch.Tensor | np.ndarray, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Videos `(B, T, C, H, W)` at the exported size and frame count -> embeddings `(B, D)`."""
        pixels = _numpy(pixel_values, np.float32)
        if pixels.ndim != 5:
            raise ValueError(f"videos must be (batch, frames, channels, height, width), got {tuple(pixels.shape)}")
        return self.get_image_features(pixels)

    def get_text_features(
        self, input_ids: torch.Tensor | np.ndarray, attention_mask: torch.Tensor | np.ndarray | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Tokens `(B, L)` with their 0/1 attention mask -> embeddings `(B, D)`."""
        ids = _numpy(input_ids, np.int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(ids.shape)}")
        mask = np.ones_like(ids) if attention_mask is None else _numpy(attention_mask, np.int64)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids shape {tuple(ids.shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must contain only 0 and 1")
        if not mask.any(axis=1).all():
            raise ValueError("every row of attention_mask needs at least one token (an empty caption cannot be embedded)")
        return self._run("text", {"input_ids": ids, "attention_mask": mask})

    def forward(self, pixel_values: torch.Tensor | np.ndarray) -> BaseModelOutputWithPooling:
        return self.get_image_features(pixel_values)


def _numpy(value: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)


__all__ = ["XrayOnnxModel", "is_export_folder"]
