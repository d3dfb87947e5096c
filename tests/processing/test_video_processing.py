import json

import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data as skdata
from transformers import AutoVideoProcessor

import xray_hf
from xray_hf import XrayVisualImageProcessor, XrayVisualVideoProcessor
from xray_hf.processing.video_processing import uniform_frame_indices


def numbered_clip(num_frames: int, height: int = 20, width: int = 40) -> np.ndarray:
    """(T, H, W, 3) uint8 clip whose frame t is filled with the value t."""
    return np.stack([np.full((height, width, 3), t, np.uint8) for t in range(num_frames)])


def raw(**kwargs) -> XrayVisualVideoProcessor:
    return XrayVisualVideoProcessor(do_rescale=False, do_normalize=False, **kwargs)


@pytest.mark.parametrize(
    "total, num, expected",
    [
        (16, 4, [2, 6, 10, 14]),
        (16, 16, list(range(16))),
        (10, 3, [1, 5, 8]),
        (100, 8, [6, 18, 31, 43, 56, 68, 81, 93]),
        (2, 4, [0, 0, 1, 1]),  # short clip: frames repeated in order
        (1, 3, [0, 0, 0]),
    ],
)
def test_uniform_frame_indices(total, num, expected):
    assert uniform_frame_indices(total, num).tolist() == expected


@pytest.mark.parametrize("total, num", [(0, 4), (4, 0)])
def test_uniform_frame_indices_rejects_empty(total, num):
    with pytest.raises(ValueError):
        uniform_frame_indices(total, num)


def test_samples_exact_frames_from_thwc_and_tchw():
    processor = raw(num_frames=4, size=(32, 48))
    clip = numbered_clip(16)
    out = processor(clip, return_metadata=True)
    assert out["pixel_values"].shape == (1, 4, 3, 32, 48)
    assert out["pixel_values"][0, :, 0, 16, 24].tolist() == [2, 6, 10, 14]
    assert out["video_metadata"][0].frames_indices.tolist() == [2, 6, 10, 14]
    tchw = torch.from_numpy(clip).permute(0, 3, 1, 2)
    torch.testing.assert_close(processor(tchw)["pixel_values"], out["pixel_values"])


def test_batch_of_clips_with_different_lengths_and_sizes():
    clips = [numbered_clip(16), numbered_clip(2, 50, 30), numbered_clip(7, 8, 8)]
    out = raw(num_frames=4, size=32)(clips)["pixel_values"]
    assert out.shape == (3, 4, 3, 32, 32)
    assert out[:, :, 0, 16, 16].tolist() == [[2, 6, 10, 14], [0, 0, 1, 1], [0, 2, 4, 6]]


def test_frames_match_the_image_processor():
    """One geometry per clip: each output frame equals the image processor applied to that frame."""
    astronaut = skdata.astronaut()[:, 100:400]  # 512 high, 300 wide
    clip = np.stack([np.roll(astronaut, 10 * t, axis=1) for t in range(8)])
    settings = {"size": (40, 56), "resize_mode": "variable_aspect_ratio"}
    video = XrayVisualVideoProcessor(num_frames=4, **settings)(clip)["pixel_values"][0]
    frames = XrayVisualImageProcessor(**settings)(list(clip[[1, 3, 5, 7]]))["pixel_values"]
    torch.testing.assert_close(video, frames)
    crop = XrayVisualVideoProcessor(num_frames=2, resize_mode="center_crop", size=24)(clip)["pixel_values"][0]
    crop_frames = XrayVisualImageProcessor(resize_mode="center_crop", size=24)(list(clip[[2, 6]]))["pixel_values"]
    torch.testing.assert_close(crop, crop_frames)


def test_pil_frames_including_grayscale():
    rgb = [PIL.Image.fromarray(frame) for frame in numbered_clip(8)]
    gray = [PIL.Image.fromarray(frame[..., 0]) for frame in numbered_clip(8)]  # mode "L"
    processor = raw(num_frames=4, size=16)
    out = processor([rgb, gray])["pixel_values"]
    assert out.shape == (2, 4, 3, 16, 16)
    torch.testing.assert_close(out[0], out[1])
    assert processor(gray, do_sample_frames=False)["pixel_values"].shape == (1, 8, 3, 16, 16)


def test_normalised_output_and_black_bars():
    processor = XrayVisualVideoProcessor(num_frames=2, size=(16, 16))
    out = processor(np.full((4, 8, 16, 3), 255, np.uint8))["pixel_values"][0]  # wide white clip
    mean, std = torch.tensor(processor.image_mean)[:, None, None], torch.tensor(processor.image_std)[:, None, None]
    torch.testing.assert_close(out[:, :, :4], ((0 - mean) / std).expand(2, 3, 4, 16))
    torch.testing.assert_close(out[:, :, 4:12], ((1 - mean) / std).expand(2, 3, 8, 16))
    torch.testing.assert_close(out[:, :, 12:], ((0 - mean) / std).expand(2, 3, 4, 16))


def test_save_load_round_trip_and_auto(tmp_path):
    processor = XrayVisualVideoProcessor(num_frames=8, size=(32, 48), resize_mode="center_crop")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "XrayVisualVideoProcessor" and saved["num_frames"] == 8
    xray_hf.XrayVisualConfig.from_preset("tiny").save_pretrained(tmp_path)
    clip = numbered_clip(20)
    for loaded in (XrayVisualVideoProcessor.from_pretrained(tmp_path), AutoVideoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is XrayVisualVideoProcessor and loaded.to_dict() == processor.to_dict()
        torch.testing.assert_close(loaded(clip)["pixel_values"], processor(clip)["pixel_values"])


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("clip.mp4", TypeError, "decode"),
        (np.zeros((4, 8, 8, 2), np.uint8), ValueError, "shape \\(4, 8, 8, 2\\)"),  # two channels
        (np.zeros((8, 8)), TypeError, "ndarray of shape"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty clip"),
        ([1, 2], TypeError, "decoded clips"),
    ],
)
def test_bad_videos_raise(bad, error, match):
    with pytest.raises(error, match=match):
        XrayVisualVideoProcessor(num_frames=2)(bad)


def test_bad_settings_raise():
    processor = XrayVisualVideoProcessor(num_frames=2)
    with pytest.raises(ValueError, match="fps"):
        processor(numbered_clip(8), fps=2)
    with pytest.raises(ValueError, match="resize_mode"):
        processor(numbered_clip(8), resize_mode="stretch")
    with pytest.raises(ValueError, match="different shapes"):
        processor([numbered_clip(4), numbered_clip(5)], do_sample_frames=False)
    frames = [PIL.Image.new("RGB", (8, 8)), PIL.Image.new("RGB", (9, 8))]
    with pytest.raises(ValueError, match="one size"):
        processor(frames)
