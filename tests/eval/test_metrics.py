import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from transformers import EvalPrediction

from xray_hf.eval.metrics import (
    classification_metrics,
    hashtag_metrics,
    recall_curve,
    retrieval_metrics,
    top_k_indices,
    zero_shot_metrics,
)


def clip_benchmark_recall(image_embeds, text_embeds, text_to_image, k):
    """CLIP_benchmark's definitions, written independently: top-k by torch.topk, a hit if any positive is in it."""
    scores = F.normalize(text_embeds, dim=-1) @ F.normalize(image_embeds, dim=-1).T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    t2i = positives.gather(1, scores.topk(k, dim=1).indices).any(1).float().mean().item()
    i2t = positives.T.gather(1, scores.T.topk(k, dim=1).indices).any(1).float().mean().item()
    return t2i, i2t


# ------------------------------------------------------------------------------------------ classification


def test_hand_computed_classification():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # true 0: rank 1
            [0.5, 0.4, 0.1],  # true 1: rank 2
            [0.2, 0.3, 0.1],  # true 2: rank 3
            [0.1, 0.8, 0.3],  # true 1: rank 1
        ]
    )
    labels = torch.tensor([0, 1, 2, 1])
    metrics = zero_shot_metrics(logits, labels, ks=(1, 2, 5))
    assert metrics["acc1"] == pytest.approx(2 / 4)
    assert metrics["acc2"] == pytest.approx(3 / 4)
    assert math.isnan(metrics["acc5"])  # fewer than 5 classes: undefined, as CLIP_benchmark writes it
    # per-class top-1 recall: class 0 1/1, class 1 1/2, class 2 0/1
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_per_class_recall_is_balanced_accuracy_without_ties():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=generator)
    labels = torch.randint(0, 6, (300,), generator=generator)  # class 6 never occurs (sklearn ignores it too)
    metrics = classification_metrics(logits, labels, ks=(1, 5))
    assert metrics["mean_per_class_recall"] == pytest.approx(
        balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy()), abs=1e-9
    )
    expected_top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert metrics["acc5"] == pytest.approx(expected_top5)


def test_classification_ties_score_their_expected_value():
    # all logits equal: every order of the 10 classes is equally likely -> acc@k = k / 10
    metrics = classification_metrics(torch.zeros(20, 10), torch.arange(20) % 10, ks=(1, 5))
    assert metrics["acc1"] == pytest.approx(0.1)
    assert metrics["acc5"] == pytest.approx(0.5)
    assert metrics["mean_per_class_recall"] == pytest.approx(0.1)
    # true class tied with one other, one strictly above: rank 2 or 3 -> top-1 never, top-2 half the time
    logits = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    metrics = classification_metrics(logits, torch.tensor([0]), ks=(1, 2, 3))
    assert (metrics["acc1"], metrics["acc2"], metrics["acc3"]) == pytest.approx((0.0, 0.5, 1.0))


def test_image_embeds_and_classifier_equal_cosine_logits():
    generator = torch.Generator().manual_seed(1)
    images, classifier = torch.randn(50, 8, generator=generator), torch.randn(6, 8, generator=generator)
    labels = torch.randint(0, 6, (50,), generator=generator)
    logits = F.normalize(images, dim=-1) @ F.normalize(classifier, dim=-1).T
    assert zero_shot_metrics(labels=labels, image_embeds=images * 3, classifier=classifier) == pytest.approx(
        zero_shot_metrics(logits, labels)
    )


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), "must lie in"),
        (torch.zeros(3, 4), torch.tensor([0, 1]), "must have shape"),
        (torch.zeros(3, 4), torch.tensor([0.0, 1.0, 2.0]), "integer"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), "2-D"),
        (torch.full((2, 2), float("nan")), torch.tensor([0, 1]), "NaN"),
    ],
)
def test_bad_classification_input_is_refused(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(logits, labels)


def test_zero_shot_metrics_needs_one_kind_of_input():
    with pytest.raises(ValueError, match="either logits"):
        zero_shot_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), image_embeds=torch.zeros(2, 2),
                          classifier=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="ks"):
        zero_shot_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), ks=(0,))


# ------------------------------------------------------------------------------------------ retrieval


def test_perfect_embeddings_recall_everything_at_rank_one():
    items = torch.eye(6)
    metrics = retrieval_metrics(items, items.clone(), torch.arange(6))
    for k in (1, 5, 10):
        assert metrics[f"image_retrieval_recall@{k}"] == 1.0
        assert metrics[f"text_retrieval_recall@{k}"] == 1.0
    for direction in ("image", "text"):
        assert metrics[f"{direction}_retrieval_mean_rank"] == 1.0
        assert metrics[f"{direction}_retrieval_median_rank"] == 1.0


