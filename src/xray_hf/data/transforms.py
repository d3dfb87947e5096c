"""Training and evaluation transforms for images and videos (paper 4.9, 4.10), and SimCLR views (4.2.4).

Built from torchvision transforms v2. A video arrives as one `tv_tensors.Video` `(T, C, H, W)`, and v2 draws
random parameters once per call, so every frame of a clip gets the same crop, flip, jitter and blur.

The output resolution lives in a `Resolution`, a two-number tensor in shared memory: DataLoader workers
(persistent ones too) read it at every sample, so the progressive-resolution callback can change it in the
main process mid-training. Batches already prefetched keep the old size; `SampleCollator(resolution=...)`
resizes the stragglers of a batch that straddles the change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..processing.transforms import VariableAspectRatioResize

RESIZE_MODES = ("random_resized_crop", "variable_aspect_ratio", "center_crop")


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return size


class Resolution:
    """An output size `(height, width)` shared with DataLoader worker processes; change it with `set`."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self._value = torch.tensor(_as_size(size), dtype=torch.int64).share_memory_()

    @property
    def size(self) -> tuple[int, int]:
        return int(self._value[0]), int(self._value[1])

    def set(self, size: int | Sequence[int]) -> None:
        self._value.copy_(torch.tensor(_as_size(size), dtype=torch.int64))

    def __repr__(self) -> str:
        return f"Resolution{self.size}"


class _ResizableTransform:
    """Base: rebuild the v2 pipeline whenever the shared resolution changes."""

    def __init__(self, resolution: Resolution | int | Sequence[int]) -> None:
        self.resolution = resolution if isinstance(resolution, Resolution) else Resolution(resolution)
        self._built_for: tuple[int, int] | None = None
        self._pipeline: v2.Transform | None = None

    def set_resolution(self, size: int | Sequence[int]) -> None:
        """Change the output size (seen by workers from their next sample on)."""
        self.resolution.set(size)

    def build(self, size: tuple[int, int]) -> v2.Transform:
        raise NotImplementedError

    @property
    def pipeline(self) -> v2.Transform:
        size = self.resolution.size
        if size != self._built_for:
            self._pipeline, self._built_for = self.build(size), size
        return self._pipeline

    def __call__(self, inputs: Any) -> Any:
        return self.pipeline(_as_tv_tensor(inputs))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pipeline"], state["_built_for"] = None, None  # rebuilt in the worker
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resolution={self.resolution.size}, pipeline={self.pipeline})"


def _as_tv_tensor(inputs: Any) -> Any:
    if isinstance(inputs, (tv_tensors.Image, tv_tensors.Video)) or not isinstance(inputs, torch.Tensor):
        return inputs
    if inputs.ndim == 3:
        return tv_tensors.Image(inputs)
    if inputs.ndim == 4:
        return tv_tensors.Video(inputs)
    raise ValueError(f"expected an image (C, H, W) or a video (T, C, H, W), got shape {tuple(inputs.shape)}")


