import numpy as np
import PIL.Image
import pytest
import torch
from skimage import data as skdata
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from xray_hf.processing.transforms import (
    VariableAspectRatioResize,
    get_variable_aspect_ratio_params,
    resize_and_center_crop,
    variable_aspect_ratio_resize,
)


def astronaut() -> torch.Tensor:
    return torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).contiguous()  # (3, 512, 512) uint8


@pytest.mark.parametrize(
    "hw, size, expected",
    [
        ((50, 100), 224, (112, 224, [0, 56, 0, 56])),  # wide: width fills, bars top/bottom
        ((100, 50), 224, (224, 112, [56, 0, 56, 0])),  # tall: height fills, bars left/right
        ((512, 512), (64, 96), (64, 64, [16, 0, 16, 0])),  # square into a wide rectangle
        ((50, 100), (64, 96), (48, 96, [0, 8, 0, 8])),  # width is the limiting side of the rectangle
        ((224, 224), 224, (224, 224, [0, 0, 0, 0])),  # already the right size: identity
        ((3, 1000), (10, 20), (1, 20, [0, 4, 0, 5])),  # extreme ratio: at least one pixel, odd bar to the bottom
        ((10, 20), 100, (50, 100, [0, 25, 0, 25])),  # small images are upscaled
    ],
)
def test_params(hw, size, expected):
    params = get_variable_aspect_ratio_params(*hw, size)
    assert (params.resized_height, params.resized_width, params.padding) == expected


def test_var_bars_and_content_values():
    image = torch.full((3, 50, 100), 255, dtype=torch.uint8)  # a white 100x50 (W x H) image
    out = VariableAspectRatioResize(224)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert (out[:, :56] == 0).all() and (out[:, 168:] == 0).all()  # black bars of exactly 56 rows
    assert (out[:, 56:168] == 255).all()  # 224x112 content, centred


def test_var_content_equals_plain_resize():
    image = astronaut()[:, :, 128:384]  # 512 high, 256 wide
    out = variable_aspect_ratio_resize(image, (64, 64))
    reference = F.resize(image, [64, 32], antialias=True)
    torch.testing.assert_close(out[:, :, 16:48], reference, rtol=0, atol=0)
    assert (out[:, :, :16] == 0).all() and (out[:, :, 48:] == 0).all()


def test_transform_equals_functional_and_composes():
    image = astronaut()[:, 100:300]
    transform = v2.Compose([VariableAspectRatioResize((48, 80), fill=7), v2.ToDtype(torch.float32, scale=True)])
    expected = variable_aspect_ratio_resize(image, (48, 80), fill=7).float() / 255
    torch.testing.assert_close(transform(image), expected)
    assert "size=(48, 80)" in repr(transform)


def test_pil_input_keeps_type_and_geometry():
    image = PIL.Image.fromarray(skdata.chelsea())  # 451 x 300
    out = VariableAspectRatioResize(100)(image)
    assert isinstance(out, PIL.Image.Image) and out.size == (100, 100)
    array = np.asarray(out)
    assert (array[:16] == 0).all() and (array[-17:] == 0).all()  # content 67 rows high: 16 above, 17 below
    assert array[16:83].mean() > 50


def test_video_and_boxes_share_one_geometry():
    video = tv_tensors.Video(torch.randint(0, 256, (4, 3, 30, 40), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[0, 0, 40, 30], [10, 10, 20, 20]], format="XYXY", canvas_size=(30, 40))
    out_video, out_boxes = VariableAspectRatioResize((64, 96))(video, boxes)
    assert isinstance(out_video, tv_tensors.Video) and out_video.shape == (4, 3, 64, 96)
    # 30x40 -> 64x85 (rounded), 5 px bar on the left, 6 on the right
    assert out_boxes.canvas_size == (64, 96)
    assert out_boxes[0].tolist() == [5, 0, 90, 64]
    plain = variable_aspect_ratio_resize(video.as_subclass(torch.Tensor), (64, 96))  # plain (T, C, H, W) tensor
    for t in range(4):  # every frame is transformed exactly like an image
        torch.testing.assert_close(plain[t], variable_aspect_ratio_resize(video[t].as_subclass(torch.Tensor), (64, 96)))
    torch.testing.assert_close(plain, out_video.as_subclass(torch.Tensor))


def test_resize_and_center_crop_matches_torchvision():
    image = astronaut()
    out = resize_and_center_crop(image, (64, 96))
    reference = F.center_crop(F.resize(image, [96, 96], antialias=True), [64, 96])
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    wide = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)  # 300 x 451: shortest side -> 32
    reference = F.center_crop(F.resize(wide, 32, antialias=True), [32, 32])
    torch.testing.assert_close(resize_and_center_crop(wide, 32), reference, rtol=0, atol=0)


@pytest.mark.parametrize("size", [0, (10, 0), (1, 2, 3), 2.5, "224", True])
def test_bad_size_raises(size):
    with pytest.raises((TypeError, ValueError), match="size"):
        VariableAspectRatioResize(size)


def test_empty_image_raises():
    with pytest.raises(ValueError, match="empty"):
        variable_aspect_ratio_resize(torch.zeros(3, 0, 5), 8)
