"""Tests for xray_hf.data.transforms: one random draw per clip, run-time resolution, SimCLR views, VAR."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from xray_hf.data.transforms import EvalTransform, Resolution, SimCLRViews, TrainTransform, WithSimCLRViews
from xray_hf.processing.transforms import VariableAspectRatioResize


def _random_image(h=40, w=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator))


def test_one_random_draw_per_clip():
    transform = TrainTransform(24, blur_p=0.5)
    frame = _random_image()
    clip = tv_tensors.Video(frame.unsqueeze(0).repeat(6, 1, 1, 1))
    outputs = []
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(clip)
        assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32
        assert all(torch.equal(out[0], out[t]) for t in range(1, 6))  # same crop, flip, jitter, blur on every frame
        outputs.append(out[0])
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # but a new draw per clip


def test_plain_tensors_are_treated_as_image_or_clip():
    transform = TrainTransform(16)
    assert transform(torch.zeros(3, 20, 20, dtype=torch.uint8)).shape == (3, 16, 16)
    assert transform(torch.zeros(5, 3, 20, 20, dtype=torch.uint8)).shape == (5, 3, 16, 16)
    with pytest.raises(ValueError, match="image .C, H, W. or a video"):
        transform(torch.zeros(20, 20, dtype=torch.uint8))


def test_flip_and_normalisation_are_what_they_say():
    image = _random_image()
    plain = TrainTransform((40, 50), crop_scale=(1.0, 1.0), flip_p=0.0, brightness=0, saturation=0, blur_p=0)
    flipped = TrainTransform((40, 50), crop_scale=(1.0, 1.0), flip_p=1.0, brightness=0, saturation=0, blur_p=0)
    a, b = plain(image), flipped(image)
    assert torch.allclose(a.flip(-1), b)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    assert torch.allclose(a * std + mean, image.float() / 255, atol=1e-6)


def test_resolution_changes_at_run_time():
    transform = TrainTransform(32)
    assert transform(_random_image()).shape[-2:] == (32, 32)
    transform.set_resolution((16, 24))
    assert transform(_random_image()).shape[-2:] == (16, 24)
    with pytest.raises(ValueError, match="size"):
        Resolution((0, 4))


class _Images(torch.utils.data.IterableDataset):
    def __init__(self, transform):
        self.transform = transform

    def __iter__(self):
        for seed in range(4):
            yield self.transform(_random_image(seed=seed))


def test_resolution_change_reaches_persistent_workers():
    transform = TrainTransform(32)
    loader = torch.utils.data.DataLoader(_Images(transform), batch_size=2, num_workers=1, persistent_workers=True)
    assert {tuple(b.shape[-2:]) for b in loader} == {(32, 32)}
    transform.set_resolution(20)  # in the main process, e.g. by the progressive-resolution callback
    assert {tuple(b.shape[-2:]) for b in loader} == {(20, 20)}


def test_simclr_views_of_an_image_differ():
    torch.manual_seed(0)
    view_1, view_2 = SimCLRViews(resolution=24)(_random_image())
    assert view_1.shape == view_2.shape == (3, 24, 24) and not torch.equal(view_1, view_2)


def test_simclr_views_of_a_clip_are_two_different_frames():
    # frame t is filled with the value 10 * t, and the augmentation keeps values: the views name their frames
    clip = tv_tensors.Video(torch.arange(8, dtype=torch.uint8).mul(10).view(8, 1, 1, 1).expand(8, 3, 12, 12).clone())
    identity = TrainTransform(
        12,
        crop_scale=(1, 1),
        flip_p=0,
        brightness=0,
        saturation=0,
        blur_p=0,
        image_mean=(0, 0, 0),
        image_std=(1, 1, 1),
    )
    views = SimCLRViews(identity)
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        view_1, view_2 = views(clip)
        frames = (round(view_1.mean().item() * 25.5), round(view_2.mean().item() * 25.5))
        assert view_1.shape == (3, 12, 12) and frames[0] != frames[1]
        seen.update(frames)
    assert len(seen) > 4
    with pytest.raises(ValueError, match="at least 2 frames"):
        views(clip[:1])


def test_with_simclr_views_returns_the_three_inputs():
    resolution = Resolution(16)
    combined = WithSimCLRViews(TrainTransform(resolution), SimCLRViews(resolution=resolution))
    out = combined(_random_image())
    assert set(out) == {"pixel_values", "simclr_view_1", "simclr_view_2"}
    resolution.set(8)  # one shared resolution drives all three
    assert {tuple(v.shape[-2:]) for v in combined(_random_image()).values()} == {(8, 8)}


def test_simclr_views_can_skip_clips():
    """`video_views=False` (SLIP on images only): a clip gets its main view alone, an image still its pair."""
    combined = WithSimCLRViews(TrainTransform(16), SimCLRViews(resolution=16), video_views=False)
    clip = tv_tensors.Video(_random_image().unsqueeze(0).repeat(4, 1, 1, 1))
    out = combined(clip)
    assert set(out) == {"pixel_values"} and out["pixel_values"].shape == (4, 3, 16, 16)
    assert set(combined(_random_image())) == {"pixel_values", "simclr_view_1", "simclr_view_2"}
    assert set(WithSimCLRViews(TrainTransform(16), SimCLRViews(resolution=16))(clip)) == {
        "pixel_values", "simclr_view_1", "simclr_view_2"}


def test_eval_transform_uses_variable_aspect_ratio():
    transform = EvalTransform(32)
    assert any(isinstance(t, VariableAspectRatioResize) for t in transform.pipeline.transforms)
    wide = tv_tensors.Image(torch.full((3, 20, 40), 255, dtype=torch.uint8))
    out = transform(wide)
    black = (0 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    white = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[:, 0, 0], black) and torch.allclose(out[:, 16, 16], white)  # padded, not cropped
    train_var = TrainTransform(32, resize="variable_aspect_ratio")
    assert any(isinstance(t, VariableAspectRatioResize) for t in train_var.pipeline.transforms)
    with pytest.raises(ValueError, match="resize"):
        TrainTransform(32, resize="squash")
