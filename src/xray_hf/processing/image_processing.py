"""Image processor for XrayVisual: the paper's Variable Aspect Ratio resize (or resize + centre crop), then normalise.

Built on transformers' `TorchvisionBackend` (the current base of ViT/CLIP image processors), so input handling
(PIL / numpy / torch, channels first or last, grayscale and RGBA to RGB), `save_pretrained` / `from_pretrained`
and `AutoImageProcessor` work as for any transformers model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms.v2 import InterpolationMode
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PILImageResampling,
    SizeDict,
    is_pil_image,
    is_valid_image,
    make_flat_list_of_images,
    pil_torch_interpolation_mapping,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from .hub_mixin import XrayProcessorHubMixin
from .transforms import resize_and_center_crop, variable_aspect_ratio_resize

if TYPE_CHECKING:
    from transformers.image_utils import ImageInput

RESIZE_MODES = ("variable_aspect_ratio", "center_crop")


class XrayVisualImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    resize_mode (`str`, *optional*, defaults to `"variable_aspect_ratio"`):
        `"variable_aspect_ratio"`: resize so the image fits `size` with its aspect ratio kept and centre it on a
        black canvas (paper, section 4.10). `"center_crop"`: resize so the image covers `size`, then centre crop.
    """

    resize_mode: str | None


def to_interpolation(resample: Any) -> InterpolationMode:
    """Map a PIL resampling filter (or an `InterpolationMode`) to torchvision's `InterpolationMode`."""
    if resample is None:
        return InterpolationMode.BILINEAR
    if isinstance(resample, InterpolationMode):
        return resample
    if isinstance(resample, (PILImageResampling, int)) and resample in pil_torch_interpolation_mapping:
        return pil_torch_interpolation_mapping[resample]
    raise ValueError(f"Unsupported resample filter {resample!r}")


def check_geometry_kwargs(size: SizeDict | None, resize_mode: str | None) -> None:
    """Raise a ValueError unless `resize_mode` is known and `size` names an output (height, width)."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if size is None or not (size.height and size.width):
        raise ValueError(f"size must give the output height and width (an int, (h, w) or dict), got {size}")


def resize_to_target(
    images: torch.Tensor, size: SizeDict, resize_mode: str, resample: Any
) -> torch.Tensor:
    """Bring `images` (..., C, H, W) to exactly `size` with one geometry for the whole stack (e.g. a clip)."""
    target = (size.height, size.width)
    interpolation = to_interpolation(resample)
    if resize_mode == "variable_aspect_ratio":
        # Canvas value 0 before rescaling and normalisation: black, as in the paper.
        return variable_aspect_ratio_resize(images, target, fill=0, interpolation=interpolation)
    return resize_and_center_crop(images, target, interpolation=interpolation)


def _is_single_image(image: Any) -> bool:
    return is_pil_image(image) or (is_valid_image(image) and image.ndim in (2, 3))


class XrayVisualImageProcessor(XrayProcessorHubMixin, TorchvisionBackend):
    r"""
    Constructs an XrayVisual image processor.

    Every image becomes exactly `size`: with `resize_mode="variable_aspect_ratio"` (default) nothing is cropped
    or distorted, the image is letterboxed on black (pixel value 0, i.e. `-mean / std` after normalisation);
    with `"center_crop"` the image covers `size` and the overflow is cropped. Then pixels are rescaled by
    `rescale_factor` and normalised. Defaults use OpenAI CLIP's mean and std (the encoder is trained in CLIP
    style, and CLIP-family teachers/filters see the same statistics); pass `image_mean`/`image_std` to change.

    Args:
        size (`int`, `(height, width)` or `dict`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output size; rectangles are supported.
        resize_mode (`str`, *optional*, defaults to `"variable_aspect_ratio"`): see above.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`): resampling filter.
        do_resize, do_rescale, do_normalize, do_convert_rgb (`bool`, *optional*, default `True`): pipeline switches.
        rescale_factor (`float`, *optional*, defaults to `1/255`), image_mean, image_std: normalisation.

    Returns a `BatchFeature` with `pixel_values` of shape (B, C, H, W) (always stacked: all outputs share `size`).
    """

    valid_kwargs = XrayVisualImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resize_mode = "variable_aspect_ratio"
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[XrayVisualImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)

    def _validate_preprocess_kwargs(self, size=None, resize_mode=None, do_resize=None, **kwargs) -> None:
        super()._validate_preprocess_kwargs(size=size, do_resize=do_resize, **kwargs)
        if do_resize:
            check_geometry_kwargs(size, resize_mode)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        """Flatten the input to a list of images; unlike the base class, 2D (grayscale) arrays count as images."""
        images = self.fetch_images(images)
        if isinstance(images, (list, tuple)) and images and all(_is_single_image(image) for image in images):
            return list(images)
        if _is_single_image(images):
            return [images]
        try:
            return make_flat_list_of_images(images, expected_ndims=expected_ndims)
        except ValueError:
            shape = f"an array of shape {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
            raise ValueError(
                f"Expected an image (2D/3D), a batch of images (4D) or a list of images, got {shape}"
            ) from None

    def process_image(self, image: ImageInput, *args, **kwargs) -> torch.Tensor:
        """Convert one raw image to a channels-first tensor; a clear error for shapes that are no image."""
        try:
            return super().process_image(image, *args, **kwargs)
        except ValueError as err:
            shape = tuple(getattr(image, "shape", ()))
            raise ValueError(
                f"Cannot read an image of shape {shape}: expected (H, W), (H, W, C) or (C, H, W) with C in "
                f"(1, 3, 4) ({err})"
            ) from err

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resize_mode: str,
        resample: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float] | None,
        image_std: float | list[float] | None,
        disable_grouping: bool | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for shape, stacked in grouped.items():
            if do_resize:
                stacked = resize_to_target(stacked, size, resize_mode, resample)
            processed[shape] = self.rescale_and_normalize(
                stacked, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
        images = reorder_images(processed, grouped_index)
        if len({tuple(image.shape) for image in images}) > 1:
            raise ValueError(
                f"Images of different shapes cannot be batched: {sorted({tuple(i.shape) for i in images})}; "
                "keep do_resize=True"
            )
        return BatchFeature(data={"pixel_values": torch.stack(images)}, tensor_type=return_tensors)


__all__ = ["XrayVisualImageProcessor"]
