"""Decode one undecoded image or video record into a tensor, and name the reason when that is impossible.

Streams keep media undecoded (`datasets.Image(decode=False)` / `datasets.Video(decode=False)` give
`{"bytes": ..., "path": ...}` records); the stream decodes each sample here, inside a try. A failure raises
`SampleDecodeError` with one of `SKIP_REASONS`, which the stream counts and skips.

Videos are decoded with PyAV (FFmpeg). A clip of `num_frames` frames `stride` apart is chosen from the frame
count in the container header, the decoder seeks to the key frame before the clip and stops after its last
frame, so a short clip from a long video never decodes the whole video.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import PIL.Image
import torch
from PIL import ImageOps
from torchvision import tv_tensors

SKIP_REASONS = (
    "missing_file",  # the record points to a path that does not exist, or holds neither bytes nor path
    "empty_file",  # zero bytes
    "corrupt_image",  # PIL cannot identify or fully decode it (bad header, truncated data, broken EXIF)
    "corrupt_video",  # FFmpeg cannot open or decode it (bad container, missing moov atom, broken packets)
    "no_video_stream",  # a container without a video stream (e.g. audio only)
    "truncated_video",  # the header promises more frames than the file holds
    "unreadable",  # the file exists but cannot be read (permissions, I/O error)
)

CLIP_SAMPLING = ("random", "center", "uniform")


class SampleDecodeError(Exception):
    """A sample that cannot be decoded; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _describe(record: Any) -> str:
    if isinstance(record, dict):
        return repr(record.get("path")) if record.get("path") else "<in-memory bytes>"
    return repr(record) if isinstance(record, (str, os.PathLike)) else f"<{type(record).__name__}>"


def read_media(record: Any) -> bytes | str:
    """Bytes or an existing local path from a media record (`{"bytes", "path"}` dict, bytes or a path).

    Raises `SampleDecodeError` for a missing path, an empty file, or a record with nothing in it, and a
    `TypeError` for a record that is not media at all (a wrong column is a bug, not a bad sample).
    """
    if isinstance(record, dict):
        data, path = record.get("bytes"), record.get("path")
    elif isinstance(record, (bytes, bytearray, memoryview)):
        data, path = bytes(record), None
    elif isinstance(record, (str, os.PathLike)):
        data, path = None, os.fspath(record)
    else:
        raise TypeError(
            f"expected a media record ({{'bytes', 'path'}} dict, bytes or a path), got {type(record).__name__}; "
            "cast the column with decode=False (datasets.Image(decode=False) / datasets.Video(decode=False))"
        )
    if data is not None:
        if len(data) == 0:
            raise SampleDecodeError("empty_file", f"{_describe(record)} has zero bytes")
        return bytes(data)
    if not path:
        raise SampleDecodeError("missing_file", "record has neither bytes nor a path")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise SampleDecodeError("missing_file", f"{path!r} does not exist") from None
    except OSError as error:
        raise SampleDecodeError("unreadable", f"{path!r}: {error}") from None
    if size == 0:
        raise SampleDecodeError("empty_file", f"{path!r} has zero bytes")
    if not os.access(path, os.R_OK):
        raise SampleDecodeError("unreadable", f"{path!r} is not readable")
    return path


def decode_image(record: Any, mode: str = "RGB") -> tv_tensors.Image:
    """Decode an image record to a `(C, H, W)` uint8 `tv_tensors.Image`, EXIF orientation applied.

    The whole file is decoded here (PIL decodes lazily), so truncated data fails now, inside the caller's try,
    and not later in a transform.
    """
    if mode not in ("RGB", "L", "RGBA"):
        raise ValueError(f"mode must be 'RGB', 'L' or 'RGBA', got {mode!r}")
    media = read_media(record)
    try:
        with PIL.Image.open(io.BytesIO(media) if isinstance(media, bytes) else media) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = image.convert(mode)
    except OSError as error:  # includes PIL.UnidentifiedImageError and "image file is truncated"
        raise SampleDecodeError("corrupt_image", f"{_describe(record)}: {error}") from None
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error) as error:
        # PIL raises these for malformed headers, chunks or EXIF blocks
        raise SampleDecodeError("corrupt_image", f"{_describe(record)}: {type(error).__name__}: {error}") from None
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))


