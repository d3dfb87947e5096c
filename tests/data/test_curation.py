"""Curation steps (paper 2.1): caption cleaning on real messy captions, the language filter, sentence splitting and
unigram counts, as streaming `datasets` steps; counts sharded and merged, and resumed."""

import datasets
import pytest

from xray_hf.data import load_embedded
from xray_hf.data.curation import (
    LanguageFilter,
    UnigramCounts,
    clean_caption,
    clean_captions,
    filter_language,
    split_into_sentences,
    split_sentences,
)

CLEANING = [
    # social media: tags, user mentions, links, emojis, shouting punctuation
    ("Sunset at the beach 🌅🔥 #sunset_beach #NoFilter @john_doe check https://t.co/abc123 !!!",
     "Sunset at the beach sunset beach No Filter check!"),
    ("RT @user: Loving this view!!! 😍😍 #travel #wanderlust", "Loving this view! travel wanderlust"),
    ("new pics up on www.example.com/gallery ... contact me at foo.bar@example.com",
     "new pics up on. contact me at"),
    ("👨‍👩‍👧 family time ❤️ #family", "family time family"),
    ("★★★ Best day ever ★★★ >>>", "Best day ever"),
    # broken encodings (mojibake)
    ("cafÃ© crÃ¨me â€” deliciousâ€¦", "café crème delicious"),
    # other languages and scripts keep their letters
    ("Un perro corriendo en el parque 🐕 #perros", "Un perro corriendo en el parque perros"),
    ("東京の夜景がきれい！ #tokyo", "東京の夜景がきれい! tokyo"),
    ("Ein schöner Tag am See 🚣 #Sommer", "Ein schöner Tag am See Sommer"),
    ("Привет из Москвы!! #москва", "Привет из Москвы! москва"),
    # nothing meaningful left
    ("🔥🔥🔥", ""),
    ("   \n\t ", ""),
    ("@someone https://x.co/1", ""),
]


@pytest.mark.parametrize("raw,clean", CLEANING)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_clean_caption_refuses_non_strings():
    with pytest.raises(ValueError, match="string"):
        clean_caption(None)


SHORT_CAPTIONS = [
    ("a dog running on the beach", "en"), ("two children playing football in the park", "en"),
    ("un perro corriendo en la playa", "es"), ("dos niños jugando al fútbol en el parque", "es"),
    ("un chien qui court sur la plage", "fr"), ("deux enfants jouent au football dans le parc", "fr"),
    ("ein Hund rennt am Strand entlang", "de"), ("zwei Kinder spielen Fußball im Park", "de"),
    ("un cane che corre sulla spiaggia", "it"), ("um cachorro correndo na praia", "pt"),
    ("собака бежит по пляжу", "ru"), ("海辺を走る犬", "ja"),
]


def test_language_filter_identifies_short_captions_and_keeps_english():
    identify = LanguageFilter(["en"], min_probability=0.5)
    correct = sum(identify(text)[0] == language for text, language in SHORT_CAPTIONS)
    assert correct >= len(SHORT_CAPTIONS) - 1  # short texts: at most one miss on this table
    assert [identify.keep(text) for text, _ in SHORT_CAPTIONS[:4]] == [True, True, False, False]
    with pytest.raises(ValueError, match="unknown language"):
        LanguageFilter(["english"])


def test_steps_stream_without_materialising():
    rows = [{"id": 0, "caption": "A dog runs on the beach. It is happy! #dogs 🐕"},
            {"id": 1, "caption": "🔥🔥🔥"},
            {"id": 2, "caption": "Un perro corre en la playa. Está feliz."},
            {"id": 3, "caption": "Mr. Smith waves at the camera at 5 p.m. today."}]
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=2)
    curated = split_into_sentences(filter_language(clean_captions(stream), min_probability=0.3))
    assert isinstance(curated, datasets.IterableDataset)
    out = list(curated)
    assert [(r["id"], r["sentence_index"], r["caption"]) for r in out] == [
        (0, 0, "A dog runs on the beach."), (0, 1, "It is happy! dogs"),
        (3, 0, "Mr. Smith waves at the camera at 5 p.m. today."),
    ]
    assert split_sentences("Is it? Yes. ") == ["Is it?", "Yes."]


def test_unigram_counts_merge_over_shards_and_resume():
    captions = load_embedded("openmoji", "train")["caption"]
    whole = UnigramCounts().update(captions)
    assert whole.rows == len(captions)
    assert "the" not in whole.counts and "face" in dict(whole.most_common(20))  # stop words out; emoji names in
    shards = [UnigramCounts().update(captions[i::3]) for i in range(3)]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.counts == whole.counts and merged.rows == whole.rows
    # a pass interrupted after 500 captions resumes from its saved state and the stream's position
    partial = UnigramCounts().update(captions[:500])
    stream = datasets.Dataset.from_dict({"caption": captions}).to_iterable_dataset()
    state = partial.state_dict()
    resumed = UnigramCounts.from_state_dict(state).update(row["caption"] for row in stream.skip(state["rows"]))
    assert resumed.counts == whole.counts and resumed.rows == whole.rows
    with pytest.raises(ValueError, match="stop-word"):
        UnigramCounts(["a"]).merge(UnigramCounts())


