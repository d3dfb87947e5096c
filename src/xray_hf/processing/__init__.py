"""Processors: the paper's Variable Aspect Ratio transform, image and video processors."""

from .image_processing import XrayVisualImageProcessor
from .transforms import VariableAspectRatioResize, resize_and_center_crop, variable_aspect_ratio_resize
from .video_processing import XrayVisualVideoProcessor, uniform_frame_indices

__all__ = [
    "VariableAspectRatioResize",
    "XrayVisualImageProcessor",
    "XrayVisualVideoProcessor",
    "resize_and_center_crop",
    "uniform_frame_indices",
    "variable_aspect_ratio_resize",
]
