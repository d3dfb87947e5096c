"""The README's first command: embed one real image with an XrayVisual model, and show its throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from PIL import Image

from .configuration.visual import XrayVisualConfig
from .modeling.visual import XrayVisualModel
from .processing.image_processing import XrayVisualImageProcessor


def load_image(path: str | None) -> Image.Image:
    """An RGB image from `path`, or scikit-image's bundled astronaut photo (public domain)."""
    if path is None:
        from skimage import data

        return Image.fromarray(data.astronaut())
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path!r}") from None
    except OSError as error:
        raise ValueError(f"cannot read {path!r} as an image: {error}") from None


@dataclass
class EmbedResult:
    """The pooled embedding (1, hidden_size) of the image and the model's measured throughput on it."""

    pooled: torch.Tensor
    images_per_second: float
    batch_size: int
    compiled: bool
    threads: int


def embed_image(
    path: str | None = None, preset: str = "tiny", model_path: str | None = None, *, compile: bool = False,
    batch_size: int = 8, rounds: int = 3,
) -> EmbedResult:
    """Embed one image with a saved model or a randomly initialised preset, and time the model on a batch of
    `batch_size` copies (`rounds` timed calls after a warm-up, which is where `compile` compiles)."""
    if batch_size < 1 or rounds < 1:
        raise ValueError(f"batch_size and rounds must be >= 1, got {batch_size} and {rounds}")
    if model_path is not None:
        model = XrayVisualModel.from_pretrained(model_path)
    else:
        model = XrayVisualModel(XrayVisualConfig.from_preset(preset))
    model.eval()
    if compile:
        from .export.compile import compile_for_inference

        compile_for_inference(model)
    height, width = model.config.image_size_hw
    processor = XrayVisualImageProcessor(size={"height": height, "width": width})
    pixel_values = processor(images=load_image(path), return_tensors="pt")["pixel_values"]
    batch = pixel_values.expand(batch_size, *pixel_values.shape[1:]).contiguous()
    with torch.inference_mode():
        pooled = model(batch).pooler_output[:1]  # warm-up (and compilation)
        start = time.perf_counter()
        for _ in range(rounds):
            model(batch)
        seconds = (time.perf_counter() - start) / rounds
    return EmbedResult(pooled=pooled, images_per_second=batch_size / seconds, batch_size=batch_size, compiled=compile,
                       threads=torch.get_num_threads())
