"""Tests for xray_hf.data.moving_shapes: the drawn motion is the labelled motion; clips encode with PyAV."""

from __future__ import annotations

import numpy as np
import pytest

from xray_hf.data.moving_shapes import DIRECTIONS, SHAPES, encode_video, render_moving_shape


def _centroids(frames: np.ndarray, background: np.ndarray) -> np.ndarray:
    moving = np.abs(frames.astype(int) - background).sum(-1) > 30
    ys, xs = np.indices(moving.shape[1:])
    return np.array([(xs[m].mean(), ys[m].mean()) for m in moving])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shape_moves_in_its_direction_and_stays_inside(shape, direction, seed):
    clip = render_moving_shape(
        shape, direction, np.random.default_rng([seed, SHAPES.index(shape), DIRECTIONS.index(direction)])
    )
    assert clip.frames.shape == (16, 64, 64, 3) and clip.caption == f"a {clip.colour} {shape} moving {direction}"
    path = _centroids(clip.frames, clip.frames[0, 0, 0])
    steps = np.diff(path, axis=0)
    axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[direction]
    assert np.all(sign * steps[:, axis] > 0.5)  # monotone motion along the labelled axis
    assert np.all(np.abs(steps[:, 1 - axis]) < 0.5)  # and none across it
    background = clip.frames[0, 0, 0]
    border = np.concatenate([clip.frames[:, [0, -1]].reshape(-1, 3), clip.frames[:, :, [0, -1]].reshape(-1, 3)])
    assert (border == background).all()  # the shape never touches the frame edge: it is always fully visible


def test_render_and_encode_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shape"):
        render_moving_shape("star", "left", rng)
    with pytest.raises(ValueError, match="direction"):
        render_moving_shape("circle", "sideways", rng)
    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encode_video(np.zeros((2, 16, 16, 3), np.float32))


def test_encoded_clip_is_an_mp4():
    clip = render_moving_shape("circle", "left", np.random.default_rng(0), num_frames=4, size=32)
    data = encode_video(clip.frames)
    assert data[4:8] == b"ftyp" and len(data) > 500
    assert encode_video(clip.frames, faststart=True)[36:40] == b"moov"
