"""Data curation (paper section 2): caption cleaning, a language filter, sentence splitting and unigram counts, as
streaming `datasets` steps (WordNet concepts, MetaCLIP balancing and hashtag canonicalisation: `concepts.py`).

Each step works on a `datasets.Dataset` or an `IterableDataset` through `map` / `filter`, so nothing is
materialised: `clean_captions(ds)`, `filter_language(ds)`, `split_into_sentences(ds)` return datasets of the same
kind. Counting passes (`UnigramCounts`) are plain mergeable tallies: count each shard (or each rank's shard) alone,
`merge` the results; `state_dict()` is JSON with the number of rows seen, so an interrupted pass resumes with
`dataset.skip(counts.rows)`.

Libraries: ftfy (mojibake), emoji (emoji sequences, skin tones and ZWJ joins included), py3langid (langid.py's
model, shipped inside the package as an npz file: offline, no pickle), pysbd (rule-based sentence boundaries, 22
languages), scikit-learn's English stop-word list.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import emoji
import ftfy

URL = re.compile(r"(?:https?://|ftp://|www\.)\S+|\b[\w.-]+\.(?:com|org|net|io|ly|co|me|be|gl)(?:/\S*)?\b", re.I)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
USER_TAG = re.compile(r"(?<![\w@])@\w+")
HASHTAG = re.compile(r"#(\w+)")
RETWEET = re.compile(r"^\s*RT\b\s*:?")
CAMEL_CASE = re.compile(r"(?<=[a-z])(?=[A-Z])")
REPEATED_PUNCTUATION = re.compile(r"([!?.,;:~*\-])\1+")
# punctuation that carries meaning in a caption; other symbols (arrows, bullets, boxes, ...) are dropped
KEPT_PUNCTUATION = set(".,!?;:'\"()-&/%+")
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def _keep_character(char: str) -> bool:
    category = unicodedata.category(char)
    if category[0] in "LN" or category == "Mn":  # letters (any script), digits, combining marks
        return True
    return char in KEPT_PUNCTUATION or char.isspace()


def clean_caption(text: str) -> str:
    """One caption cleaned as the paper does (2.1): mojibake fixed, URLs, e-mail addresses, user tags and emojis
    removed (and a leading retweet marker), hashtags kept as words (`#sunset_beach`, `#SunsetBeach` -> `sunset beach`,
`Sunset Beach`), non-semantic characters dropped, repeated
    punctuation collapsed, whitespace normalised. Returns "" when nothing meaningful is left."""
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a string, got {type(text).__name__}")
    text = ftfy.fix_text(text, normalization="NFC")
    text = EMAIL.sub(" ", text)  # before URLs and user tags: both would eat part of an address
    text = URL.sub(" ", text)
    text = USER_TAG.sub(" ", text)
    text = RETWEET.sub(" ", text)
    text = HASHTAG.sub(lambda m: " " + CAMEL_CASE.sub(" ", m.group(1)).replace("_", " ") + " ", text)
    text = emoji.replace_emoji(text, " ")
    text = "".join(char if _keep_character(char) else " " for char in text)
    text = REPEATED_PUNCTUATION.sub(r"\1", text)
    text = re.sub(r"\s+([.,!?;:])", r"\1", " ".join(text.split()))
    text = text.strip(" -/&+,;:")
    return text if any(ch.isalnum() for ch in text) else ""


def clean_captions(dataset: Any, column: str = "caption", drop_empty: bool = True) -> Any:
    """`clean_caption` over a dataset's column (streaming-safe); rows left empty are dropped unless told not to."""
    out = dataset.map(lambda row: {column: clean_caption(row[column])})
    return out.filter(lambda row: bool(row[column])) if drop_empty else out


# ----------------------------------------------------------------------------------------------------- language
class LanguageFilter:
    """Language identification with py3langid (langid.py's 97-language model, shipped in the package): keeps
    captions whose most likely language is in `languages` with probability >= `min_probability`.

    `languages` may also restrict the identifier to a candidate set (`restrict_to`), which raises accuracy on
    short texts when the data's languages are known."""

    def __init__(self, languages: Sequence[str] = ("en",), min_probability: float = 0.5,
                 restrict_to: Sequence[str] | None = None):
        from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

        if not languages:
            raise ValueError("LanguageFilter needs at least one language to keep")
        if not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability}")
        self.identifier = LanguageIdentifier.from_modelpath(os.path.join(MODEL_DIR, MODEL_FILE), norm_probs=True)
        known = set(self.identifier.nb_classes)
        unknown = sorted((set(languages) | set(restrict_to or ())) - known)
        if unknown:
            raise ValueError(f"unknown language codes {unknown}; py3langid knows {len(known)} ISO 639-1 codes")
        if restrict_to:
            self.identifier.set_languages(sorted(set(restrict_to) | set(languages)))
        self.languages, self.min_probability = set(languages), min_probability

    def __call__(self, text: str) -> tuple[str, float]:
        """(language code, probability) of `text`."""
        language, probability = self.identifier.classify(text)
        return language, float(probability)

    def keep(self, text: str) -> bool:
        language, probability = self(text)
        return language in self.languages and probability >= self.min_probability


