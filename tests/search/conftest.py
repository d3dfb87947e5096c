"""Fixtures of the search tests: checkpoints, galleries and an index built once (see helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import make_clip, write_image_folder, write_video_folder


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("search_clip"))


@pytest.fixture(scope="session")
def other_clip_dir(tmp_path_factory) -> Path:
    """Same shapes, other weights: another checkpoint."""
    return make_clip(tmp_path_factory.mktemp("search_clip_other"), seed=1)


@pytest.fixture(scope="session")
def wide_clip_dir(tmp_path_factory) -> Path:
    """A checkpoint with 32-d embeddings."""
    return make_clip(tmp_path_factory.mktemp("search_clip_wide"), projection_dim=32)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory) -> Path:
    return write_video_folder(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="session")
def gallery_index(tmp_path_factory, clip_dir) -> Path:
    """A flat index of a clean image folder and the video folder, built once."""
    from xray_hf.search import build_index

    base = tmp_path_factory.mktemp("gallery")
    images = write_image_folder(base / "images", corrupt=False)
    videos = write_video_folder(base / "videos")
    build_index(clip_dir, [str(images), str(videos)], base / "index", kind="flat", progress=False)
    return base / "index"
