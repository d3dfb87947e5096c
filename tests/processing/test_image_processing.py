import json

import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data as skdata
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F
from transformers import AutoImageProcessor
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

import xray_hf
from xray_hf import XrayVisualImageProcessor

MEAN = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
STD = torch.tensor(OPENAI_CLIP_STD)[:, None, None]


def normalise(uint8_image: torch.Tensor) -> torch.Tensor:
    return (uint8_image.float() / 255 - MEAN) / STD


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def test_defaults_are_var_224_clip_statistics():
    processor = XrayVisualImageProcessor()
    assert processor.resize_mode == "variable_aspect_ratio"
    assert (processor.size.height, processor.size.width) == (224, 224)
    assert tuple(processor.image_mean) == tuple(OPENAI_CLIP_MEAN)
    assert tuple(processor.image_std) == tuple(OPENAI_CLIP_STD)


def test_var_geometry_and_values():
    white = PIL.Image.new("RGB", (100, 50), (255, 255, 255))  # 100 wide, 50 high
    pixel_values = XrayVisualImageProcessor()(white)["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224) and pixel_values.dtype == torch.float32
    black, content = normalise(torch.zeros(3, 1, 1, dtype=torch.uint8)), normalise(torch.full((3, 1, 1), 255))
    image = pixel_values[0]
    torch.testing.assert_close(image[:, :56], black.expand(3, 56, 224))  # bars: black = -mean/std
    torch.testing.assert_close(image[:, 168:], black.expand(3, 56, 224))
    torch.testing.assert_close(image[:, 56:168], content.expand(3, 112, 224))  # 224 x 112 content, centred


def test_var_rectangular_target_equals_reference():
    astronaut = skdata.astronaut()  # 512 x 512
    pixel_values = XrayVisualImageProcessor(size=(64, 96))(astronaut)["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 96)
    content = F.resize(chw(astronaut), [64, 64], interpolation=InterpolationMode.BICUBIC, antialias=True)
    torch.testing.assert_close(pixel_values[0, :, :, 16:80], normalise(content))
    black = normalise(torch.zeros(3, 64, 16, dtype=torch.uint8))
    torch.testing.assert_close(pixel_values[0, :, :, :16], black)
    torch.testing.assert_close(pixel_values[0, :, :, 80:], black)


def test_center_crop_mode_equals_reference():
    chelsea = skdata.chelsea()  # 451 wide, 300 high
    processor = XrayVisualImageProcessor(resize_mode="center_crop", size=64)
    reference = F.center_crop(F.resize(chw(chelsea), 64, interpolation=InterpolationMode.BICUBIC), [64, 64])
    torch.testing.assert_close(processor(chelsea)["pixel_values"][0], normalise(reference))
    wide = processor(chelsea, size={"height": 32, "width": 96})["pixel_values"]  # per-call override, rectangle
    assert wide.shape == (1, 3, 32, 96)


def test_normalisation_values_and_switches():
    image = np.full((8, 8, 3), (0, 51, 255), dtype=np.uint8)
    out = XrayVisualImageProcessor(size=8, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD)(image)
    torch.testing.assert_close(out["pixel_values"][0, :, 0, 0], torch.tensor([-1.0, -0.6, 1.0]))
    raw = XrayVisualImageProcessor(size=8, do_rescale=False, do_normalize=False)(image)["pixel_values"]
    assert raw.dtype == torch.uint8 and raw[0, :, 0, 0].tolist() == [0, 51, 255]
    rescaled = XrayVisualImageProcessor(size=8, do_normalize=False)(image)["pixel_values"]
    torch.testing.assert_close(rescaled[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))


def test_grayscale_becomes_rgb():
    camera = skdata.camera()[:200, :300]  # (H, W) uint8
    processor = XrayVisualImageProcessor(size=(40, 60))
    expected = processor(np.repeat(camera[..., None], 3, axis=-1))["pixel_values"]
    for gray in (camera, camera[..., None], torch.from_numpy(camera)[None], PIL.Image.fromarray(camera)):
        out = processor(gray)["pixel_values"]
        assert out.shape == (1, 3, 40, 60)
        torch.testing.assert_close(out, expected)


def test_pil_numpy_torch_inputs_agree():
    chelsea = skdata.chelsea()
    processor = XrayVisualImageProcessor(size=48)
    expected = processor(chelsea)["pixel_values"]
    for image in (PIL.Image.fromarray(chelsea), torch.from_numpy(chelsea), chw(chelsea), [chelsea]):
        torch.testing.assert_close(processor(image)["pixel_values"], expected)
    assert isinstance(processor(chelsea, return_tensors="np")["pixel_values"], np.ndarray)


def test_batch_of_mixed_sizes_matches_one_by_one():
    images = [skdata.astronaut(), skdata.chelsea(), skdata.camera(), chw(skdata.chelsea())[:, :100, :50]]
    processor = XrayVisualImageProcessor(size=(56, 72))
    batch = processor(images)["pixel_values"]
    assert batch.shape == (4, 3, 56, 72)
    for i, image in enumerate(images):
        torch.testing.assert_close(batch[i], processor(image)["pixel_values"][0])


def test_save_load_round_trip_and_auto(tmp_path):
    processor = XrayVisualImageProcessor(
        size=(32, 64), resize_mode="center_crop", image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "XrayVisualImageProcessor" and saved["resize_mode"] == "center_crop"
    assert saved["size"] == {"height": 32, "width": 64}
    xray_hf.XrayVisualConfig.from_preset("tiny").save_pretrained(tmp_path)  # as in a model checkpoint
    for loaded in (XrayVisualImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is XrayVisualImageProcessor
        assert loaded.to_dict() == processor.to_dict()
        image = skdata.astronaut()
        torch.testing.assert_close(loaded(image)["pixel_values"], processor(image)["pixel_values"])


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros((8, 8, 2), np.uint8), ValueError, "shape \\(8, 8, 2\\)"),  # two channels
        (np.zeros((2, 3, 8, 8, 3), np.uint8), ValueError, "shape \\(2, 3, 8, 8, 3\\)"),  # 5D is no image batch
        ([np.zeros((8, 8, 3), np.uint8), 3], TypeError, "int"),
    ],
)
def test_bad_images_raise(bad, error, match):
    with pytest.raises(error, match=match):
        XrayVisualImageProcessor()(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resize_mode": "stretch"}, "resize_mode"),
        ({"size": {"shortest_edge": 224}}, "height and width"),
        ({"do_resize": False}, "different shapes"),  # mixed sizes cannot be stacked without resizing
    ],
)
def test_bad_settings_raise(kwargs, match):
    images = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)]
    with pytest.raises(ValueError, match=match):
        XrayVisualImageProcessor()(images, **kwargs)
