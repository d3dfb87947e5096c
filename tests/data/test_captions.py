"""CaptionSampler: which texts a sample trains with, drawn from its own per-sample generator."""

import numpy as np
import pytest

from xray_hf.data.captions import CaptionSampler, fill_template, hashtag_text, split_sentences


def passthrough(record, rng=None):
    return {"pixel_values": record["id"]}


def test_sentences_hashtags_and_templates():
    text = "A dog runs on the beach. It chases a ball, e.g. a red one! Does it stop? No."
    assert split_sentences(text) == ["A dog runs on the beach.", "It chases a ball, e.g. a red one!", "Does it stop?",
                                     "No."]
    assert split_sentences("no break here") == ["no break here"]
    assert hashtag_text(["#beach", "dog_walk", "#"]) == "beach, dog walk"
    assert hashtag_text([]) == "" and hashtag_text(None) == ""
    assert fill_template("a photo of a {}", "ankle boot") == "a photo of an ankle boot"
    assert fill_template("A {} in a video game", "owl") == "An owl in a video game"
    with pytest.raises(ValueError, match="placeholder"):
        fill_template("no placeholder", "owl")


def test_draws_come_from_the_sample_generator_and_cover_the_candidates():
    record = {"id": 7, "caption": ["First one. Second one.", "Other caption."], "tags": ["a", "b"]}
    sampler = CaptionSampler(passthrough, caption_column="caption", hashtag_column="tags", sentence_p=0.5)
    draws = [sampler(record, np.random.default_rng(seed))["text"] for seed in range(200)]
    again = [sampler(record, np.random.default_rng(seed))["text"] for seed in range(200)]
    assert draws == again  # a function of the per-sample generator: exact on resume, distinct per worker
    candidates = sampler.candidate_texts([record])
    assert set(draws) == set(candidates) - {"a, b"}  # every caption and sentence is drawn, nothing else
    whole = sum(d in record["caption"] for d in draws) / len(draws)
    assert 0.65 < whole < 0.85  # 0.5 whole + 0.5 x (a one-sentence caption's sentence is the caption): 0.75
    assert sampler(record, np.random.default_rng(0))["hashtag_text"] == "a, b"


def test_template_captions_of_a_labelled_set_group_by_class():
    classnames = ["T-shirt", "ankle boot"]
    sampler = CaptionSampler(passthrough, templates=["a photo of a {}", "a {}"], classnames=classnames)
    sample = sampler({"id": 1, "label": 1}, np.random.default_rng(3))
    assert sample["text"] in {"a photo of an ankle boot", "an ankle boot"}
    assert sample["caption_group"] == "ankle boot"
    assert set(sampler.candidate_texts([{"label": 0}, {"label": 1}])) == {
        "a photo of a T-shirt", "a T-shirt", "a photo of an ankle boot", "an ankle boot"}
    with pytest.raises(ValueError, match="class names"):
        CaptionSampler(passthrough, templates=["a {}"])
    with pytest.raises(ValueError, match="label column"):
        sampler({"id": 1}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="caption column"):
        CaptionSampler(passthrough)({"id": 1}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="string or a non-empty list"):
        CaptionSampler(passthrough)({"id": 1, "caption": []}, np.random.default_rng(0))
