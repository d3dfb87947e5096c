"""Synthetic video clips with known labels: one coloured shape moving in one direction, encoded with PyAV.

Real video datasets do not install from a package registry, so video classification, the video pipeline and
its tests use clips whose labels are true by construction: the shape (circle, square, triangle) and its
direction of motion (left, right, up, down) are what the generator drew.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 40),
    "white": (240, 240, 240),
    "orange": (245, 140, 30),
}
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class MovingShapeClip:
    """One clip: frames `(T, H, W, 3)` uint8 and what is in it."""

    frames: np.ndarray
    shape: str
    direction: str
    colour: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


def render_moving_shape(
    shape: str,
    direction: str,
    rng: np.random.Generator,
    num_frames: int = 16,
    size: int = 64,
    colour: str | None = None,
) -> MovingShapeClip:
    """Draw `shape` crossing the frame towards `direction`, with random colour, size, speed and start."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if num_frames < 2 or size < 16:
        raise ValueError(f"need num_frames >= 2 and size >= 16, got {num_frames} and {size}")
    colour = colour or str(rng.choice(sorted(COLOURS)))
    radius = int(rng.integers(size // 10, size // 6 + 1))
    # centres stay in [low, low + span] so the whole shape (and a 2-pixel margin) is always inside the frame
    low, span = radius + 2, size - 2 * radius - 5
    speed = max(1.0, min(float(rng.uniform(1.5, 3.0)), span / (num_frames - 1)))
    travel = speed * (num_frames - 1)
    dx, dy = _STEP[direction]
    along_start = low + (travel if dx < 0 or dy < 0 else 0) + rng.uniform(0, max(0.0, span - travel))
    across = rng.uniform(low, low + span)
    background = tuple(int(v) for v in rng.integers(0, 60, size=3))
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        along = along_start + (dx + dy) * speed * t
        cx, cy = (along, across) if dx else (across, along)
        image = Image.new("RGB", (size, size), background)
        _draw(ImageDraw.Draw(image), shape, cx, cy, radius, COLOURS[colour])
        frames[t] = np.asarray(image)
    return MovingShapeClip(frames, shape, direction, colour)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)


def encode_video(
    frames: np.ndarray,
    fps: int = 8,
    codec: str = "h264",
    container_format: str = "mp4",
    faststart: bool = False,
) -> bytes:
    """Encode `(T, H, W, 3)` uint8 RGB frames with PyAV; returns the file bytes.

    `faststart=True` puts the mp4 index (moov atom) before the data, as streaming files do; by default it is
    written at the end (truncating such a file loses the index).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"height and width must be even for yuv420p, got {frames.shape[1:3]}")
    if faststart and container_format == "mp4":
        # the faststart pass rewrites the file, which FFmpeg can only do on a real file
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "clip.mp4")
            _encode(frames, path, fps, codec, container_format, {"movflags": "faststart"})
            with open(path, "rb") as file:
                return file.read()
    buffer = io.BytesIO()
    _encode(frames, buffer, fps, codec, container_format, {})
    return buffer.getvalue()


def _encode(frames: np.ndarray, target, fps: int, codec: str, container_format: str, options: dict) -> None:
    with av.open(target, mode="w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec in ("h264", "libx264"):
            stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


__all__ = ["COLOURS", "DIRECTIONS", "SHAPES", "MovingShapeClip", "encode_video", "render_moving_shape"]
