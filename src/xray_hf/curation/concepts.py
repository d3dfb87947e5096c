"""WordNet concepts of captions and hashtags (paper 2.1, 2.2): visual concepts with synonyms merged, MetaCLIP's
concept balancing, hashtag canonicalisation and long-tail resampling of video-hashtag pairs.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .cleaning import WORD, UnigramCounts, english_stop_words

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



# ------------------------------------------------------------------------------------------------------ hashtags
CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def hashtag_words(tag: str) -> list[str]:
    """The words of a hashtag: '#', '_' and CamelCase split, lower-cased (`#IceCream` -> ['ice', 'cream'])."""
    return [w.lower() for w in WORD.findall(CAMEL.sub(" ", str(tag).lstrip("#").replace("_", " ")))]


def canonical_hashtags(tag_counts: Counter | dict[str, int], concepts: WordNetConcepts) -> dict[str, str]:
    """user tag -> canonical tag. Tags whose words name the same WordNet synset (the whole phrase first, e.g.
    `ice_cream`, else a single word) form one group, and the group's most used tag (ties: alphabetical) is its
    canonical form: `#cars`, `#Car` and `#automobile` -> `car` when `car` is the most used. Tags WordNet does not
    know keep their own normalised form. The table feeds `HashtagVocabulary` through `canonicalize_hashtags`."""
    normalised: dict[str, str] = {}
    for tag in tag_counts:
        words = hashtag_words(tag)
        normalised[tag] = " ".join(words)
    groups: dict[str, Counter] = {}
    for tag, count in tag_counts.items():
        words = normalised[tag].split()
        synset = concepts.synset("_".join(words)) if words else None
        key = synset or f"tag:{normalised[tag]}"
        groups.setdefault(key, Counter())[normalised[tag]] += int(count)
    canonical_of_group = {key: min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, counter in groups.items()}
    table = {}
    for tag in tag_counts:
        words = normalised[tag].split()
        synset = concepts.synset("_".join(words)) if words else None
        table[tag] = canonical_of_group[synset or f"tag:{normalised[tag]}"]
    return table


def canonicalize_hashtags(tags: Sequence[str], table: dict[str, str]) -> list[str]:
    """An item's hashtags through the canonical table, duplicates dropped, order kept; unknown tags normalised."""
    out = [table.get(tag) or " ".join(hashtag_words(tag)) for tag in tags]
    return [tag for tag in dict.fromkeys(out) if tag]


def long_tail_repeats(tags: Sequence[str], counts: Counter | dict[str, int], t: int, max_repeat: int = 4) -> int:
    """How many times a (video, hashtags) pair is used: `ceil(t / count)` of its rarest tag, at least 1, at most
    `max_repeat` (tail tags get more pairs; head tags keep one)."""
    if t < 1 or max_repeat < 1:
        raise ValueError(f"t and max_repeat must be >= 1, got {t} and {max_repeat}")
    if not tags:
        return 1
    rarest = min(max(int(counts.get(tag, 0)), 1) for tag in tags)
    return max(1, min(max_repeat, math.ceil(t / rarest)))


def resample_long_tail(dataset: Any, counts: Counter | dict[str, int], t: int, max_repeat: int = 4,
                       column: str = "hashtags") -> Any:
    """Oversample pairs with tail hashtags (paper 2.2): each row repeated `long_tail_repeats` times, with
    `repeat_index` added (a batched map: streaming-safe)."""

    def repeat(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in batch}
        out["repeat_index"] = []
        for row, tags in enumerate(batch[column]):
            for index in range(long_tail_repeats(tags, counts, t, max_repeat)):
                for key in batch:
                    out[key].append(batch[key][row])
                out["repeat_index"].append(index)
        return out

    return dataset.map(repeat, batched=True, remove_columns=getattr(dataset, "column_names", None))


__all__ = [
    "ConceptCounts", "WordNetConcepts", "balance_concepts", "balance_probability", "canonical_hashtags",
    "canonicalize_hashtags", "hashtag_words", "long_tail_repeats", "plot_concept_histogram", "resample_long_tail",
]
