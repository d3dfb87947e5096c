"""`data:` blocks of a run config: the image / video sources of the vision stages (`DataSpec`, read by
`xray_hf.data.inputs`) and the text sources of the text stages (`TextDataSpec`), with the augmentation keys that
`data.augment` and the clip stage's `slip:` share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .block import Block


@dataclass
class SourceSpec(Block):
    """One input source (`data.image`, `data.video`, an entry of `data.eval`, `vocabulary.source`). Exactly one of
    `name` (an embedded dataset) or `path` (`xray_hf.data.load_source`)."""

    name: str | None = None
    path: str | None = None
    split: str = "train"
    batch_size: int = 32
    modality: str | None = None  # inferred from the columns when not given
    column: str | None = None  # the media column; "image" / "video" by default
    num_samples: int | None = None  # needed for `path` sources (epoch length); counted for embedded ones
    num_frames: int = 4
    stride: int = 2
    num_shards: int = 8
    max_samples: int | None = None  # evenly spaced samples of an embedded source (`data.tables.take_samples`)
    hashtags_from: list[str] | None = None  # build a "hashtags" column from these ClassLabel columns' names

    def validate(self, path: str) -> None:
        if (self.name is None) == (self.path is None):
            raise ValueError(f"{path or 'a data source'} needs exactly one of 'name' or 'path', got {self}")
        if self.batch_size < 1:
            raise ValueError(f"{path or 'a data source'}.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class AugmentSpec(Block):
    """`TrainTransform`'s augmentation settings; a key left out keeps `TrainTransform`'s default."""

    resize: str | None = None  # random_resized_crop (default), variable_aspect_ratio or center_crop
    crop_scale: list[float] | None = None
    flip_p: float | None = None
    brightness: float | None = None
    saturation: float | None = None
    blur_p: float | None = None
    blur_sigma: list[float] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The settings given (or defaulted by a subclass), as `TrainTransform` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(AugmentSpec) if getattr(self, f.name) is not None}


@dataclass
class TransformSpec(AugmentSpec):
    """`data.augment:`: the augmentation, and the normalisation that the evaluation transform shares."""

    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def kwargs(self) -> dict[str, Any]:
        normalization = {key: getattr(self, key) for key in ("image_mean", "image_std") if getattr(self, key) is not None}
        return {**super().kwargs(), **normalization}

    def normalization(self) -> dict[str, Any]:
        """The `EvalTransform` keyword arguments (the normalisation alone)."""
        return {key: value for key, value in self.kwargs().items() if key in ("image_mean", "image_std")}


@dataclass
class DataSpec(Block):
    """`data:` of the vision stages."""

    resolution: int | list[int] = 224
    image: SourceSpec | None = None
    video: SourceSpec | None = None
    eval: SourceSpec | list[SourceSpec] | None = None  # one source, or a list (stages that evaluate several)
    augment: TransformSpec = field(default_factory=TransformSpec)
    num_workers: int = 0
    shuffle_buffer: int = 256
    video_fraction: float | None = None  # share of video batches (e.g. 0.25: images:videos 75:25, paper 4.11)

    def validate(self, path: str) -> None:
        if self.image is None and self.video is None:
            raise ValueError(f"{path or 'data'} needs an 'image' or a 'video' source (or both)")
        if self.video_fraction is not None:
            if self.image is None or self.video is None:
                raise ValueError(f"{path or 'data'}.video_fraction needs both an 'image' and a 'video' source")
            if not 0.0 < self.video_fraction < 1.0:
                raise ValueError(f"{path or 'data'}.video_fraction must be in (0, 1), got {self.video_fraction}")

    @property
    def eval_sets(self) -> list[SourceSpec]:
        """Every eval source, in the order given."""
        return [] if self.eval is None else list(self.eval) if isinstance(self.eval, list) else [self.eval]


@dataclass
class TextSourceSpec(Block):
    """One embedded dataset's text columns (`data.sources` of the text stages)."""

    name: str
    split: str = "train"
    columns: list[str] = field(default_factory=lambda: ["caption"])
    max_samples: int | None = None

    def validate(self, path: str) -> None:
        if not self.columns:
            raise ValueError(f"{path or 'a text source'} needs at least one column, got {self}")


@dataclass
class TextDataSpec(Block):
    """`data:` of the text stages (mntp, simcse)."""

    sources: list[TextSourceSpec] = field(default_factory=list)
    max_length: int = 32
    mask_probability: float = 0.2  # MNTP only

    def validate(self, path: str) -> None:
        if not self.sources:
            raise ValueError(f"{path or 'data'}.sources needs at least one {{name, split, columns}} text source")
        if self.max_length < 2:
            raise ValueError(f"{path or 'data'}.max_length must be >= 2, got {self.max_length}")


__all__ = ["AugmentSpec", "DataSpec", "SourceSpec", "TextDataSpec", "TextSourceSpec", "TransformSpec"]
