import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoVideoProcessor, pipeline

import xray_hf  # noqa: F401
from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XrayCLIPProcessor,
    XrayLLM2CLIPTextConfig,
    XrayTextConfig,
    XrayVisualConfig,
    XrayVisualImageProcessor,
    XrayVisualModel,
    XrayVisualVideoProcessor,
)
from xray_hf.convert import smollm2_tokenizer

TINY_LLM = {
    "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
}
LONG_CAPTION = ("an astronaut in a white suit stands in front of the american flag, holding a helmet, with the space "
                "shuttle behind her and a model of it on the table")


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def images():
    return [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea())]


def processor(tokenizer, **kwargs) -> XrayCLIPProcessor:
    return XrayCLIPProcessor(XrayVisualImageProcessor(size=32), XrayVisualVideoProcessor(size=32, num_frames=4),
                             tokenizer, **kwargs)


def clips(count=2, frames=8, height=40, width=48) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8) for _ in range(count)]


# ------------------------------------------------------------------------------------------------ processor
def test_round_trip_through_auto_processor(tmp_path, tokenizer):
    processor(tokenizer, max_text_length=24, padding_side="left").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "XrayCLIPProcessor"
    assert saved["max_text_length"] == 24 and saved["padding_side"] == "left"
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is XrayCLIPProcessor
    assert loaded.max_text_length == 24 and loaded.padding_side == "left"
    assert type(loaded.image_processor) is XrayVisualImageProcessor
    assert type(loaded.video_processor) is XrayVisualVideoProcessor
    assert loaded.image_processor.size.height == loaded.image_processor.size.width == 32
    assert loaded.video_processor.num_frames == 4 and loaded.video_processor.size.height == 32
    assert len(loaded.tokenizer) == len(tokenizer)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is XrayVisualImageProcessor
    video_processor = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(video_processor) is XrayVisualVideoProcessor and video_processor.num_frames == 4
    assert loaded.tokenizer("a cat")["input_ids"] == tokenizer("a cat")["input_ids"]


def test_text_and_images_give_the_model_inputs(tokenizer, images):
    out = processor(tokenizer)(text=["an astronaut", "a cat sitting"], images=images, return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["pixel_values"].shape == (2, 3, 32, 32) and out["pixel_values"].dtype == torch.float32
    assert out["input_ids"].shape == out["attention_mask"].shape and out["input_ids"].shape[0] == 2
    assert out["input_ids"].dtype == torch.long
    assert out["attention_mask"].sum(1).tolist() == [len(tokenizer(t)["input_ids"]) for t in ("an astronaut",
                                                                                             "a cat sitting")]
    # exactly what the sub-processors give
    torch.testing.assert_close(out["pixel_values"], XrayVisualImageProcessor(size=32)(images, return_tensors="pt")
                               ["pixel_values"])


def test_videos_give_batch_frames_channels_height_width(tokenizer):
    out = processor(tokenizer)(text=["a clip", "another clip"], videos=clips())
    assert out["pixel_values"].shape == (2, 4, 3, 32, 32)
    assert out["input_ids"].shape[0] == 2


def test_images_and_videos_together_are_refused(tokenizer, images):
    with pytest.raises(ValueError, match="images or videos, not both"):
        processor(tokenizer)(images=images, videos=clips())
    with pytest.raises(ValueError, match="pass text, images or videos"):
        processor(tokenizer)()


@pytest.mark.parametrize("side", ["left", "right"])
def test_text_is_truncated_to_max_text_length_and_padded_on_the_configured_side(tokenizer, side):
    assert len(tokenizer(LONG_CAPTION)["input_ids"]) > 12
    out = processor(tokenizer, max_text_length=12, padding_side=side)(text=[LONG_CAPTION, "a cat"])
    assert out["input_ids"].shape == (2, 12)
    assert out["input_ids"][0].tolist() == tokenizer(LONG_CAPTION)["input_ids"][:12]
    mask = out["attention_mask"][1].tolist()
    short = len(tokenizer("a cat")["input_ids"])
    assert mask == ([0] * (12 - short) + [1] * short if side == "left" else [1] * short + [0] * (12 - short))


def test_call_overrides_the_text_defaults(tokenizer):
    out = processor(tokenizer, max_text_length=12)(text=["a cat"], padding="max_length")
    assert out["input_ids"].shape == (1, 12)


def test_bad_settings_are_refused(tokenizer):
    with pytest.raises(ValueError, match="padding_side"):
        processor(tokenizer, padding_side="middle")
    with pytest.raises(ValueError, match="max_text_length"):
        processor(tokenizer, max_text_length=0)


@pytest.mark.parametrize(
    "text_config, expected",
    [
        (XrayTextConfig.from_preset("tiny", projection_dim=16, max_position_embeddings=20, padding_side="left"),
         (20, "left")),
        (XrayLLM2CLIPTextConfig(llm_config=TINY_LLM, projection_dim=16, max_text_length=48), (48, "right")),
        (XrayLLM2CLIPTextConfig(llm_config=TINY_LLM, projection_dim=16, max_text_length=33, padding_side="left"),
         (33, "left")),
    ],
)
def test_for_model_takes_max_length_and_padding_side_from_the_text_config(tokenizer, text_config, expected):
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text_config,
                            projection_dim=16)
    made = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                       XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    assert (made.max_text_length, made.padding_side) == expected
    ids = made(text=[LONG_CAPTION * 2])["input_ids"]
    assert ids.shape == (1, expected[0])