def sample_clip_indices(
    total_frames: int,
    num_frames: int,
    stride: int = 1,
    sampling: str = "random",
    rng: np.random.Generator | None = None,
    segment: tuple[int, int] | None = None,
) -> list[int]:
    """Frame indices of a clip.

    `"random"`: `num_frames` frames `stride` apart from a random start; `"center"`: the same span centred;
    `"uniform"`: `num_frames` frames spread evenly over the whole video (or segment), ignoring `stride`.
    A video shorter than the span keeps its first/last frames and repeats indices rather than failing.
    `segment=(start, end)` restricts the clip to frames `start <= i < end`.
    """
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    if sampling not in CLIP_SAMPLING:
        raise ValueError(f"sampling must be one of {CLIP_SAMPLING}, got {sampling!r}")
    if total_frames < 1:
        raise ValueError(f"cannot sample a clip from a video with {total_frames} frames")
    lo, hi = (0, total_frames) if segment is None else (max(0, int(segment[0])), min(total_frames, int(segment[1])))
    if hi <= lo:
        raise ValueError(f"empty segment {segment} in a video of {total_frames} frames")
    length = hi - lo
    if sampling == "uniform":
        # centre of each of num_frames equal bins
        positions = (np.arange(num_frames) + 0.5) * length / num_frames
        return [lo + min(length - 1, int(p)) for p in positions]
    span = (num_frames - 1) * stride + 1
    if span > length:  # too short for this stride: spread evenly instead, repeating frames if needed
        return [lo + int(round(p)) for p in np.linspace(0, length - 1, num_frames)]
    if sampling == "center":
        start = (length - span) // 2
    else:
        if rng is None:
            raise ValueError("random clip sampling needs an rng")
        start = int(rng.integers(0, length - span + 1))
    return [lo + start + i * stride for i in range(num_frames)]


@dataclass
class VideoClip:
    """A decoded clip: `frames` `(T, C, H, W)` uint8, their indices in the video, and how many frames were decoded."""

    frames: tv_tensors.Video
    indices: list[int]
    fps: float
    total_frames: int
    frames_decoded: int


def _frame_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: Fraction) -> int:
    if stream.frames:
        return int(stream.frames)
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return int(round(duration * fps)) if duration else 0


def decode_video_clip(
    record: Any,
    num_frames: int,
    stride: int = 1,
    sampling: str = "random",
    rng: np.random.Generator | None = None,
    threads: int = 1,
    short_side: int | None = None,
    segment: tuple[int, int] | None = None,
) -> VideoClip:
    """Decode a clip of `num_frames` frames from a video record with PyAV.

    Args:
        record: `{"bytes", "path"}` dict, bytes or a path.
        num_frames, stride, sampling, rng, segment: see `sample_clip_indices`.
        threads: FFmpeg decoding threads for this call (keep 1 per DataLoader worker).
        short_side: if set, frames are scaled during colour conversion so their shorter side is this long
            (cheaper than decoding full size and resizing afterwards).
    """
    media = read_media(record)
    try:
        container = av.open(io.BytesIO(media) if isinstance(media, bytes) else media, mode="r")
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as error:
        raise SampleDecodeError("corrupt_video", f"{_describe(record)}: {error}") from None
    try:
        if not container.streams.video:
            raise SampleDecodeError("no_video_stream", f"{_describe(record)} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = max(0, int(threads))
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        total = _frame_count(container, stream, fps)
        if total < 1:
            # no usable header: count frames by demuxing (packets only, nothing decoded)
            total = sum(1 for packet in container.demux(stream) if packet.size)
            container.seek(0)
        if total < 1:
            raise SampleDecodeError("corrupt_video", f"{_describe(record)} has no frames")
        indices = sample_clip_indices(total, num_frames, stride, sampling, rng, segment)
        frames, decoded = _decode_indices(container, stream, fps, indices, short_side)
    except SampleDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError) as error:
        raise SampleDecodeError("corrupt_video", f"{_describe(record)}: {error}") from None
    finally:
        container.close()
    missing = [i for i in indices if i not in frames]
    if missing:
        raise SampleDecodeError(
            "truncated_video",
            f"{_describe(record)}: header says {total} frames but frames {missing[:5]} could not be decoded",
        )
    video = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)
    return VideoClip(tv_tensors.Video(video), indices, float(fps), total, decoded)


