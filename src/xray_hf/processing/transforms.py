"""The paper's Variable Aspect Ratio (VAR) transform (section 4.10) as a torchvision v2 transform.

VAR resizes an image so that it fits the target size with its aspect ratio kept (for a square target the
longer side fills it exactly), then centres it on a black canvas of the target size. Nothing is cropped and
nothing is distorted. Because it is built from `torchvision.transforms.v2.functional.resize` and `pad`, it
works on PIL images, plain tensors `(..., C, H, W)` (so a whole clip `(T, C, H, W)` gets one geometry) and
`tv_tensors` (Image, Video, Mask, BoundingBoxes, KeyPoints move consistently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torchvision.transforms.v2 import InterpolationMode, Transform, query_size
from torchvision.transforms.v2 import functional as F


class VariableAspectRatioParams(NamedTuple):
    """Where the resized content lands on the canvas: its size and the (left, top, right, bottom) padding."""

    resized_height: int
    resized_width: int
    padding: list[int]


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, Sequence) or isinstance(size, str):
        raise TypeError(f"size must be an int or a (height, width) pair, got {size!r}")
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise TypeError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size}")
    return size


def get_variable_aspect_ratio_params(height: int, width: int, size: int | Sequence[int]) -> VariableAspectRatioParams:
    """Geometry of VAR for an input of `height` x `width` and a target `size` (int or (height, width)).

    The scale is `min(target_h / height, target_w / width)`: the limiting side fills the target exactly and the
    other side is rounded half up (exact integer arithmetic, so 100x50 -> 224 gives exactly 224x112). The content
    is centred; an odd remainder puts the extra pixel on the right/bottom.
    """
    target_h, target_w = _as_size(size)
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize an empty image of size {height}x{width}")
    if height * target_w >= width * target_h:  # height is the limiting side
        new_h, new_w = target_h, max(1, (2 * width * target_h + height) // (2 * height))
    else:
        new_h, new_w = max(1, (2 * height * target_w + width) // (2 * width)), target_w
    left, top = (target_w - new_w) // 2, (target_h - new_h) // 2
    return VariableAspectRatioParams(new_h, new_w, [left, top, target_w - new_w - left, target_h - new_h - top])


def variable_aspect_ratio_resize(
    inpt: Any,
    size: int | Sequence[int],
    fill: float | Sequence[float] = 0,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    antialias: bool = True,
) -> Any:
    """Functional VAR: resize `inpt` to fit `size` keeping its aspect ratio and centre it on a `fill` canvas."""
    height, width = F.get_size(inpt)
    params = get_variable_aspect_ratio_params(height, width, size)
    return _apply(inpt, params, fill, interpolation, antialias)


def _apply(inpt: Any, params: VariableAspectRatioParams, fill, interpolation, antialias) -> Any:
    if F.get_size(inpt) != [params.resized_height, params.resized_width]:
        inpt = F.resize(
            inpt, [params.resized_height, params.resized_width], interpolation=interpolation, antialias=antialias
        )
    if any(params.padding):
        inpt = F.pad(inpt, params.padding, fill=fill)
    return inpt


def resize_and_center_crop(
    inpt: Any,
    size: int | Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    antialias: bool = True,
) -> Any:
    """The usual alternative to VAR: resize so the input covers `size` (aspect ratio kept), then centre crop.

    For a square target this is "resize the shortest side to `size`, centre crop"; rectangles work the same way.
    """
    target_h, target_w = _as_size(size)
    height, width = F.get_size(inpt)
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize an empty image of size {height}x{width}")
    if height * target_w <= width * target_h:  # height is the limiting side: it matches, width overflows
        new_h, new_w = target_h, max(target_w, (2 * width * target_h + height) // (2 * height))
    else:
        new_h, new_w = max(target_h, (2 * height * target_w + width) // (2 * width)), target_w
    if [new_h, new_w] != [height, width]:
        inpt = F.resize(inpt, [new_h, new_w], interpolation=interpolation, antialias=antialias)
    return F.center_crop(inpt, [target_h, target_w])


class VariableAspectRatioResize(Transform):
    """Resize to fit `size` keeping the aspect ratio, then centre on a black (`fill`) canvas of exactly `size`.

    Args:
        size (`int` or `(height, width)`): output size; rectangular targets are supported.
        fill (`float` or per-channel sequence, defaults to 0): canvas value, in the input's own scale
            (0 is black for uint8 and for float images in [0, 1]).
        interpolation (`InterpolationMode`, defaults to bilinear): resampling filter.
        antialias (`bool`, defaults to True): antialias when downsampling tensors (PIL always does).

    All inputs of one call (e.g. an image and its boxes, or every frame of a `(T, C, H, W)` clip) share one geometry.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        fill: float | Sequence[float] = 0,
        interpolation: InterpolationMode | str = InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        self.size = _as_size(size)
        self.fill = fill
        self.interpolation = InterpolationMode(interpolation)
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        return {"params": get_variable_aspect_ratio_params(height, width, self.size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _apply(inpt, params["params"], self.fill, self.interpolation, self.antialias)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, fill={self.fill}, interpolation={self.interpolation.value}, "
            f"antialias={self.antialias}"
        )


__all__ = [
    "VariableAspectRatioParams",
    "VariableAspectRatioResize",
    "get_variable_aspect_ratio_params",
    "resize_and_center_crop",
    "variable_aspect_ratio_resize",
]
