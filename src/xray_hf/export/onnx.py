"""ONNX export of a checkpoint's image, video and text encoders (`xray-hf export`).

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export, then onnxscript's translation and optimiser). It
takes our models as they are, EViT's top-k and ToMe's scatter-add included, and needs nothing registered per
architecture. optimum's exporter would need an `OnnxConfig` written for each of our `model_type`s, and its only
ONNX release (optimum-onnx 0.1.0) requires transformers < 4.58, while this package runs on transformers 5.

Each encoder is one file with a dynamic batch and, for images and videos, the resolution (and frame count) fixed
at export: a fixed token count keeps EViT's and ToMe's per-layer counts static, which the graph needs. Text files
take any batch and sequence length. Outputs are what the PyTorch model returns: for a CLIP checkpoint the
projected, unnormalised fp32 embeddings of `get_image_features` / `get_video_features` / `get_text_features`;
for a backbone checkpoint the pooled output. Every export is checked against PyTorch in onnxruntime on fresh
inputs before it is kept (cosine >= 0.9999 and max difference <= 1e-4, relative to the feature scale).

The folder holds `image.onnx`, `video.onnx`, `text.onnx` (those the model has), with `--int8` also
`*.int8.onnx` (`export/quantize.py`), the checkpoint's config, processor and tokenizer files, and
`xray_export.json` describing each file's inputs. `export/runtime.py` loads it.

`--int8` quantises the image and video encoders; the text encoder only when asked (`--int8 image video text`).
The vision encoders are where a search system spends its time (every item of the index), and dynamic int8 keeps
them close to float (the pipeline's CLIP: cosine 0.9999). A text tower's activations carry outliers that one
uint8 scale per tensor cannot hold: the pipeline CLIP's int8 MiniLM put OpenMoji's query "alien" at cosine 0.86
to its float embedding (0.73 with 8-bit weights), and queries are short texts embedded once each.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from collections.abc import Collection
from typing import Any

import numpy as np
import torch
from torch import nn

from ..modeling.visual import XrayVisualModel
from .compile import vision_towers

MANIFEST = "xray_export.json"
FORMAT_VERSION = 1
OPSET = 18
MIN_COSINE = 0.9999
MAX_DIFFERENCE = 1e-4
ENCODERS = ("image", "video", "text")
INT8_DEFAULT = ("image", "video")  # int8=True: the vision encoders (module docstring: why not the text one)
# what `quantize_int8` does, written into the manifest beside the int8 files
INT8_SCHEME = ("onnxruntime dynamic quantisation: MatMul/Gemm weights int8 per output channel in 7 bits (reduce_range, "
               "no overflow on CPUs without VNNI), activations uint8 per tensor at run time")
# files of a checkpoint folder a deployment needs beside the graphs (never weights or training state)
_SIDE_FILES = ("config.json", "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
               "merges.txt", "tokenizer.model", "chat_template.jinja", "added_tokens.json")


class ImageEncoder(nn.Module):
    """Pixels -> embedding: `get_image_features` (CLIP) or the backbone's pooled output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            return self.model.get_image_features(pixel_values=pixel_values).pooler_output.float()
        return self.model(pixel_values=pixel_values, return_dict=True).pooler_output.float()


