"""Data curation (paper section 2): caption cleaning, a language filter, sentence splitting and unigram counts, as
streaming `datasets` steps.

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
import shutil
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
                    min_probability: float = 0.5) -> Any:
    """Keep the rows whose `column` is in one of `languages` (streaming-safe)."""
    language_filter = LanguageFilter(languages, min_probability)
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




# ------------------------------------------------------------------------------------------------------- WordNet
WORDNET_DIR = "/usr/share/wordnet"  # Debian's wordnet-base
# lexnames(5): the lexicographer files, numbered; Debian's wordnet-base ships only the man page, nltk reads the file
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _reader_root(path: str) -> str:
    """A directory nltk's reader accepts for the WordNet database at `path`: `path` itself when it has `lexnames`,
    else a cache directory with copies of its files (once, ~30 MB) plus a generated `lexnames`."""
    if os.path.isfile(os.path.join(path, "lexnames")):
        return path
    import hashlib

    cache = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "xray_hf", "wordnet",
                         hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16])
    os.makedirs(cache, exist_ok=True)
    for name in os.listdir(path):
        source, target = os.path.join(path, name), os.path.join(cache, name)
        if os.path.isfile(source) and not os.path.exists(target):
            # a copy: nltk refuses symlinks that resolve outside the root and multiply-linked files
            shutil.copyfile(source, target)
    lexnames = "".join(f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
    with open(os.path.join(cache, "lexnames"), "w", encoding="utf-8") as f:
        f.write(lexnames)
    return cache


class WordNetConcepts:
    """Visual concepts of a caption: its words (and two-word phrases, e.g. "ice cream") mapped to WordNet noun and
    verb synsets, most frequent sense first, so synonyms merge ("car", "automobile" -> `car.n.01`) and inflections
    too ("dogs" -> `dog.n.01`). WordNet is read with nltk's `WordNetCorpusReader` from `path` (default Debian's
    `wordnet-base` at /usr/share/wordnet, or `$XRAY_WORDNET`)."""

    def __init__(self, path: str | None = None, pos: Sequence[str] = ("n",), stop_words: Iterable[str] | None = None):
        path = path or os.environ.get("XRAY_WORDNET", WORDNET_DIR)
        if not os.path.isfile(os.path.join(path, "data.noun")) or not os.path.isfile(os.path.join(path, "index.noun")):
            raise FileNotFoundError(
                f"no WordNet database at {path!r}: install Debian's `wordnet-base` (apt-get install wordnet-base) or "
                "point `path` / $XRAY_WORDNET at a WordNet 3.x dict directory (data.noun, index.noun, ...)"
            )
        import warnings

        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        root = _reader_root(path)
        if root not in nltk.data.path:
            nltk.data.path.append(root)  # nltk refuses corpus roots outside its data path
        class Reader(WordNetCorpusReader):
            def map_wn(self, version: str = "wordnet"):
                return None  # the multilingual (OMW) mapping would load nltk's downloaded 'wordnet'; unused here

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multilingual functions.*")
            self.reader = Reader(root, None)
        unknown = set(pos) - {"n", "v"}
        if unknown:
            raise ValueError(f"pos must be among 'n' (nouns) and 'v' (verbs), got {sorted(unknown)}")
        self.pos = tuple(pos)
        self.stop_words = frozenset(stop_words) if stop_words is not None else english_stop_words()

    @functools.lru_cache(maxsize=200_000)  # noqa: B019 (one reader per process; the cache is the point)
    def synset(self, phrase: str) -> str | None:
        """The most frequent sense of `phrase` (a word or `two_words`) among `pos`, as a synset name, or None."""
        for pos in self.pos:
            base = self.reader.morphy(phrase, pos)
            if base is None:
                continue
            synsets = self.reader.synsets(base, pos)
            if synsets:
                return synsets[0].name()
        return None

    def __call__(self, text: str) -> list[str]:
        """The distinct concepts of `text`, in order; a two-word phrase with a synset replaces its words'."""
        words = [m.group(0).lower() for m in WORD.finditer(text)]
        concepts: list[str] = []
        skip = False
        for i, word in enumerate(words):
            if skip:
                skip = False
                continue
            if i + 1 < len(words):
                pair = self.synset(f"{word}_{words[i + 1]}")
                if pair is not None:
                    concepts.append(pair)
                    skip = True
                    continue
            if word not in self.stop_words and len(word) > 1:
                concept = self.synset(word)
                if concept is not None:
                    concepts.append(concept)
        return list(dict.fromkeys(concepts))


class ConceptCounts(UnigramCounts):
    """Like `UnigramCounts`, over WordNet concepts (`WordNetConcepts`) instead of words: mergeable, resumable."""

    def __init__(self, concepts: WordNetConcepts, stop_words: Iterable[str] | None = None):
        super().__init__(stop_words if stop_words is not None else concepts.stop_words)
        self.concepts = concepts

    def words(self, text: str) -> list[str]:
        return self.concepts(text)


def balance_probability(concepts: Sequence[str], counts: Counter, t: int) -> float:
    """MetaCLIP's rule: each matched concept `c` independently keeps the pair with probability `t / max(counts[c], t)`;
    the pair survives if any does, so `1 - prod(1 - t / max(count, t))`. Tail concepts (count <= t) keep every pair;
    head concepts keep about `t` of theirs. A pair without concepts is not kept."""
    dropped = 1.0
    for concept in set(concepts):
        dropped *= 1.0 - t / max(counts.get(concept, 0), t)
    return 1.0 - dropped


def balance_concepts(dataset: Any, concepts: WordNetConcepts, counts: Counter, t: int, column: str = "caption",
                     id_column: str = "id", seed: int = 0) -> Any:
    """Resample a stream by concept (MetaCLIP: t = 20k at 400M pairs; scale t with the data): each row survives
    with `balance_probability`, drawn from (seed, row id) so a rerun or a resumed pass keeps the same rows."""
    import hashlib

    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")

    def keep(row: dict) -> bool:
        probability = balance_probability(concepts(row[column]), counts, t)
        digest = hashlib.sha256(f"{seed}:{row[id_column]}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < probability

    return dataset.filter(keep)


def plot_concept_histogram(before: Counter, after: Counter, path: str | os.PathLike, t: int | None = None) -> None:
    """A PNG of concept counts by rank, before and after balancing (log-log), with the threshold `t`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for counts, label in ((before, "before"), (after, "after")):
        values = sorted(counts.values(), reverse=True)
        ax.plot(range(1, len(values) + 1), values, label=f"{label} ({len(values)} concepts, {sum(values)} matches)")
    if t is not None:
        ax.axhline(t, color="grey", linestyle="--", label=f"t = {t}")
    ax.set(xscale="log", yscale="log", xlabel="concept rank", ylabel="pairs", title="WordNet concept counts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "ConceptCounts", "LanguageFilter", "UnigramCounts", "WordNetConcepts", "balance_concepts", "balance_probability",
    "clean_caption", "clean_captions", "english_stop_words", "filter_language", "plot_concept_histogram",
    "split_into_sentences", "split_sentences",
]