# -- WordNet concepts and MetaCLIP balancing --
@pytest.fixture(scope="module")
def wordnet():
    from xray_hf.data.concepts import WordNetConcepts

    return WordNetConcepts()


def test_wordnet_concepts_merge_synonyms_inflections_and_phrases(wordnet):
    assert wordnet("two dogs eating ice cream in a car") == ["dog.n.01", "eating.n.01", "ice_cream.n.01", "car.n.01"]
    assert wordnet("an automobile parked near puppies") == ["car.n.01", "puppy.n.01"]  # synonym, plural
    assert wordnet("the and of") == []


def test_missing_wordnet_says_how_to_install_it(tmp_path):
    from xray_hf.data.concepts import WordNetConcepts

    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        WordNetConcepts(str(tmp_path))


def test_metaclip_balancing_flattens_head_concepts_and_keeps_the_tail(wordnet, tmp_path):
    from collections import Counter

    from xray_hf.data.concepts import ConceptCounts, balance_concepts, balance_probability, plot_concept_histogram

    rows = load_embedded("openmoji", "train").select_columns(["id", "caption"])
    counts = ConceptCounts(wordnet).update(rows["caption"])
    head, head_count = counts.most_common(1)[0]
    t = 10
    assert head_count > 5 * t  # e.g. face.n.01 over the smiley names
    assert balance_probability([head], counts.counts, t) == pytest.approx(t / head_count)
    assert balance_probability(["rare.n.01"], Counter({"rare.n.01": 3}), t) == 1.0
    assert balance_probability([], counts.counts, t) == 0.0
    stream = rows.to_iterable_dataset(num_shards=2)
    kept = list(balance_concepts(stream, wordnet, counts.counts, t, seed=0))
    assert kept == list(balance_concepts(stream, wordnet, counts.counts, t, seed=0))  # same rows on a rerun
    after = ConceptCounts(wordnet).update(row["caption"] for row in kept)
    # a pair survives if any of its concepts keeps it: the head shrinks, a tail concept keeps every pair
    assert after.counts[head] < head_count
    tail = [c for c, n in counts.counts.items() if n <= 2]
    assert tail and all(after.counts[c] == counts.counts[c] for c in tail)
    plot_concept_histogram(counts.counts, after.counts, tmp_path / "concepts.png", t=t)
    assert (tmp_path / "concepts.png").stat().st_size > 1000
    # pairs whose only concept is a head concept survive at about t / count
    captions = datasets.Dataset.from_dict({"id": list(range(405)), "caption": ["a dog"] * 400 + ["a cat"] * 5})
    only = ConceptCounts(wordnet).update(captions["caption"])
    survivors = Counter(row["caption"] for row in balance_concepts(captions, wordnet, only.counts, t, seed=0))
    assert 2 <= survivors["a dog"] <= 20 and survivors["a cat"] == 5  # expected 10 of 400 dogs, every cat


def test_hashtags_canonicalised_through_wordnet_and_long_tail_resampled(wordnet):
    from collections import Counter

    from xray_hf.data.concepts import canonical_hashtags, canonicalize_hashtags, long_tail_repeats, resample_long_tail

    counts = Counter({"#car": 10, "#cars": 4, "#Automobile": 2, "#IceCream": 3, "#ice_cream": 5, "#xyzzy": 1})
    table = canonical_hashtags(counts, wordnet)
    assert table == {"#car": "car", "#cars": "car", "#Automobile": "car", "#IceCream": "ice cream",
                     "#ice_cream": "ice cream", "#xyzzy": "xyzzy"}
    assert canonicalize_hashtags(["#cars", "#Automobile", "#IceCream", "#new_tag"], table) == [
        "car", "ice cream", "new tag"]
    # moving-shapes clips tagged shape + direction, with one rare tag: its pairs are repeated
    clips = load_embedded("moving-shapes", "train").select_columns(["id", "shape", "direction"]).select(range(24))
    names = clips.features["shape"].names, clips.features["direction"].names
    rows = [{"id": r["id"], "hashtags": [names[0][r["shape"]], names[1][r["direction"]]]} for r in clips]
    rows.append({"id": "rare", "hashtags": ["circle", "diagonal"]})
    tag_counts = Counter(tag for row in rows for tag in row["hashtags"])
    assert long_tail_repeats(["diagonal"], tag_counts, t=4) == 4 and long_tail_repeats(["circle"], tag_counts, t=4) == 1
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    out = list(resample_long_tail(stream, tag_counts, t=4))
    assert sum(r["id"] == "rare" for r in out) == 4 and len(out) == len(rows) + 3
