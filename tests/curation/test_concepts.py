"""WordNet concepts: synonyms merged, MetaCLIP balancing, hashtag canonicalisation and long-tail resampling."""

import datasets
import pytest

from xray_hf.data import load_embedded

@pytest.fixture(scope="module")
def wordnet():
    from xray_hf.curation.concepts import WordNetConcepts

    return WordNetConcepts()


def test_wordnet_concepts_merge_synonyms_inflections_and_phrases(wordnet):
    assert wordnet("two dogs eating ice cream in a car") == ["dog.n.01", "eating.n.01", "ice_cream.n.01", "car.n.01"]
    assert wordnet("an automobile parked near puppies") == ["car.n.01", "puppy.n.01"]  # synonym, plural
    assert wordnet("the and of") == []


def test_missing_wordnet_says_how_to_install_it(tmp_path):
    from xray_hf.curation.concepts import WordNetConcepts

    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        WordNetConcepts(str(tmp_path))


def test_metaclip_balancing_flattens_head_concepts_and_keeps_the_tail(wordnet, tmp_path):
    from collections import Counter

    from xray_hf.curation.concepts import ConceptCounts, balance_concepts, balance_probability, plot_concept_histogram

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

    from xray_hf.curation.concepts import canonical_hashtags, canonicalize_hashtags, long_tail_repeats, resample_long_tail

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