def filter_language(dataset: Any, column: str = "caption", languages: Sequence[str] = ("en",),
                    min_probability: float = 0.5, restrict_to: Sequence[str] | None = None) -> Any:
    """Keep the rows whose `column` is in one of `languages` (streaming-safe); see `LanguageFilter`."""
    language_filter = LanguageFilter(languages, min_probability, restrict_to)
    return dataset.filter(lambda row: language_filter.keep(row[column]))


# ---------------------------------------------------------------------------------------------------- sentences
@functools.lru_cache(maxsize=8)
def _segmenter(language: str):
    import pysbd

    return pysbd.Segmenter(language=language, clean=False)


def split_sentences(text: str, language: str = "en") -> list[str]:
    """The sentences of a caption (pysbd), stripped, empty ones dropped."""
    return [s.strip() for s in _segmenter(language).segment(text) if s.strip()]


def split_into_sentences(dataset: Any, column: str = "caption", language: str = "en",
                         keep_columns: Sequence[str] | None = None) -> Any:
    """One row per sentence (paper 2.1: each image paired with each sentence of its caption as its own pair),
    with the other columns (or `keep_columns`) repeated and `sentence_index` added (streaming-safe)."""

    def explode(batch: dict[str, list]) -> dict[str, list]:
        others = [c for c in batch if c != column and (keep_columns is None or c in keep_columns)]
        out: dict[str, list] = {column: [], "sentence_index": [], **{c: [] for c in others}}
        for row, text in enumerate(batch[column]):
            for index, sentence in enumerate(split_sentences(text, language)):
                out[column].append(sentence)
                out["sentence_index"].append(index)
                for c in others:
                    out[c].append(batch[c][row])
        return out

    columns = getattr(dataset, "column_names", None)
    return dataset.map(explode, batched=True, remove_columns=columns)


# ------------------------------------------------------------------------------------------------------ counting
@functools.lru_cache(maxsize=1)
def english_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


class UnigramCounts:
    """Word frequencies without stop words, over a stream of captions; mergeable (shards, ranks) and resumable.

    Words are lower-cased letter runs (any script, with inner apostrophes); `stop_words` defaults to
    scikit-learn's English list. `rows` counts the captions seen, so a pass resumes with `dataset.skip(rows)`."""

    def __init__(self, stop_words: Iterable[str] | None = None):
        self.stop_words = frozenset(stop_words) if stop_words is not None else english_stop_words()
        self.counts: Counter[str] = Counter()
        self.rows = 0

    def words(self, text: str) -> list[str]:
        return [w for w in (m.group(0).lower() for m in WORD.finditer(text)) if w not in self.stop_words and len(w) > 1]

    def update(self, texts: Iterable[str]) -> UnigramCounts:
        for text in texts:
            self.counts.update(self.words(text))
            self.rows += 1
        return self

    def merge(self, other: UnigramCounts) -> UnigramCounts:
        if other.stop_words != self.stop_words:
            raise ValueError("cannot merge unigram counts made with different stop-word lists")
        self.counts.update(other.counts)
        self.rows += other.rows
        return self

    def most_common(self, n: int | None = None) -> list[tuple[str, int]]:
        return self.counts.most_common(n)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "counts": dict(self.counts), "stop_words": sorted(self.stop_words)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> UnigramCounts:
        missing = {"rows", "counts", "stop_words"} - set(state)
        if missing:
            raise ValueError(f"not a UnigramCounts state: missing {sorted(missing)}")
        out = cls(state["stop_words"])
        out.counts, out.rows = Counter(state["counts"]), int(state["rows"])
        return out

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnigramCounts:
        with open(path, encoding="utf-8") as f:
            return cls.from_state_dict(json.load(f))






__all__ = [
    "LanguageFilter", "UnigramCounts", "clean_caption", "clean_captions", "english_stop_words", "filter_language",
    "split_into_sentences", "split_sentences",
]
