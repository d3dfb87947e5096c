import pytest
import torch

from xray_hf.eval.metrics import retrieval_metrics
from xray_hf.eval.retrieval import caption_targets, embed_retrieval_set, flatten_captions, retrieval_eval
from xray_hf.eval.training import clip_eval_metrics

from .helpers import OneHotCLIP, one_hot_images, one_hot_text_encoder

NAMES = ["red", "green", "blue", "white"]


def test_flatten_captions_strings_and_lists():
    texts, owners = flatten_captions([["a", "b"], "c", [], None, ["", "d"]])
    assert texts == ["a", "b", "c", "d"] and owners.tolist() == [0, 0, 1, 4]
    texts, text_to_image, kept = caption_targets([["a", "b"], "c", [], ["d"]])
    assert text_to_image.tolist() == [0, 0, 1, 2] and kept.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="strings"):
        flatten_captions([[1, 2]])
    with pytest.raises(ValueError, match="no captions"):
        caption_targets([[], ""])


def one_hot_set(labels, captions):
    return [{"pixel_values": image, "caption": caption} for image, caption in zip(one_hot_images(labels), captions)]


def test_one_hot_model_retrieves_perfectly_with_several_captions():
    captions = [["a red thing", "red"], "green", ["blue", "so blue", "blue again"], "white"]
    metrics = retrieval_eval(OneHotCLIP(), one_hot_set([0, 1, 2, 3], captions),
                             encode_text=one_hot_text_encoder(NAMES))
    assert all(metrics[f"{d}_retrieval_recall@{k}"] == 1.0 for d in ("image", "text") for k in (1, 5, 10))


def test_items_without_captions_are_left_out():
    captions = ["red", [], "blue", "white"]
    embeds = embed_retrieval_set(OneHotCLIP(), one_hot_set([0, 1, 2, 3], captions),
                                 encode_text=one_hot_text_encoder(NAMES))
    assert embeds.item_indices.tolist() == [0, 2, 3] and embeds.text_to_image.tolist() == [0, 1, 2]
    assert embeds.image_embeds.shape[0] == 3


def test_retrieval_matches_clip_forward_embeddings(tiny_clip):
    model, tokenizer, _ = tiny_clip
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captions = [["a photo of a cat", "a cat"], "one", "two", ["three", "a three"], "four", "five"]
    samples = [{"pixel_values": p, "caption": c} for p, c in zip(pixels, captions)]
    metrics = retrieval_eval(model, samples, tokenizer=tokenizer, batch_size=4)
    texts, owners = flatten_captions(captions)
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, **inputs)
    assert metrics == pytest.approx(retrieval_metrics(out.image_embeds, out.text_embeds, owners))


def test_clip_eval_metrics_has_stable_names_and_restores_training_mode():
    labels = [0, 1, 2, 3, 1, 2]
    samples = [dict(s, label=y) for s, y in zip(one_hot_set(labels, [NAMES[y] for y in labels]), labels)]
    model = OneHotCLIP().train()
    metrics = clip_eval_metrics(model, samples, encode_text=one_hot_text_encoder(NAMES), classnames=NAMES)
    assert model.training
    assert list(metrics) == [
        "zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall",
        "image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
        "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10",
        "image_retrieval_mean_rank", "image_retrieval_median_rank", "text_retrieval_mean_rank",
        "text_retrieval_median_rank",
    ]
    assert metrics["zeroshot_acc1"] == 1.0
    # repeated captions tie: the 2 items captioned "green" each find theirs first half the time
    assert metrics["text_retrieval_recall@1"] == pytest.approx((2 + 0.5 * 4) / 6)
    only_retrieval = clip_eval_metrics(model, samples, encode_text=one_hot_text_encoder(NAMES))
    assert "zeroshot_acc1" not in only_retrieval and "image_retrieval_recall@1" in only_retrieval
    with pytest.raises(ValueError, match="nothing to evaluate"):
        clip_eval_metrics(model, samples, caption_column=None)