class TextEncoder(nn.Module):
    """Tokens -> `get_text_features(input_ids, attention_mask).pooler_output` of whichever text tower it has."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output.float()


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def check_export_request(config: Any, image_size: tuple[int, int], num_frames: int | None) -> None:
    """Raise a `ValueError` naming the problem for a resolution or frame count the backbone cannot take."""
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    patch = config.patch_size
    if height % patch or width % patch:
        raise ValueError(
            f"cannot export at {height}x{width}: the size is fixed per exported file and must be a multiple of the "
            f"patch size {patch} (e.g. {max(patch, height // patch * patch)}x{max(patch, width // patch * patch)})"
        )
    if num_frames is not None and (num_frames <= 0 or num_frames % config.tubelet_size):
        raise ValueError(
            f"cannot export videos of {num_frames} frames: the frame count must be a positive multiple of the "
            f"tubelet size {config.tubelet_size}"
        )


def _compare_with_torch(
    path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Run the file in onnxruntime and the module in PyTorch on `inputs`: the smallest cosine between their features
    and the largest difference relative to the feature scale."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {name: value.numpy() for name, value in inputs.items()})[0]
    with torch.inference_mode():
        reference = module(**inputs).numpy()
    scale = max(float(np.abs(reference).max()), 1.0)
    return {"min_cosine": float((_unit(ours) * _unit(reference)).sum(-1).min()),
            "max_difference": float(np.abs(ours - reference).max()) / scale}


def _check_against_torch(
    path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]
) -> dict[str, float]:
    """`_compare_with_torch`, raising if the features differ beyond float rounding."""
    check = _compare_with_torch(path, module, inputs)
    if check["min_cosine"] < MIN_COSINE or check["max_difference"] > MAX_DIFFERENCE:
        raise RuntimeError(
            f"{path.name} differs from PyTorch: min cosine {check['min_cosine']:.6f} (needs >= {MIN_COSINE}), max "
            f"difference {check['max_difference']:.2e} relative to the feature scale (needs <= {MAX_DIFFERENCE})"
        )
    return check


def _int8_encoders(int8: bool | Collection[str]) -> set[str]:
    """The encoders `int8` asks to quantise: none, `INT8_DEFAULT` for True, or those named."""
    if isinstance(int8, bool):
        return set(INT8_DEFAULT) if int8 else set()
    if isinstance(int8, str):
        int8 = (int8,)
    unknown = sorted(set(int8) - set(ENCODERS))
    if unknown:
        raise ValueError(f"int8={sorted(int8)}: no encoder named {unknown} (encoders: {', '.join(ENCODERS)})")
    return set(int8)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], dynamic: dict[str, dict[int, Any]], path: Path,
            opset_version: int) -> None:
    program = torch.onnx.export(
        module, tuple(inputs.values()), dynamo=True, input_names=list(inputs), output_names=["embeds"],
        dynamic_shapes=dynamic, opset_version=opset_version, external_data=False, verbose=False,
    )
    program.save(str(path))


def _example_tokens(vocab_size: int, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, max(2, vocab_size), (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, length // 2:] = 0  # one padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _copy_side_files(source: str | os.PathLike | None, output: Path, model: nn.Module) -> list[str]:
    """Config, processor and tokenizer files of the checkpoint folder (the config alone for an in-memory model)."""
    if source is None:
        model.config.save_pretrained(output)
        return ["config.json"]
    copied = []
    for name in _SIDE_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, output / name)
            copied.append(name)
    return copied


def export_onnx(
    model: str | os.PathLike | nn.Module,
    output_dir: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    num_frames: int | None = None,
    video: bool = True,
    text: bool = True,
    int8: bool | Collection[str] = False,
    opset_version: int = OPSET,
) -> dict[str, Any]:
    """Export the encoders of `model` (a checkpoint directory or a loaded xray_hf model) to `output_dir`.

    `image_size` (default: the config's) and `num_frames` (default: the config's) are fixed per file; the batch is
    dynamic. `video=False` / `text=False` skip those encoders. `int8=True` adds dynamically quantised copies of the
    image and video encoders (`INT8_DEFAULT`), `int8=("image", "video", "text")` of the encoders named. Returns the
    manifest written to `output_dir/xray_export.json`.
    """
    int8_encoders = _int8_encoders(int8)
    source = None
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModel

        source = os.fspath(model)
        if not os.path.isdir(source):
            raise FileNotFoundError(f"model directory {source!r} does not exist")
        model = AutoModel.from_pretrained(source)
    towers = vision_towers(model)
    if not towers:
        raise ValueError(f"{type(model).__name__} has no XrayVisualModel: nothing to export")
    model = model.float().eval()
    vision_config = towers[0].config
    size = _pair(image_size) if image_size is not None else vision_config.image_size_hw
    frames = (num_frames if num_frames is not None else vision_config.num_frames) if video else None
    check_export_request(vision_config, size, frames)
    has_text = text and hasattr(model, "get_text_features") and getattr(model, "text_model", None) is not None
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)

    batch = torch.export.Dim("batch", min=1)
    channels = vision_config.num_channels
    image_module = ImageEncoder(model if hasattr(model, "get_image_features") else towers[0]).eval()
    generator = torch.Generator().manual_seed(0)
    encoders: dict[str, dict[str, Any]] = {}

    def pixels(rows: int, *frames_shape: int) -> torch.Tensor:
        return torch.randn(rows, *frames_shape, channels, *size, generator=generator)

    plans = [("image", image_module, {"pixel_values": pixels(2)}, {"pixel_values": pixels(3)},
              {"pixel_values": {0: batch}}, {"pixel_values": ["batch", channels, *size]})]
    if frames is not None:
        plans.append(("video", image_module, {"pixel_values": pixels(2, frames)}, {"pixel_values": pixels(3, frames)},
                      {"pixel_values": {0: batch}}, {"pixel_values": ["batch", frames, channels, *size]}))
    if has_text:
        text_module = TextEncoder(model).eval()
        vocab = int(getattr(model.text_model.get_input_embeddings(), "num_embeddings", 2))
        sequence = torch.export.Dim("sequence", min=1)
        plans.append(("text", text_module, _example_tokens(vocab, 2, 8, 0), _example_tokens(vocab, 3, 11, 1),
                      {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                      {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}))

    missing = sorted(int8_encoders - {plan[0] for plan in plans}) if not isinstance(int8, bool) else []
    if missing:
        raise ValueError(f"int8={sorted(int8_encoders)}: {missing} not exported (this export writes "
                         f"{', '.join(plan[0] for plan in plans)})")
    for name, module, example, fresh, dynamic, shapes in plans:
        path = output / f"{name}.onnx"
        _export(module, example, dynamic, path, opset_version)
        entry = {"file": path.name, "inputs": shapes, "output": "embeds", "dim": int(module(**example).shape[-1]),
                 "check": _check_against_torch(path, module, fresh)}
        if name in int8_encoders:
            from .quantize import quantize_int8

            int8_path = output / f"{name}.int8.onnx"
            quantize_int8(path, int8_path)
            entry["int8_file"] = int8_path.name
            entry["int8_check"] = _compare_with_torch(int8_path, module, fresh)  # recorded, not a gate: random inputs
        encoders[name] = entry

    manifest = {
        "format": FORMAT_VERSION,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "opset_version": opset_version,
        "model_type": model.config.model_type,
        "embedding": "get_*_features pooler_output (projected, not normalised)"
        if hasattr(model, "get_image_features") else "backbone pooler_output",
        "image_size": list(size),
        "num_frames": frames,
        "encoders": encoders,
        "int8": INT8_SCHEME if any("int8_file" in entry for entry in encoders.values()) else None,
        "files": _copy_side_files(source, output, model),
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


__all__ = ["export_onnx", "check_export_request", "ImageEncoder", "TextEncoder", "MANIFEST", "ENCODERS", "INT8_DEFAULT"]