def test_median_rank_is_open_clips_floor_of_the_median_plus_one():
    """open_clip's `get_clip_metrics`: `floor(median(0-based ranks)) + 1`; with an even count the median falls
    between two ranks and is floored, never interpolated (ranks 1 and 2 give 1, not 1.5)."""
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    angles = torch.tensor([10.0, 30.0]).deg2rad()  # both texts nearest item 0: text 1 finds its item at rank 2
    texts = torch.stack([angles.cos(), angles.sin()], dim=1)
    metrics = retrieval_metrics(items, texts, torch.arange(2), ks=(1,))
    assert metrics["image_retrieval_mean_rank"] == pytest.approx(1.5)
    assert metrics["image_retrieval_median_rank"] == 1.0
    four = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    angles = torch.tensor([0.0, 100.0, 280.0, 190.0]).deg2rad()  # ranks 1, 1, 3, 2: median 1.5 -> 1
    texts = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert retrieval_metrics(four, texts, torch.arange(4), ks=(1,))["image_retrieval_median_rank"] == 1.0
    angles = torch.tensor([0.0, 170.0, 280.0, 190.0]).deg2rad()  # ranks 1, 2, 3, 2: median 2 -> 2
    texts = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert retrieval_metrics(four, texts, torch.arange(4), ks=(1,))["image_retrieval_median_rank"] == 2.0


def test_hand_computed_retrieval_with_several_captions_per_item():
    # three items on the unit circle at 0, 90 and 180 degrees
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    angles = torch.tensor([10.0, 80.0, 100.0, 170.0, 60.0]).deg2rad()
    texts = torch.stack([angles.cos(), angles.sin()], dim=1)
    owners = torch.tensor([0, 0, 1, 2, 2])  # item 0: texts 0, 1; item 1: text 2; item 2: texts 3, 4
    # text -> image ranks of the own item: t0 (10 deg) 1; t1 (80) rank 2 (item 1 closer); t2 (100) 1;
    # t3 (170) 1; t4 (60) rank 3 (item 1 then item 0 closer)
    # image -> text: item 0 (0 deg) ranks texts t0, t4, t1, ... -> first own caption at rank 1
    #   item 1 (90 deg): t1 (80) and t2 (100) tie at 10 deg -> own t2 ties with t1: rank 1 or 2 (1.5 expected)
    #   item 2 (180 deg): t3 (170) rank 1
    metrics = retrieval_metrics(items, texts, owners, ks=(1, 2, 3))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(3 / 5)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert metrics["image_retrieval_recall@3"] == pytest.approx(1.0)
    assert metrics["image_retrieval_mean_rank"] == pytest.approx((1 + 2 + 1 + 1 + 3) / 5)
    assert metrics["image_retrieval_median_rank"] == pytest.approx(1.0)
    assert metrics["text_retrieval_recall@1"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert metrics["text_retrieval_mean_rank"] == pytest.approx((1 + 1.5 + 1) / 3)


def test_a_hit_for_text_retrieval_is_any_caption_of_the_item():
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # item 0 has a bad caption (nearer item 1) and a good one; item 1 one good caption
    texts = torch.tensor([[0.3, 1.0], [1.0, 0.1], [0.0, 1.0]])
    owners = torch.tensor([0, 0, 1])
    metrics = retrieval_metrics(items, texts, owners, ks=(1,))
    assert metrics["text_retrieval_recall@1"] == 1.0  # item 0 finds its second caption first
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 3)  # caption 0 finds item 1


def test_equal_to_clip_benchmark_without_ties():
    generator = torch.Generator().manual_seed(2)
    items = torch.randn(40, 16, generator=generator)
    owners = torch.arange(40).repeat_interleave(3)[torch.randperm(120, generator=generator)]
    texts = items[owners] + 1.5 * torch.randn(120, 16, generator=generator)  # 3 noisy captions per item
    metrics = retrieval_metrics(items, texts, owners, ks=(1, 5, 10))
    for k in (1, 5, 10):
        t2i, i2t = clip_benchmark_recall(items, texts, owners, k)
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert 0.2 < metrics["image_retrieval_recall@1"] < 1.0  # the check is not vacuous


def test_collapsed_embeddings_score_chance_not_an_index_accident():
    items, texts = torch.ones(10, 4), torch.ones(20, 4)
    owners = torch.arange(10).repeat_interleave(2)  # 2 captions per item
    metrics = retrieval_metrics(items, texts, owners, ks=(1, 5))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(1 / 10)
    assert metrics["image_retrieval_recall@5"] == pytest.approx(5 / 10)
    # image -> text: 2 of 20 captions are right; P(none in a random top k) = C(18, k) / C(20, k)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1 - 18 / 20)
    assert metrics["text_retrieval_recall@5"] == pytest.approx(1 - math.comb(18, 5) / math.comb(20, 5))
    assert metrics["image_retrieval_mean_rank"] == pytest.approx(5.5)
    assert metrics["text_retrieval_mean_rank"] == pytest.approx(1 + 18 / 3)


