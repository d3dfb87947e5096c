"""Loading a saved checkpoint directory with its processors: what evaluation, search, curation and the compress
stage open a model with.

`load_checkpoint(path)` reads the model with `AutoModel` and, beside it, the tokenizer (`AutoTokenizer`), the image
processor (`AutoImageProcessor`) and, for videos, the video processor (`AutoVideoProcessor`), so any CLIP-shaped
checkpoint with its processor files works: `XrayCLIPModel`, or transformers' `CLIPModel`.

An `xray-hf export` folder (it has `xray_export.json`) loads as an `XrayOnnxModel`: onnxruntime sessions with the
feature API, running the folder's int8 files where it has them (`--int8`: the image and video encoders), beside
the processors and tokenizer the export copied. So `xray-hf eval`, `embed`, `index` and `search` take an export
folder as `--model` (the compile and device options do not apply to it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and its processors (None where the directory has none)."""

    model: Any
    tokenizer: Any = None
    image_processor: Any = None
    video_processor: Any = None

    def __getitem__(self, key: str) -> Any:
        """`checkpoint["model"]`: the mapping access of callers written when this was a dict."""
        return getattr(self, key)


def load_checkpoint(model_dir: str | os.PathLike, need_text: bool = True, video: bool = False) -> Checkpoint:
    """The model and processors of a checkpoint directory. A missing tokenizer is an error when `need_text`; the
    video processor is read only with `video`; a directory with neither an image nor a video processor is refused."""
    from transformers import AutoImageProcessor, AutoTokenizer

    path = os.fspath(model_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    checkpoint = Checkpoint(model=_load_model(path))
    if need_text:
        try:
            checkpoint.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path!r} has no loadable tokenizer, which text-side tasks need ({error})") from error
    try:
        checkpoint.image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        checkpoint.image_processor = None
    if video:
        try:
            from transformers import AutoVideoProcessor

            checkpoint.video_processor = AutoVideoProcessor.from_pretrained(path)
        except (OSError, ValueError, ImportError):
            checkpoint.video_processor = None
    if checkpoint.image_processor is None and checkpoint.video_processor is None:
        raise ValueError(f"{path!r} has no image or video processor; save one beside the model")
    return checkpoint


def _load_model(path: str) -> Any:
    """`AutoModel.from_pretrained(path)`, or an `XrayOnnxModel` for an export folder."""
    from .export.runtime import XrayOnnxModel, is_export_folder

    if is_export_folder(path):
        return XrayOnnxModel(path, int8=XrayOnnxModel.int8_files_in(path))
    from transformers import AutoModel

    return AutoModel.from_pretrained(path)


__all__ = ["Checkpoint", "load_checkpoint"]