def _blur_kernel(size: tuple[int, int], max_sigma: float) -> int:
    # +-3 sigma holds 99.7% of the Gaussian; a wider kernel only costs time. Odd, and no wider than the image.
    kernel = 2 * math.ceil(3 * max_sigma) + 1
    return max(3, min(kernel, (min(size) - 1) // 2 * 2 + 1))


def _resize(mode: str, size: tuple[int, int], crop_scale: tuple[float, float]) -> v2.Transform:
    if mode == "random_resized_crop":
        return v2.RandomResizedCrop(size, scale=crop_scale, antialias=True)
    if mode == "variable_aspect_ratio":
        return VariableAspectRatioResize(size)
    if mode == "center_crop":
        return v2.Compose([v2.Resize(min(size), antialias=True), v2.CenterCrop(size)])
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")


class TrainTransform(_ResizableTransform):
    """Training augmentation for an image or a whole clip: resize/crop, flip, brightness/saturation jitter, blur.

    Args:
        resolution: output size or a shared `Resolution`.
        resize: `"random_resized_crop"` (default), `"variable_aspect_ratio"` (paper 4.10: fit and pad, no crop)
            or `"center_crop"`.
        crop_scale: area range of the random resized crop.
        flip_p, brightness, saturation, blur_p, blur_sigma: paper 4.9's augmentations.
        image_mean, image_std: normalisation (CLIP's by default, like the image processor).
    Returns float32 `(C, H, W)` or `(T, C, H, W)`, normalised.
    """

    def __init__(
        self,
        resolution: Resolution | int | Sequence[int],
        resize: str = "random_resized_crop",
        crop_scale: tuple[float, float] = (0.4, 1.0),
        flip_p: float = 0.5,
        brightness: float = 0.4,
        saturation: float = 0.4,
        blur_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        super().__init__(resolution)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        for name, p in (("flip_p", flip_p), ("blur_p", blur_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability, got {p}")
        self.resize, self.crop_scale = resize, tuple(crop_scale)
        self.flip_p, self.brightness, self.saturation = flip_p, brightness, saturation
        self.blur_p, self.blur_sigma = blur_p, tuple(blur_sigma)
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def build(self, size: tuple[int, int]) -> v2.Transform:
        steps: list[v2.Transform] = [_resize(self.resize, size, self.crop_scale)]
        if self.flip_p > 0:
            steps.append(v2.RandomHorizontalFlip(self.flip_p))
        if self.brightness or self.saturation:
            steps.append(v2.ColorJitter(brightness=self.brightness or None, saturation=self.saturation or None))
        if self.blur_p > 0:
            steps.append(
                v2.RandomApply(
                    [v2.GaussianBlur(_blur_kernel(size, max(self.blur_sigma)), sigma=self.blur_sigma)], p=self.blur_p
                )
            )
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.image_mean, self.image_std)]
        return v2.Compose(steps)


class EvalTransform(_ResizableTransform):
    """Deterministic evaluation transform: Variable Aspect Ratio resize (default) or resize + centre crop."""

    def __init__(
        self,
        resolution: Resolution | int | Sequence[int],
        resize: str = "variable_aspect_ratio",
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        super().__init__(resolution)
        if resize not in ("variable_aspect_ratio", "center_crop"):
            raise ValueError(f"resize must be 'variable_aspect_ratio' or 'center_crop', got {resize!r}")
        self.resize = resize
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def build(self, size: tuple[int, int]) -> v2.Transform:
        return v2.Compose(
            [
                _resize(self.resize, size, (1.0, 1.0)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.image_mean, self.image_std),
            ]
        )


class SimCLRViews:
    """Two positive views for SimCLR/SLIP (paper 4.2.4): two augmentations of an image, or two frames of a clip.

    For a clip, two different frames are drawn at random and each is augmented as an image. `augment`
    defaults to SimCLR-strength augmentation (crop scale 0.08-1, jitter, blur half the time).
    Returns `(view_1, view_2)`, each `(C, H, W)`.
    """

    def __init__(self, augment: TrainTransform | None = None, resolution: Resolution | int | Sequence[int] = 224):
        self.augment = augment or TrainTransform(resolution, crop_scale=(0.08, 1.0), blur_p=0.5)

    @property
    def resolution(self) -> Resolution:
        return self.augment.resolution

    def __call__(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = _as_tv_tensor(inputs)
        if isinstance(inputs, tv_tensors.Video):
            num_frames = inputs.shape[0]
            if num_frames < 2:
                raise ValueError("two-frame SimCLR views need a clip of at least 2 frames")
            first, second = torch.randperm(num_frames)[:2].tolist()
            return self.augment(tv_tensors.Image(inputs[first])), self.augment(tv_tensors.Image(inputs[second]))
        return self.augment(inputs), self.augment(inputs)


class WithSimCLRViews:
    """Main view plus two SimCLR views, as the dict a decoder merges into the sample.

    `{"pixel_values": transform(x), "simclr_view_1": ..., "simclr_view_2": ...}`: the CLIP (or hashtag)
    input and the SLIP positive pair from one decoded sample. With `video_views=False` a clip gets only its main
    view (SLIP on images alone).
    """

    def __init__(
        self, transform: Any, views: SimCLRViews, output_column: str = "pixel_values", video_views: bool = True
    ) -> None:
        self.transform, self.views, self.output_column = transform, views, output_column
        self.video_views = video_views

    def __call__(self, inputs: Any) -> dict[str, torch.Tensor]:
        inputs = _as_tv_tensor(inputs)
        if not self.video_views and isinstance(inputs, tv_tensors.Video):
            return {self.output_column: self.transform(inputs)}
        view_1, view_2 = self.views(inputs)
        return {self.output_column: self.transform(inputs), "simclr_view_1": view_1, "simclr_view_2": view_2}


__all__ = ["RESIZE_MODES", "EvalTransform", "Resolution", "SimCLRViews", "TrainTransform", "WithSimCLRViews"]
