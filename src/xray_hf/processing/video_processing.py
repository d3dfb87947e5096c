"""Video processor for XrayVisual: sample `num_frames` frames uniformly, then the image processor's geometry per clip.

Built on transformers' `BaseVideoProcessor`, so clips may be (T, H, W, C) or (T, C, H, W) arrays/tensors, a
batch of them (5D or a list), or lists of PIL frames; `save_pretrained` writes `video_preprocessor_config.json`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling, SizeDict
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import (
    VideoMetadata,
    group_videos_by_shape,
    is_valid_video,
    make_batched_videos,
    reorder_videos,
)

from .hub_mixin import XrayProcessorHubMixin
from .image_processing import check_geometry_kwargs, resize_to_target


class XrayVisualVideoProcessorKwargs(VideosKwargs, total=False):
    r"""
    resize_mode (`str`, *optional*, defaults to `"variable_aspect_ratio"`):
        Geometry applied identically to every frame of a clip; see [`XrayVisualImageProcessor`].
    """

    resize_mode: str | None


def uniform_frame_indices(total_num_frames: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames at the centres of `num_frames` equal segments of the clip.

    Index i is `floor((2i + 1) * total / (2 * num_frames))`: symmetric in time (16 -> 4 gives 2, 6, 10, 14).
    A clip shorter than `num_frames` is stretched by repeating frames in order (2 -> 4 gives 0, 0, 1, 1)
    rather than rejected, so short user videos still embed; an empty clip raises.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if total_num_frames < 1:
        raise ValueError("Cannot sample frames from an empty clip (0 frames)")
    return (2 * np.arange(num_frames) + 1) * total_num_frames // (2 * num_frames)


def _pil_frames_to_array(clip: Any) -> Any:
    """A list of PIL frames -> a (T, H, W, C) array; grayscale frames keep a channel axis of 1."""
    if not (isinstance(clip, (list, tuple)) and clip and all(isinstance(f, PIL.Image.Image) for f in clip)):
        return clip
    frames = [np.atleast_3d(np.asarray(frame)) for frame in clip]
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"All frames of a clip must have one size and mode, got {sorted({f.shape for f in frames})}")
    return np.stack(frames)


class XrayVisualVideoProcessor(XrayProcessorHubMixin, BaseVideoProcessor):
    r"""
    Constructs an XrayVisual video processor.

    Samples `num_frames` frames per clip with [`uniform_frame_indices`] (segment centres; short clips repeat
    frames), then resizes every frame with one geometry per clip (`resize_mode`, as in
    [`XrayVisualImageProcessor`]) and rescales/normalises with OpenAI CLIP statistics by default.

    Args:
        num_frames (`int`, *optional*, defaults to 16): frames per clip (a multiple of the model's tubelet size).
        do_sample_frames (`bool`, *optional*, defaults to `True`): with `False`, clips are used as given and must
            all have the same length.
        size, resize_mode, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std,
        do_convert_rgb: as in [`XrayVisualImageProcessor`].

    Returns a `BatchFeature` with `pixel_values` of shape (B, T, C, H, W), the model's video input.
    Clips must be decoded already (e.g. with PyAV in `xray_hf.data`); file paths and URLs are refused.
    """

    valid_kwargs = XrayVisualVideoProcessorKwargs
    model_input_names = ["pixel_values"]
    resize_mode = "variable_aspect_ratio"
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 224, "width": 224}
    num_frames = 16
    do_sample_frames = True
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[XrayVisualVideoProcessorKwargs]) -> None:
        super().__init__(**kwargs)

    def sample_frames(
        self, metadata: VideoMetadata, num_frames: int | None = None, fps: float | None = None, **kwargs
    ) -> np.ndarray:
        """Uniform indices for one clip; see [`uniform_frame_indices`]."""
        if fps is not None:
            raise ValueError("XrayVisualVideoProcessor samples a fixed `num_frames` per clip; `fps` is not supported")
        num_frames = num_frames if num_frames is not None else self.num_frames
        return uniform_frame_indices(metadata.total_num_frames, num_frames)

    def _decode_and_sample_videos(
        self, videos: Any, video_metadata: Any, do_sample_frames: bool | None = None, sample_indices_fn=None
    ):
        """Turn PIL frame lists into arrays (keeping grayscale), check every clip, then sample as the base does."""
        if isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], (list, tuple)):
            videos = [_pil_frames_to_array(clip) for clip in videos]
        else:
            videos = _pil_frames_to_array(videos)
        expected = (
            "decoded clips: (T, H, W, C) / (T, C, H, W) arrays or tensors with C in (1, 3), or lists of PIL frames"
        )
        try:
            videos = make_batched_videos(videos)
        except (IndexError, ValueError) as err:
            raise TypeError(f"Expected {expected}; got {type(videos).__name__} ({err})") from None
        if not videos:
            raise ValueError("No video was given")
        for video in videos:
            if not is_valid_video(video):
                shape = f" of shape {tuple(video.shape)}" if hasattr(video, "shape") else ""
                raise TypeError(f"Expected {expected}; got {type(video).__name__}{shape} (decode files first)")
            if video.shape[1] not in (1, 3) and video.shape[-1] not in (1, 3):
                raise ValueError(f"Expected {expected}; got a clip of shape {tuple(video.shape)}")
        return super()._decode_and_sample_videos(videos, video_metadata, do_sample_frames, sample_indices_fn)

    def _validate_preprocess_kwargs(self, size=None, resize_mode=None, do_resize=None, **kwargs) -> None:
        super()._validate_preprocess_kwargs(size=size, do_resize=do_resize, **kwargs)
        if do_resize:
            check_geometry_kwargs(size, resize_mode)

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resize_mode: str,
        resample: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float] | None,
        image_std: float | list[float] | None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        grouped, grouped_index = group_videos_by_shape(videos)
        processed = {}
        for shape, stacked in grouped.items():  # stacked: (N, T, C, H, W), one geometry for all of it
            if do_resize:
                stacked = resize_to_target(stacked, size, resize_mode, resample)
            processed[shape] = self.rescale_and_normalize(
                stacked, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
        videos = reorder_videos(processed, grouped_index)
        if len({tuple(video.shape) for video in videos}) > 1:
            raise ValueError(
                f"Clips of different shapes cannot be batched: {sorted({tuple(v.shape) for v in videos})}; "
                "keep do_sample_frames=True and do_resize=True"
            )
        return BatchFeature(data={"pixel_values": torch.stack(videos)}, tensor_type=return_tensors)


__all__ = ["XrayVisualVideoProcessor", "uniform_frame_indices"]
