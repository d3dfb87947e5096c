"""Caption texts of image/video-text pairs for the CLIP stage (paper 4.2.3, 4.7.1).

`CaptionSampler` wraps a stream decoder and, from the same per-sample random generator (so the draw is exact on
resume and different in every DataLoader worker), picks the texts a sample is trained with:

- `text`: the caption (one of them when the column holds several), and with probability `sentence_p` a single
  sentence of it instead of the whole caption (paper 4.7.1, after Perception Encoder); or, for a labelled set
  trained with `templates`, a template drawn at random and filled with the item's class name ("a photo of a {}"),
  as CLIP-style training on classification data does (then `caption_group` holds the class name: items of one
  class are not each other's negatives, whichever templates they drew);
- `hashtag_text`: the item's aggregated hashtags as one text (the siamese loss's second caption), `""` when the
  item has none.

`candidate_texts` lists every text the sampler can produce for a record, so a text-embedding cache can be built
over exactly those texts before training.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embedded_builders import with_article

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ARTICLE = re.compile(r"\b([Aa]n?) \{\}")


def fill_template(template: str, classname: str) -> str:
    """`template` with `{}` replaced by `classname`; 'a {}' / 'an {}' become the right article for the name
    ("a photo of a {}" with "ankle boot" -> "a photo of an ankle boot")."""
    if template.count("{}") != 1:
        raise ValueError(f"a template needs exactly one '{{}}' placeholder, got {template!r}")
    if not classname.strip():
        raise ValueError("empty class name")
    match = _ARTICLE.search(template)
    if match is None:
        return template.replace("{}", classname)
    phrase = with_article(classname)
    if match.group(1)[0] == "A":
        phrase = phrase[0].upper() + phrase[1:]
    return template[: match.start()] + phrase + template[match.end() :]


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (split after `.`, `!` or `?` followed by a space and an upper-case letter, digit or
    quote, which keeps abbreviations like "e.g. this" together); a text without such a break is one sentence."""
    parts = [part.strip() for part in _SENTENCE_END.split(text.strip())]
    return [part for part in parts if part] or [text.strip()]


def hashtag_text(tags: Sequence[str] | None, separator: str = ", ") -> str:
    """The aggregated hashtags of an item as one text (without '#'), in their given order."""
    if not tags:
        return ""
    return separator.join(str(tag).lstrip("#").replace("_", " ") for tag in tags if str(tag).strip("# "))


def _captions(value: Any, column: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"caption column {column!r} must hold a string or a non-empty list of strings, got {value!r:.80}")


@dataclass
class CaptionSampler:
    """Decoder wrapper: `decoder(record, rng)` plus `text` and `hashtag_text` (see the module docstring).

    Args:
        decoder: the media decoder (`ImageDecoder`, `VideoDecoder`, ...).
        caption_column: the caption column (a string or a list of strings per item).
        hashtag_column: a list-of-tags column, or None for no hashtag text.
        sentence_p: probability of training on one sentence of the caption instead of all of it.
        templates, classnames, label_column: caption each item with a random template filled with
            `classnames[record[label_column]]` instead of reading `caption_column`.
    """

    decoder: Callable[..., dict]
    caption_column: str = "caption"
    hashtag_column: str | None = None
    sentence_p: float = 0.0
    templates: Sequence[str] | None = None
    classnames: Sequence[str] | None = None
    label_column: str = "label"

    def __post_init__(self) -> None:
        if not 0.0 <= self.sentence_p <= 1.0:
            raise ValueError(f"sentence_p must be in [0, 1], got {self.sentence_p}")
        if (self.templates is None) != (self.classnames is None):
            raise ValueError("caption templates need the class names of the label column (and the other way round)")
        if self.templates is not None:
            if not self.templates:
                raise ValueError("templates must not be empty")
            for template in self.templates:
                fill_template(template, "x")  # one '{}' each

    def _captions(self, record: dict) -> list[str]:
        if self.templates is None:
            if self.caption_column not in record:
                raise ValueError(
                    f"records have no caption column {self.caption_column!r} (columns: {sorted(record)})"
                )
            return _captions(record[self.caption_column], self.caption_column)
        if self.label_column not in record:
            raise ValueError(f"records have no label column {self.label_column!r} (columns: {sorted(record)})")
        name = self.classnames[int(record[self.label_column])]
        return [fill_template(template, name) for template in self.templates]

    @property
    def column(self) -> str | None:
        return getattr(self.decoder, "column", None)

    @property
    def modality(self) -> str | None:
        return getattr(self.decoder, "modality", None)

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        rng = rng if rng is not None else np.random.default_rng()
        captions = self._captions(record)
        # the caption draws come first and from a generator of their own, so the media transform's draws do not
        # depend on whether a sentence was sampled
        text_rng = np.random.default_rng(rng.integers(2**63))
        sample = self.decoder(record, rng)
        text = captions[int(text_rng.integers(len(captions)))]
        if self.sentence_p > 0 and text_rng.random() < self.sentence_p:
            sentences = split_sentences(text)
            text = sentences[int(text_rng.integers(len(sentences)))]
        sample["text"] = text
        if self.templates is not None:  # every caption of a class describes every item of it: one group
            sample["caption_group"] = self.classnames[int(record[self.label_column])]
        if self.hashtag_column is not None:
            sample["hashtag_text"] = hashtag_text(record.get(self.hashtag_column))
        return sample

    def candidate_texts(self, records: Iterable[dict]) -> list[str]:
        """Every distinct text the sampler can give these records (captions, their sentences, hashtag texts)."""
        texts: dict[str, None] = {}
        for record in records:
            for caption in self._captions(record):
                texts[caption] = None
                if self.sentence_p > 0:
                    texts.update(dict.fromkeys(split_sentences(caption)))
            if self.hashtag_column is not None:
                tags = hashtag_text(record.get(self.hashtag_column))
                if tags:
                    texts[tags] = None
        return list(texts)


__all__ = ["CaptionSampler", "fill_template", "hashtag_text", "split_sentences"]