def test_random_embeddings_score_near_chance():
    generator = torch.Generator().manual_seed(3)
    items, texts = torch.randn(1000, 32, generator=generator), torch.randn(1000, 32, generator=generator)
    metrics = retrieval_metrics(items, texts, torch.arange(1000), ks=(10,))
    assert metrics["image_retrieval_recall@10"] == pytest.approx(0.01, abs=0.01)
    assert metrics["text_retrieval_recall@10"] == pytest.approx(0.01, abs=0.01)
    assert metrics["image_retrieval_mean_rank"] == pytest.approx(500, rel=0.1)


def test_metric_names_and_order():
    metrics = retrieval_metrics(torch.eye(3), torch.eye(3), torch.arange(3), ks=(1, 5, 10), ranks=False)
    assert list(metrics) == [
        "image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
        "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10",
    ]


@pytest.mark.parametrize(
    "owners, message",
    [
        (torch.tensor([0, 0, 1]), "have no caption"),  # item 2 has none
        (torch.tensor([0, 1]), "one item index per caption"),
        (torch.tensor([0, 1, 3]), "must lie in"),
        (torch.tensor([0.0, 1.0, 2.0]), "integer"),
    ],
)
def test_bad_retrieval_input_is_refused(owners, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(torch.eye(3), torch.eye(3), owners)


def test_embedding_sizes_must_match():
    with pytest.raises(ValueError, match="embedding sizes differ"):
        retrieval_metrics(torch.eye(3), torch.ones(3, 4), torch.arange(3))


def test_recall_curve_and_top_k():
    generator = torch.Generator().manual_seed(4)
    items = torch.randn(30, 8, generator=generator)
    texts = items + 0.5 * torch.randn(30, 8, generator=generator)
    curve = recall_curve(items, texts, torch.arange(30), max_k=30)
    assert curve["ks"] == list(range(1, 31)) and curve["num_items"] == 30
    for name in ("image_retrieval", "text_retrieval"):
        values = np.array(curve[name])
        assert (np.diff(values) >= -1e-12).all() and values[-1] == pytest.approx(1.0)
    top = top_k_indices(texts, items, 3)
    assert top.shape == (30, 3)
    assert curve["image_retrieval"][0] == pytest.approx((top[:, 0] == torch.arange(30)).float().mean().item())


# ------------------------------------------------------------------------------------------------ hashtags


def test_hashtag_metrics_match_a_hand_computation():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.7, 0.6, 0.5], [0.1, 0.2, 0.4]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    m = hashtag_metrics(EvalPrediction(predictions=scores, label_ids=labels))
    # label 0: one positive ranked first -> AP 1; label 1: positives ranked 1st and 2nd -> AP 1; label 2 absent
    assert m["mAP"] == pytest.approx(1.0)
    assert m["precision@1"] == pytest.approx(2 / 3)  # rows 0, 1 right; row 2 ranks label 0 first; row 3 unlabelled
    labels[0] = [1, 0, 1]  # label 2's only positive (score 0.3) is ranked 3rd of 4 -> AP 1/3
    m = hashtag_metrics(EvalPrediction(predictions=scores, label_ids=labels))
    assert m["mAP"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    # 3 hashtags < k=5: the top-5 list is the whole vocabulary, scored over its 3 entries, named as requested
    assert m["precision@5"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)


@pytest.mark.parametrize("num_labels", [1, 2, 4, 5, 7])
def test_hashtag_metric_names_do_not_depend_on_the_vocabulary_size(num_labels):
    """`metric_for_best_model="precision@5"` must name a metric for every vocabulary, however small."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, num_labels))
    labels = np.zeros((6, num_labels))
    labels[np.arange(6), rng.integers(0, num_labels, size=6)] = 1
    m = hashtag_metrics(EvalPrediction(predictions=scores, label_ids=labels))
    assert set(m) == {"mAP", "precision@1", "precision@5"}
    assert set(hashtag_metrics(EvalPrediction(predictions=scores, label_ids=labels), ks=(3,))) == {"mAP", "precision@3"}
    if num_labels == 1:
        assert m["precision@5"] == 1.0  # the whole (one-hashtag) vocabulary, always right
    for bad in ((0,), (2.5,), ()):
        with pytest.raises(ValueError, match="ks"):
            hashtag_metrics(EvalPrediction(predictions=scores, label_ids=labels), ks=bad)
