"""Curation steps (paper 2.1): caption cleaning on real messy captions, the language filter, sentence splitting and
unigram counts, as streaming `datasets` steps; counts sharded and merged, and resumed."""

import datasets
import pytest

from xray_hf.data import load_embedded
from xray_hf.curation.cleaning import (
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
