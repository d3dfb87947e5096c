"""Tests for xray_hf.data.sampling (paper 4.1): probabilities, finishing together, bounded single-modality runs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from xray_hf.data import modality_probabilities
from xray_hf.data.sampling import ModalitySchedule, MultimodalLoader


def _max_runs(sequence: list[str]) -> dict[str, int]:
    runs = {"image": 0, "video": 0}
    for modality, group in itertools.groupby(sequence):
        runs[modality] = max(runs[modality], len(list(group)))
    return runs


def _last(sequence: list[str], modality: str) -> int:
    return max(i for i, m in enumerate(sequence) if m == modality)


def test_paper_example_is_056_044():
    p_image, p_video = modality_probabilities(5_000_000_000, 64, 2_000_000_000, 32)
    assert (round(p_image, 2), round(p_video, 2)) == (0.56, 0.44)
    assert p_image / p_video == pytest.approx(5 / 4)


def test_probabilities_edge_cases_and_errors():
    assert modality_probabilities(100, 10, 0, 4) == (1.0, 0.0)
    assert modality_probabilities(64, 64, 32, 32) == (0.5, 0.5)
    with pytest.raises(ValueError, match="both 0"):
        modality_probabilities(0, 64, 0, 32)
    with pytest.raises(ValueError, match="image_batch_size"):
        modality_probabilities(10, 0, 10, 4)
    with pytest.raises(ValueError, match="num_videos"):
        modality_probabilities(10, 2, -1, 4)
    with pytest.raises(ValueError, match="num_images"):
        modality_probabilities(1.5, 2, 1, 4)


@pytest.mark.parametrize(
    "num_images, image_batch, num_videos, video_batch",
    [
        (5_000 * 64, 64, 4_000 * 32, 32),  # the paper's 5 : 4, scaled down
        (10_000, 64, 500, 32),  # images dominate (1 : 10 is still fine per the paper)
        (320, 64, 20_000, 8),  # videos dominate
        (640, 64, 320, 32),  # equal batch counts
    ],
)
def test_stratified_schedule_counts_runs_and_finish(num_images, image_batch, num_videos, video_batch):
    schedule = ModalitySchedule.from_samples(num_images, image_batch, num_videos, video_batch, seed=5)
    p_image, _ = modality_probabilities(num_images, image_batch, num_videos, video_batch)
    for epoch in range(3):
        sequence = list(schedule.iterate(epoch))
        assert sequence.count("image") == num_images // image_batch
        assert sequence.count("video") == num_videos // video_batch
        runs = _max_runs(sequence)
        assert runs["image"] <= schedule.max_run("image") and runs["video"] <= schedule.max_run("video")
        rare_share = min(p_image, 1 - p_image)
        assert max(runs.values()) <= 2 * math.ceil(1 / rare_share)  # never a long single-modality stretch
        assert min(runs.values()) <= 2
        # both modalities end within a few batches of each other
        assert abs(_last(sequence, "image") - _last(sequence, "video")) <= math.ceil(1 / rare_share)
        # and the mix is even over the epoch: every tenth holds its share of images
        for chunk in np.array_split(np.array(sequence) == "image", 10):
            assert abs(chunk.mean() - p_image) <= 2.5 / len(chunk)
    assert list(schedule.iterate(0)) != list(schedule.iterate(1))
    assert list(schedule.iterate(0)) == list(
        ModalitySchedule.from_samples(num_images, image_batch, num_videos, video_batch, seed=5).iterate(0)
    )


def test_schedule_is_random_access_and_resumable():
    schedule = ModalitySchedule(300, 120, seed=1)
    sequence = list(schedule.iterate(0))
    assert [schedule[i] for i in range(len(schedule))] == sequence
    assert list(schedule.iterate(0, start=137)) == sequence[137:]
    with pytest.raises(IndexError):
        schedule[len(schedule)]


def test_iid_strategy_matches_paper_probability_but_drifts():
    schedule = ModalitySchedule(5000, 4000, seed=0, strategy="iid")
    sequence = list(schedule.iterate(0))
    assert sequence.count("image") == 5000 and sequence.count("video") == 4000  # exhaustion handled
    first_half = sequence[:4000]
    assert first_half.count("image") / 4000 == pytest.approx(5 / 9, abs=0.03)
    assert _max_runs(sequence)["image"] > _max_runs(list(ModalitySchedule(5000, 4000, seed=0).iterate(0)))["image"]
    with pytest.raises(TypeError, match="iterate"):
        schedule[0]


class _ListLoader:
    """A minimal stateful loader over a list of batches."""

    def __init__(self, name: str, count: int) -> None:
        self.batches = [{"pixel_values": f"{name}{i}"} for i in range(count)]
        self.position = 0

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]
        self.position = 0

    def set_epoch(self, epoch):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_multimodal_loader_follows_schedule_and_resumes():
    schedule = ModalitySchedule(12, 5, seed=2)
    loader = MultimodalLoader(_ListLoader("i", 12), _ListLoader("v", 5), schedule)
    full = [b["pixel_values"] for b in loader]
    assert [x[0] for x in full] == ["i" if m == "image" else "v" for m in schedule.iterate(0)]
    assert sorted(full) == sorted([f"i{k}" for k in range(12)] + [f"v{k}" for k in range(5)])

    first = MultimodalLoader(_ListLoader("i", 12), _ListLoader("v", 5), schedule)
    iterator = iter(first)
    got = [next(iterator)["pixel_values"] for _ in range(7)]
    state = first.state_dict()
    again = MultimodalLoader(_ListLoader("i", 12), _ListLoader("v", 5), schedule)
    again.load_state_dict(state)
    got += [b["pixel_values"] for b in again]
    assert got == full


def test_multimodal_loader_when_a_loader_runs_dry_early():
    schedule = ModalitySchedule(10, 10, seed=0)  # counts were estimates: only 4 video batches exist
    loader = MultimodalLoader(_ListLoader("i", 10), _ListLoader("v", 4), schedule)
    batches = [b["pixel_values"] for b in loader]
    assert sorted(batches) == sorted([f"i{k}" for k in range(10)] + [f"v{k}" for k in range(4)])
    with pytest.raises(TypeError):
        MultimodalLoader(_ListLoader("i", 1), _ListLoader("v", 1), schedule=[("image",)])


def test_multimodal_loader_over_real_streams_resumes():
    from xray_hf.data import DecodedStream, ImageDecoder, StreamingDataLoader, VideoDecoder, load_embedded

    def make():
        images = DecodedStream(load_embedded("mnist", "validation", streaming=True, num_shards=4), ImageDecoder())
        videos = DecodedStream(
            load_embedded("moving-shapes", "validation", streaming=True, num_shards=4),
            VideoDecoder(num_frames=4, stride=2),
        )
        schedule = ModalitySchedule.from_samples(500, 50, 24, 4, seed=3)
        return MultimodalLoader(StreamingDataLoader(images, 50), StreamingDataLoader(videos, 4), schedule)

    loader = make()
    full = []
    for batch in loader:
        full.append((loader.modality, tuple(batch["id"])))
        assert batch["pixel_values"].ndim == (4 if loader.modality == "image" else 5)
    assert [m for m, _ in full] == list(loader.schedule.iterate(0))
    assert sum(len(ids) for m, ids in full if m == "image") == 500
    assert sum(len(ids) for m, ids in full if m == "video") == 24

    first = make()
    iterator = iter(first)
    got = []
    for _ in range(7):
        ids = tuple(next(iterator)["id"])
        got.append((first.modality, ids))
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    got += [(resumed.modality, tuple(batch["id"])) for batch in resumed]
    assert got == full
