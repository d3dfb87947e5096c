"""The README's first command: embed one real image with an XrayVisual model."""

from __future__ import annotations

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


def embed_image(path: str | None = None, preset: str = "tiny", model_path: str | None = None) -> torch.Tensor:
    """Pooled embedding (1, hidden_size) of one image, from a saved model or a randomly initialised preset."""
    if model_path is not None:
        model = XrayVisualModel.from_pretrained(model_path)
    else:
        model = XrayVisualModel(XrayVisualConfig.from_preset(preset))
    height, width = model.config.image_size_hw
    processor = XrayVisualImageProcessor(size={"height": height, "width": width})
    inputs = processor(images=load_image(path), return_tensors="pt")
    with torch.inference_mode():
        return model.eval()(**inputs).pooler_output
