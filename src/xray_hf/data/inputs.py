"""Input pipelines of the stages, built from the `data:` block of a run config (`xray_hf.run_config.data.DataSpec`).

A source is an embedded dataset (`name:` of `xray_hf.data.load_embedded`) or a local/Hub source (`path:` for
`xray_hf.data.load_source`). Training reads it as a stream (`DecodedStream` -> `StreamingDataLoader`); with an
image and a video source, a `MultimodalLoader` interleaves their batches (paper 4.1). Evaluation reads a
map-style, deterministically decoded copy (`xray_hf.data.tables`, where `max_samples` is defined). The keys of
`data:` are documented in `xray_hf.run_config`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import datasets

from ..run_config.data import DataSpec, SourceSpec
from .decoding import ImageDecoder, VideoDecoder
from .embedded import load_embedded
from .loader import SampleCollator, StreamingDataLoader
from .sampling import ModalitySchedule, MultimodalLoader
from .sources import load_source, undecoded
from .streams import DecodedStream
from .tables import DecodedDataset, take_samples
from .transforms import EvalTransform, Resolution, TrainTransform


def source_table(spec: SourceSpec) -> datasets.Dataset:
    """The map-style table of an embedded source (evaluation, vocabularies, embedded training streams)."""
    if spec.name is None:
        raise ValueError("map-style access (evaluation, vocabularies) needs an embedded dataset 'name'")
    dataset = take_samples(load_embedded(spec.name, spec.split), spec.max_samples)
    if spec.hashtags_from:
        dataset = with_label_hashtags(dataset, spec.hashtags_from)
    return dataset


def with_label_hashtags(dataset: datasets.Dataset, columns: list[str]) -> datasets.Dataset:
    """Add a `hashtags` column holding the class names of `columns` (e.g. moving-shapes' shape and direction)."""
    for column in columns:
        if not isinstance(dataset.features.get(column), datasets.ClassLabel):
            raise ValueError(f"hashtags_from column {column!r} is not a ClassLabel column of {dataset.column_names}")
    names = {column: dataset.features[column].names for column in columns}
    tags = [[names[c][row[i]] for i, c in enumerate(columns)] for row in zip(*(dataset[c] for c in columns))]
    if "hashtags" in dataset.column_names:
        dataset = dataset.remove_columns("hashtags")
    return dataset.add_column("hashtags", tags, feature=datasets.List(datasets.Value("string")))


def media_column(spec: SourceSpec, column_names: list[str] | None) -> tuple[str, str]:
    """(column, modality) of a source."""
    if spec.column is not None:
        modality = spec.modality or ("video" if spec.column == "video" else "image")
        return spec.column, modality
    names = column_names or []
    if spec.modality in ("image", "video"):
        return spec.modality, spec.modality
    for modality in ("image", "video"):
        if modality in names:
            return modality, modality
    raise ValueError(f"cannot tell the media column of source {spec}: columns {names}; set 'column'")


def open_stream_source(spec: SourceSpec) -> tuple[datasets.IterableDataset, int]:
    """Undecoded streaming source and its number of samples."""
    if spec.name is not None:
        full = source_table(spec)
        return undecoded(full.to_iterable_dataset(num_shards=min(spec.num_shards, len(full)))), len(full)
    if spec.num_samples is None:
        raise ValueError(f"source {spec.path!r} needs 'num_samples' (the epoch length) in the run config")
    return load_source(spec.path, split=spec.split), spec.num_samples


def make_decoder(spec: SourceSpec, column: str, modality: str, transform: Callable, train: bool) -> Callable:
    if modality == "video":
        return VideoDecoder(
            column=column, num_frames=spec.num_frames, stride=spec.stride,
            sampling="random" if train else "center", transform=transform,
        )
    return ImageDecoder(column=column, transform=transform)


def build_train_loader(
    data: DataSpec, seed: int, collate_fn: Callable | None = None, rank: int = 0, world_size: int = 1,
    resolution: Resolution | None = None, wrap_transform: Callable[[Callable], Callable] | None = None,
    wrap_decoder: Callable[[Callable, SourceSpec], Callable] | None = None,
) -> StreamingDataLoader | MultimodalLoader:
    """The training loader: one `StreamingDataLoader`, or a `MultimodalLoader` over an image and a video one.

    `resolution` (a shared `Resolution`, e.g. walked by `ProgressiveResolutionCallback`) sets the output size
    instead of `data.resolution`; `wrap_transform` wraps the training transform (e.g. `WithSimCLRViews` for SLIP)
    and `wrap_decoder` each source's decoder (e.g. `CaptionSampler`).
    """
    transform = TrainTransform(resolution if resolution is not None else data.resolution, **data.augment.kwargs())
    if wrap_transform is not None:
        transform = wrap_transform(transform)
    loaders, counts = {}, {}
    for modality, spec in (("image", data.image), ("video", data.video)):
        if spec is None:
            continue
        source, num = open_stream_source(spec)
        column, kind = media_column(spec, source.column_names)
        if kind != modality:
            raise ValueError(f"the {modality!r} source {spec} holds {kind}s")
        decoder = make_decoder(spec, column, kind, transform, train=True)
        if wrap_decoder is not None:
            decoder = wrap_decoder(decoder, spec)
        stream = DecodedStream(
            source, decoder, rank=rank, world_size=world_size,
            seed=seed, shuffle_buffer=data.shuffle_buffer,
            allow_example_split=source.num_shards < world_size * max(1, data.num_workers),
        )
        steps = num // world_size // spec.batch_size
        if steps < 1:
            raise ValueError(f"the {modality} source has {num} samples: fewer than one batch of {spec.batch_size}")
        loaders[modality] = StreamingDataLoader(
            stream, spec.batch_size, num_workers=data.num_workers, collate_fn=collate_fn or SampleCollator(),
            drop_last=True, steps_per_epoch=steps,
        )
        counts[modality] = steps
    if len(loaders) == 1:
        return next(iter(loaders.values()))
    if data.video_fraction is not None:
        counts = modality_counts(counts["image"], counts["video"], data.video_fraction)
    schedule = ModalitySchedule(counts["image"], counts["video"], seed=seed)
    return MultimodalLoader(loaders["image"], loaders["video"], schedule)


def modality_counts(image_batches: int, video_batches: int, video_fraction: float) -> dict[str, int]:
    """Batches per epoch of each modality so that `video_fraction` of them are video, without drawing more batches
    of either modality than its source holds: the larger share is cut down to match the smaller one."""
    videos_for_all_images = round(image_batches * video_fraction / (1.0 - video_fraction))
    if videos_for_all_images <= video_batches:
        return {"image": image_batches, "video": max(1, videos_for_all_images)}
    return {"image": max(1, round(video_batches * (1.0 - video_fraction) / video_fraction)), "video": video_batches}


def build_eval_dataset(data: DataSpec, spec: SourceSpec | None = None) -> DecodedDataset | None:
    """The evaluation set (`data.eval`, or `spec`), decoded with the evaluation transform."""
    if spec is None:
        if len(data.eval_sets) > 1:
            raise ValueError("this stage evaluates one eval set; data.eval lists several")
        spec = data.eval_sets[0] if data.eval_sets else None
    if spec is None:
        return None
    dataset = source_table(spec)
    column, modality = media_column(spec, dataset.column_names)
    transform = EvalTransform(data.resolution, **data.augment.normalization())
    return DecodedDataset(dataset, make_decoder(spec, column, modality, transform, train=False))


def eval_set_name(spec: SourceSpec, taken: set[str] | None = None) -> str:
    """A short unique name for an eval source (its dataset name, with the split when needed)."""
    base = spec.name or os.path.basename(os.path.normpath(str(spec.path)))
    name = base if base not in (taken or set()) else f"{base}_{spec.split}"
    return name.replace("-", "_")


def build_eval_datasets(data: DataSpec) -> dict[str, DecodedDataset]:
    """Every eval set of `data.eval`, by name (see `eval_set_name`)."""
    out: dict[str, DecodedDataset] = {}
    for spec in data.eval_sets:
        out[eval_set_name(spec, set(out))] = build_eval_dataset(data, spec)
    return out


__all__ = [
    "build_eval_dataset", "build_eval_datasets", "build_train_loader", "eval_set_name", "media_column", "modality_counts", "open_stream_source", "source_table", "with_label_hashtags",
]
