"""A stage's own top-level run-config keys (its `Stage.extras` dataclass), built from the shared parts: the texts
(`TextsSpec`: compress's `texts:`, extended by `CaptionSpec`: clip's and distill's `captions:`), the caches
(`text_cache:`, `teacher_cache:`), the teacher, the SLIP views and the hashtag vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .block import Block
from .data import AugmentSpec, SourceSpec
from .model import TeacherSpec


@dataclass
class TextsSpec(Block):
    """Which texts go with the items (compress's `texts:`): the captions of `column`, or `templates` (e.g.
    ["a photo of a {}"]) filled with the class names of a labelled set's `label_column` (default: `label`; compress
    also finds `cls`)."""

    column: str = "caption"
    templates: list[str] | None = None
    label_column: str | None = None


@dataclass
class CaptionSpec(TextsSpec):
    """`captions:` of the CLIP-style stages (clip, distill): the texts, plus the column of the hashtags and how often
    a single sentence of a caption is drawn instead of the whole."""

    hashtag_column: str | None = None
    sentence_p: float = 0.0


@dataclass
class CacheSpec(Block):
    """A cache of frozen embeddings built once: whether to use it, its folder (default: `<output_dir>/<name>`) and
    the batch size it is built with."""

    enabled: bool = True
    dir: str | None = None
    batch_size: int = 64


@dataclass
class TextCacheSpec(CacheSpec):
    """`text_cache:`: the frozen LLM's pooled outputs of every training text (on by default for a frozen LLM)."""


@dataclass
class TeacherCacheSpec(CacheSpec):
    """`teacher_cache:`: the teacher's image embeddings of every training sample's clean view (off by default)."""

    enabled: bool = False


@dataclass
class SlipSpec(AugmentSpec):
    """`slip:`: the SimCLR view augmentation of SLIP (when `slip_weight > 0`); `videos: false` keeps SLIP to image
    batches (by default clips give two of their frames as views)."""

    crop_scale: list[float] | None = (0.08, 1.0)
    blur_p: float | None = 0.5
    videos: bool = True

    def kwargs(self) -> dict[str, Any]:
        return {key: tuple(value) if isinstance(value, list) else value for key, value in super().kwargs().items()}


@dataclass
class VocabularySpec(Block):
    """`vocabulary:` of hashtag: the tags of `column` counted in `source` (default: the training sources), kept
    when used by `min_count` items, at most `max_size` of them (`HashtagVocabulary.from_tag_lists`)."""

    source: SourceSpec | None = None
    column: str = "hashtags"
    min_count: int = 1
    max_size: int | None = None


@dataclass
class HashtagRunExtras(Block):
    vocabulary: VocabularySpec = field(default_factory=VocabularySpec)


@dataclass
class CLIPRunExtras(Block):
    captions: CaptionSpec = field(default_factory=CaptionSpec)
    text_cache: TextCacheSpec = field(default_factory=TextCacheSpec)
    slip: SlipSpec = field(default_factory=SlipSpec)


@dataclass
class DistillRunExtras(Block):
    """`captions:` and `text_cache:` are for CLIP teachers: left out (None), an image-only teacher runs."""

    teacher: TeacherSpec | None = None
    captions: CaptionSpec | None = None
    text_cache: TextCacheSpec | None = None
    teacher_cache: TeacherCacheSpec = field(default_factory=TeacherCacheSpec)

    def validate(self, path: str) -> None:
        if self.teacher is None:
            raise ValueError("the distill stage needs teacher: {from_pretrained: DIR}")


@dataclass
class CompressionRunExtras(Block):
    """`texts:` of compress: the texts that share the space with the items."""

    texts: TextsSpec = field(default_factory=TextsSpec)


__all__ = [
    "CLIPRunExtras", "CacheSpec", "CaptionSpec", "CompressionRunExtras", "DistillRunExtras", "HashtagRunExtras",
    "SlipSpec", "TeacherCacheSpec", "TextCacheSpec", "TextsSpec", "VocabularySpec",
]
