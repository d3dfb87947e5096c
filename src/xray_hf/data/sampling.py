"""Multimodal batch sampling (paper section 4.1): each batch is all images or all videos, mixed evenly.

The paper draws an image batch with probability P_I and a video batch with P_V, where
P_I : P_V = (N_I / B_I) : (N_V / B_V), so both modalities run out together and the smaller one is spread
over the whole epoch. Independent draws do that only on average: over n steps the counts drift by about
sqrt(n) batches and single-modality runs grow like log(n). The default `"stratified"` schedule keeps the
same per-epoch proportions exactly and bounds both: the steps are cut into as many strata as there are
batches of the rarer modality, and each stratum holds exactly one of them at a random position. So

- every stratum of about 1 / P_rare steps holds one rare batch: the rarer modality is never absent for more
  than 2 * ceil(1 / P_rare) - 2 steps in a row, and never appears more than twice in a row;
- both modalities end within ceil(1 / P_rare) steps of each other.

`strategy="iid"` draws every step independently, as the paper words it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

MODALITIES = ("image", "video")
STRATEGIES = ("stratified", "iid")


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def modality_probabilities(
    num_images: int, image_batch_size: int, num_videos: int, video_batch_size: int
) -> tuple[float, float]:
    """(P_image, P_video) with P_I : P_V = (N_I / B_I) : (N_V / B_V) (paper 4.1).

    >>> modality_probabilities(5_000_000_000, 64, 2_000_000_000, 32)  # the paper's example: 5 : 4
    (0.5555555555555556, 0.4444444444444444)
    """
    _check_count("num_images", num_images, 0)
    _check_count("num_videos", num_videos, 0)
    _check_count("image_batch_size", image_batch_size, 1)
    _check_count("video_batch_size", video_batch_size, 1)
    image_batches = num_images / image_batch_size
    video_batches = num_videos / video_batch_size
    total = image_batches + video_batches
    if total == 0:
        raise ValueError("num_images and num_videos are both 0: there is nothing to sample")
    return image_batches / total, video_batches / total


def _stratum_seed(seed: int, epoch: int, stratum: int) -> list[int]:
    return [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, stratum & 0xFFFFFFFF, stratum >> 32]


class ModalitySchedule:
    """Which modality each step of an epoch draws, for `num_image_batches` and `num_video_batches`.

    `"stratified"` schedules are random-access (`schedule[step]`) and depend only on (seed, epoch, step);
    `"iid"` ones are drawn step by step. Both are deterministic given (seed, epoch).
    """

    def __init__(
        self, num_image_batches: int, num_video_batches: int, seed: int = 0, strategy: str = "stratified"
    ) -> None:
        _check_count("num_image_batches", num_image_batches, 0)
        _check_count("num_video_batches", num_video_batches, 0)
        if num_image_batches + num_video_batches == 0:
            raise ValueError("the schedule needs at least one batch")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.counts = {"image": int(num_image_batches), "video": int(num_video_batches)}
        self.seed, self.strategy = seed, strategy
        self.rare = "video" if num_video_batches <= num_image_batches else "image"
        self.common = "image" if self.rare == "video" else "video"

    @classmethod
    def from_samples(
        cls,
        num_images: int,
        image_batch_size: int,
        num_videos: int,
        video_batch_size: int,
        world_size: int = 1,
        **kwargs: Any,
    ) -> ModalitySchedule:
        """Schedule for sample counts (whole dataset, split over `world_size` ranks, incomplete batches dropped)."""
        modality_probabilities(num_images, image_batch_size, num_videos, video_batch_size)  # validates
        return cls(
            num_images // world_size // image_batch_size, num_videos // world_size // video_batch_size, **kwargs
        )

    def __len__(self) -> int:
        return self.counts["image"] + self.counts["video"]

    @property
    def probabilities(self) -> tuple[float, float]:
        return self.counts["image"] / len(self), self.counts["video"] / len(self)

    def max_run(self, modality: str) -> int:
        """The longest run of `modality` a stratified schedule can produce."""
        rare = self.counts[self.rare]
        if rare == 0:
            return len(self) if modality == self.common else 0
        if modality == self.rare:
            return 2 if len(self) > rare else rare
        return 2 * math.ceil(len(self) / rare) - 2

    def _bound(self, stratum: int) -> int:
        return stratum * len(self) // self.counts[self.rare]

    def __getitem__(self, step: int) -> str:
        """Modality of `step` (stratified only; `iid` schedules are drawn by `iterate`)."""
        if self.strategy != "stratified":
            raise TypeError("iid schedules depend on the steps before: use iterate()")
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} outside the epoch of {len(self)} steps")
        return self.at(step, epoch=0)

    def at(self, step: int, epoch: int) -> str:
        rare = self.counts[self.rare]
        if rare == 0:
            return self.common
        stratum = step * rare // len(self)
        while self._bound(stratum + 1) <= step:
            stratum += 1
        while self._bound(stratum) > step:
            stratum -= 1
        start, stop = self._bound(stratum), self._bound(stratum + 1)
        chosen = start + int(np.random.default_rng(_stratum_seed(self.seed, epoch, stratum)).integers(stop - start))
        return self.rare if step == chosen else self.common

    def iterate(self, epoch: int = 0, start: int = 0, used: dict[str, int] | None = None) -> Iterator[str]:
        """Modalities from step `start` to the end of the epoch (`used`: batches already drawn, for iid)."""
        if self.strategy == "stratified":
            for step in range(start, len(self)):
                yield self.at(step, epoch)
            return
        used = dict(used or {"image": 0, "video": 0})
        p_image = self.probabilities[0]
        for step in range(start, len(self)):
            rng = np.random.default_rng(_stratum_seed(self.seed, epoch, step))
            modality = "image" if rng.random() < p_image else "video"
            if used[modality] >= self.counts[modality]:
                modality = "video" if modality == "image" else "image"
            used[modality] += 1
            yield modality


class MultimodalLoader:
    """Interleave an image loader and a video loader by a `ModalitySchedule`; every batch has one modality.

    The loaders are `StreamingDataLoader`s (or any iterables with `state_dict`/`load_state_dict`/`set_epoch`).
    Should a loader run dry before its scheduled count (counts were estimates), its remaining steps go to the
    other one. `modality` tells which loader produced the last batch. `state_dict()` covers the schedule
    position and both loaders, so a resumed run continues with the same batches.
    """

    def __init__(self, image_loader: Any, video_loader: Any, schedule: ModalitySchedule) -> None:
        if not isinstance(schedule, ModalitySchedule):
            raise TypeError(f"schedule must be a ModalitySchedule, got {type(schedule).__name__}")
        self.loaders = {"image": image_loader, "video": video_loader}
        self.schedule = schedule
        self.epoch = 0
        self.modality: str | None = None
        self._step = 0
        self._used = {"image": 0, "video": 0}
        self._exhausted: set[str] = set()

    def __len__(self) -> int:
        return len(self.schedule)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._step, self._used, self._exhausted = 0, {"image": 0, "video": 0}, set()
        for loader in self.loaders.values():
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        iterators = {name: iter(loader) for name, loader in self.loaders.items()}
        for modality in self.schedule.iterate(self.epoch, self._step, self._used):
            batch = None
            for candidate in (modality, "video" if modality == "image" else "image"):
                if candidate in self._exhausted:
                    continue
                try:
                    batch = next(iterators[candidate])
                except StopIteration:
                    self._exhausted.add(candidate)
                    continue
                modality = candidate
                break
            if batch is None:
                break
            self._step += 1
            self._used[modality] += 1
            self.modality = modality
            yield batch
        for iterator in iterators.values():  # the schedule is done: leftovers wait for the next epoch
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._step, self._used, self._exhausted = 0, {"image": 0, "video": 0}, set()

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self._step,
            "used": dict(self._used),
            "exhausted": sorted(self._exhausted),
            "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "step", "used", "exhausted", "loaders"} - set(state)
        if missing:
            raise ValueError(f"not a MultimodalLoader state: missing {sorted(missing)}")
        self.epoch, self._step = state["epoch"], state["step"]
        self._used, self._exhausted = dict(state["used"]), set(state["exhausted"])
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][name])


__all__ = ["MODALITIES", "STRATEGIES", "ModalitySchedule", "MultimodalLoader", "modality_probabilities"]
