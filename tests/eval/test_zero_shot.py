import pytest
import torch
import torch.nn.functional as F

from xray_hf.eval.features import encode_texts
from xray_hf.eval.zero_shot import (
    PHOTO_TEMPLATES,
    VIDEO_TEMPLATES,
    build_zero_shot_classifier,
    fill_template,
    resolve_templates,
    zero_shot_eval,
)

from .helpers import OneHotCLIP, one_hot_images, one_hot_text_encoder

CLASSES = ["apple", "ankle boot", "T-shirt", "one", "hour", "cat"]


@pytest.mark.parametrize(
    "template, name, expected",
    [
        ("a photo of a {}.", "ankle boot", "a photo of an ankle boot."),
        ("a photo of a {}.", "T-shirt", "a photo of a T-shirt."),
        ("a photo of an {}.", "cat", "a photo of a cat."),
        ("A {} in a video game.", "apple", "An apple in a video game."),
        ("itap of a {}.", "hour", "itap of an hour."),
        ("art of the {}.", "apple", "art of the apple."),
        ("{}", "one", "one"),
        ("a video of a {}.", "circle moving left", "a video of a circle moving left."),
    ],
)
def test_fill_template_fixes_the_article(template, name, expected):
    assert fill_template(template, name) == expected


def test_bad_templates_are_refused():
    with pytest.raises(ValueError, match="placeholder"):
        fill_template("a photo", "cat")
    with pytest.raises(ValueError, match="placeholder"):
        resolve_templates(["a {} and a {}"])
    with pytest.raises(ValueError, match="empty"):
        resolve_templates([])


def test_template_sets():
    assert resolve_templates(None) == PHOTO_TEMPLATES
    assert resolve_templates(None, "video") == VIDEO_TEMPLATES
    assert resolve_templates("name") == ("{}",)
    assert resolve_templates("a drawing of a {}.") == ("a drawing of a {}.",)
    assert resolve_templates(["x {}", "y {}"]) == ("x {}", "y {}")


def test_class_embedding_is_the_normalised_mean_of_normalised_template_embeddings():
    seen = []
    vectors = {"one A": [3.0, 0.0], "one B": [0.0, 1.0], "two A": [1.0, 1.0], "two B": [2.0, 2.0]}

    def encode(texts):
        seen.extend(texts)
        return torch.tensor([vectors[t] for t in texts])

    classifier = build_zero_shot_classifier(None, None, ["one", "two"], ["{} A", "{} B"], encode_text=encode)
    assert seen == ["one A", "one B", "two A", "two B"]
    # one: mean of (1, 0) and (0, 1), normalised; two: both (1, 1)/sqrt 2
    expected = F.normalize(torch.tensor([[0.5, 0.5], [2**-0.5, 2**-0.5]]), dim=-1)
    torch.testing.assert_close(classifier, expected)


def test_duplicate_classnames_are_refused():
    with pytest.raises(ValueError, match="duplicate class names"):
        build_zero_shot_classifier(None, None, ["cat", "dog", "cat"], encode_text=lambda t: torch.ones(len(t), 2))
    with pytest.raises(ValueError, match="encode_text"):
        build_zero_shot_classifier(None, None, ["cat"])


def test_one_hot_model_scores_100_percent_on_images_and_videos():
    labels = torch.arange(12) % len(CLASSES)
    model = OneHotCLIP()
    encode = one_hot_text_encoder(CLASSES)
    metrics = zero_shot_eval(model, one_hot_images(labels), labels, CLASSES, encode_text=encode)
    assert metrics == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}
    videos = one_hot_images(labels, frames=3)
    metrics, logits, out_labels = zero_shot_eval(
        model, videos, labels.tolist(), CLASSES, encode_text=encode, return_logits=True, batch_size=5
    )
    assert metrics["acc1"] == 1.0 and model.video_calls == 3  # 12 clips in batches of 5, via get_video_features
    assert logits.shape == (12, len(CLASSES)) and out_labels.tolist() == labels.tolist()


def test_labels_are_read_from_a_dataset_of_samples():
    labels = [2, 0, 1, 5, 4]
    samples = [{"pixel_values": image, "label": y} for image, y in zip(one_hot_images(labels), labels)]
    metrics = zero_shot_eval(OneHotCLIP(), samples, None, CLASSES, encode_text=one_hot_text_encoder(CLASSES))
    assert metrics["acc1"] == 1.0
    wrong = zero_shot_eval(OneHotCLIP(), samples, [0, 1, 2, 3, 5], CLASSES, encode_text=one_hot_text_encoder(CLASSES))
    assert wrong["acc1"] == 0.0


def test_zero_shot_matches_clip_forward_logits(tiny_clip):
    """With one template, our scores are CLIPModel's own logits_per_image divided by its logit scale."""
    model, tokenizer, _ = tiny_clip
    classnames = ["zero", "one", "two", "three"]
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, logits, _ = zero_shot_eval(model, pixels, [0] * 6, classnames, ["a photo of a {}."], tokenizer=tokenizer,
                                  return_logits=True)
    prompts = [fill_template("a photo of a {}.", name) for name in classnames]
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(pixel_values=pixels, **inputs).logits_per_image / model.logit_scale.exp()
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    metrics = zero_shot_eval(model, pixels, reference.argmax(1), classnames, ["a photo of a {}."], tokenizer=tokenizer)
    assert metrics["acc1"] == 1.0


def test_text_batches_do_not_change_embeddings(tiny_clip):
    model, tokenizer, _ = tiny_clip
    texts = ["a photo of a cat", "one", "a handwritten digit seven in a video game", "zero"]
    whole = encode_texts(texts, model, tokenizer)
    torch.testing.assert_close(encode_texts(texts, model, tokenizer, batch_size=1), whole, atol=1e-5, rtol=1e-5)