# ------------------------------------------------------------------------------------------------ pipelines
@pytest.fixture(scope="module", params=["plain", "llm2clip"])
def clip_dir(request, tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    if request.param == "plain":
        text = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=16,
                                          max_position_embeddings=32)
    else:  # left padding here, right in the pipeline's own tokenizer call: the embedding must not depend on it
        llm = {**TINY_LLM, "vocab_size": len(tokenizer), "tie_word_embeddings": True}
        text = XrayLLM2CLIPTextConfig(llm_config=llm, projection_dim=16, adapter_depth=1, padding_side="left")
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16)
    model = XrayCLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.0)  # sharper scores, so the check below is not flat
    made = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                       XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    made.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("index", [0, 1])
def test_zero_shot_pipeline_scores_are_the_softmax_of_the_model_logits(clip_dir, tokenizer, images, index):
    path, model = clip_dir
    classifier = pipeline("zero-shot-image-classification", model=str(path))
    assert type(classifier.model) is XrayCLIPModel
    assert type(classifier.image_processor) is XrayVisualImageProcessor
    assert classifier.image_processor.size.height == 32  # the saved processor, not a 224 default
    labels = ["an astronaut", "a cat", "a dog", "a red car"]
    result = classifier(images[index], candidate_labels=labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)
    scores = {r["label"]: r["score"] for r in result}

    # what the pipeline sends: the default template, the image through the saved image processor; here through
    # the saved CLIP processor (its own truncation and padding side)
    prompts = [f"This is a photo of {label}." for label in labels]
    inputs = AutoProcessor.from_pretrained(path)(text=prompts, images=[images[index]], return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits_per_image[0].softmax(-1)
    assert [scores[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-5)
    assert max(scores.values()) - min(scores.values()) > 1e-3  # the labels are told apart


def test_zero_shot_pipeline_with_a_custom_template(clip_dir, tokenizer, images):
    path, model = clip_dir
    classifier = pipeline("zero-shot-image-classification", model=str(path))
    labels = ["an astronaut", "a cat"]
    result = classifier(images[1], candidate_labels=labels, hypothesis_template="a picture of {}")
    text = tokenizer([f"a picture of {label}" for label in labels], padding=True, return_tensors="pt")
    pixels = XrayVisualImageProcessor(size=32)([images[1]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(**text, pixel_values=pixels).logits_per_image[0].softmax(-1)
    scores = {r["label"]: r["score"] for r in result}
    assert [scores[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-5)


def test_image_feature_extraction_pipeline_on_the_vision_tower_saved_alone(tmp_path, clip_dir, images):
    _, model = clip_dir
    model.xray_visual.save_pretrained(tmp_path)
    XrayVisualImageProcessor(size=32).save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    assert type(extractor.model) is XrayVisualModel
    pixels = XrayVisualImageProcessor(size=32)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.xray_visual(pixels)
    for index, image in enumerate(images):
        tokens = extractor(image, return_tensors=True)
        assert tokens.shape == (1, 1 + 16, 64)  # CLS + 4x4 patches, registers dropped
        torch.testing.assert_close(tokens[0], expected.last_hidden_state[index], rtol=1e-5, atol=1e-5)
        pooled = extractor(image, pool=True, return_tensors=True)
        torch.testing.assert_close(pooled[0], expected.pooler_output[index], rtol=1e-5, atol=1e-5)
    as_lists = extractor(images)
    assert len(as_lists) == 2 and np.asarray(as_lists[1]).shape == (1, 17, 64)
    np.testing.assert_allclose(np.asarray(as_lists[1])[0], expected.last_hidden_state[1].numpy(), atol=1e-5)