def _scaled_size(height: int, width: int, short_side: int | None) -> tuple[int, int] | None:
    if short_side is None or min(height, width) == short_side:
        return None
    scale = short_side / min(height, width)
    # keep dimensions even: some pixel formats need it and it is harmless otherwise
    return max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2)


def _decode_indices(container, stream, fps: Fraction, indices: list[int], short_side: int | None):
    wanted = set(indices)
    first, last = min(wanted), max(wanted)
    time_base = stream.time_base
    start_pts = stream.start_time or 0
    seeked = False
    if first > 0:
        container.seek(start_pts + int(first / fps / time_base), stream=stream, backward=True, any_frame=False)
        seeked = True
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    for attempt in range(2):
        for frame in container.decode(stream):
            decoded += 1
            if frame.pts is None:
                continue
            index = int(round(float((frame.pts - start_pts) * time_base * fps)))
            if seeked and decoded == 1 and index > first:
                break  # the seek overshot the clip start: decode again from the beginning
            if index in wanted and index not in frames:
                size = _scaled_size(frame.height, frame.width, short_side)
                kwargs = {"height": size[0], "width": size[1]} if size else {}
                frames[index] = frame.to_ndarray(format="rgb24", **kwargs)
            if index >= last:
                return frames, decoded
        else:
            return frames, decoded  # end of stream
        if attempt == 0:
            container.seek(start_pts, stream=stream, backward=True, any_frame=False)
            seeked = False
    return frames, decoded


@dataclass
class ImageDecoder:
    """Stream decoder for images: decode `column`, apply `transform`, put the result in `output_column`.

    Other columns pass through unchanged; a transform returning a dict adds all its entries.
    Used as `DecodedStream(source, ImageDecoder(...))`.
    """

    column: str = "image"
    transform: Callable[[Any], Any] | None = None
    output_column: str = "pixel_values"
    mode: str = "RGB"
    modality: str = "image"

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        image = decode_image(example[self.column], self.mode)
        sample = {key: value for key, value in example.items() if key != self.column}
        return _put(sample, self.output_column, self.transform(image) if self.transform is not None else image)


@dataclass
class VideoDecoder:
    """Stream decoder for videos: a clip of `num_frames` frames `stride` apart from `column`, then `transform`.

    The transform sees the whole `(T, C, H, W)` clip as one `tv_tensors.Video`, so torchvision v2 draws its
    random parameters once per clip. `segment_columns=("start", "end")` restricts clips to annotated frame
    ranges. The clip's frame indices go to `"frame_indices"`.
    """

    column: str = "video"
    num_frames: int = 16
    stride: int = 2
    sampling: str = "random"
    transform: Callable[[Any], Any] | None = None
    output_column: str = "pixel_values"
    threads: int = 1
    short_side: int | None = None
    segment_columns: tuple[str, str] | None = None
    modality: str = "video"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {self.num_frames} and {self.stride}")
        if self.sampling not in CLIP_SAMPLING:
            raise ValueError(f"sampling must be one of {CLIP_SAMPLING}, got {self.sampling!r}")

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        segment = None
        if self.segment_columns is not None:
            segment = (example[self.segment_columns[0]], example[self.segment_columns[1]])
        clip = decode_video_clip(
            example[self.column],
            self.num_frames,
            self.stride,
            self.sampling,
            rng if rng is not None else np.random.default_rng(),
            threads=self.threads,
            short_side=self.short_side,
            segment=segment,
        )
        sample = {key: value for key, value in example.items() if key != self.column}
        sample["frame_indices"] = clip.indices
        return _put(
            sample, self.output_column, self.transform(clip.frames) if self.transform is not None else clip.frames
        )


def _put(sample: dict, column: str, output: Any) -> dict:
    # a transform may return several tensors (e.g. the main view and SimCLR views) as a dict
    if isinstance(output, dict):
        sample.update(output)
    else:
        sample[column] = output
    return sample


__all__ = [
    "CLIP_SAMPLING",
    "ImageDecoder",
    "VideoDecoder",
    "SKIP_REASONS",
    "SampleDecodeError",
    "VideoClip",
    "decode_image",
    "decode_video_clip",
    "read_media",
    "sample_clip_indices",
]
