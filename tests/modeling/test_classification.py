"""XrayVisualForImageClassification: the plain single-label head that `AutoModelForImageClassification` gives."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from transformers import AutoModel, AutoModelForImageClassification, pipeline
from transformers.modeling_outputs import ImageClassifierOutput

import xray_hf  # noqa: F401
from xray_hf import (
    HashtagVocabulary,
    XrayVisualConfig,
    XrayVisualForHashtagClassification,
    XrayVisualForImageClassification,
    XrayVisualForPreTraining,
    XrayVisualImageProcessor,
    XrayVisualModel,
)

LABELS = {0: "person", 1: "cat", 2: "rocket"}
HEAD = {"head.weight", "head.bias"}


def tiny(**overrides) -> XrayVisualConfig:
    kwargs = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4)
    kwargs.update(overrides)
    return XrayVisualConfig.from_preset("tiny", **kwargs)


def test_auto_classes_give_the_plain_classifier_and_the_hashtag_model_stays_reachable(tmp_path):
    config = tiny(id2label=LABELS)
    model = AutoModelForImageClassification.from_config(config)
    assert type(model) is XrayVisualForImageClassification
    assert type(AutoModel.from_config(config)) is XrayVisualModel
    hashtag = XrayVisualForHashtagClassification(config)
    hashtag.save_pretrained(tmp_path)
    assert type(XrayVisualForHashtagClassification.from_pretrained(tmp_path)) is XrayVisualForHashtagClassification


def test_forward_on_images_and_videos_with_fp32_cross_entropy():
    torch.manual_seed(0)
    model = XrayVisualForImageClassification(tiny(id2label=LABELS)).eval()
    labels = torch.tensor([2, 0])
    out = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert isinstance(out, ImageClassifierOutput)
    assert out.logits.shape == (2, 3) and out.logits.dtype == torch.float32
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    assert model(torch.randn(2, 4, 3, 32, 32), labels=labels).logits.shape == (2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32
    loss, logits = model(torch.randn(2, 3, 32, 32), labels=labels, return_dict=False)[:2]
    assert loss.ndim == 0 and logits.shape == (2, 3)
    hidden = model(torch.randn(2, 3, 32, 32), output_hidden_states=True).hidden_states
    assert len(hidden) == model.config.num_hidden_layers + 1


def test_bad_labels_and_configs_are_refused():
    model = XrayVisualForImageClassification(tiny(id2label=LABELS))
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="class indices"):
        model(images, labels=torch.tensor([[1.0, 0, 0], [0, 1, 0]]))  # multi-hot: the hashtag model's job
    with pytest.raises(ValueError, match="class indices"):
        model(images, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="batch"):
        model(images, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_labels"):
        XrayVisualForImageClassification(tiny(num_labels=1))
    with pytest.raises(ValueError, match="XrayVisualForHashtagClassification"):
        XrayVisualForImageClassification(tiny(id2label=LABELS, problem_type="multi_label_classification"))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = XrayVisualForImageClassification(tiny(id2label=LABELS, pooling="attention")).eval()
    model.save_pretrained(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    for cls in (XrayVisualForImageClassification, AutoModelForImageClassification):
        loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
        assert type(loaded) is XrayVisualForImageClassification
        assert not any(info.values()), info
        assert loaded.config.id2label == LABELS
        assert torch.equal(loaded.eval()(images).logits, model(images).logits)


def test_loads_backbone_mae_and_hashtag_checkpoints_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    vocab = HashtagVocabulary(["a", "b", "c"])  # as many labels as LABELS: the hashtag head still must not load
    sources = {
        "backbone": XrayVisualModel(tiny()),
        "mae": XrayVisualForPreTraining(tiny()),
        "hashtag": XrayVisualForHashtagClassification(tiny(**vocab.config_kwargs())),
    }
    for name, source in sources.items():
        source.save_pretrained(tmp_path / name)
        backbone = source if name == "backbone" else source.xray_visual
        model, info = XrayVisualForImageClassification.from_pretrained(
            tmp_path / name, output_loading_info=True, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
        )
        assert info["missing_keys"] == HEAD, name
        assert not info["unexpected_keys"] and not info["mismatched_keys"], name  # decoder / hashtag head dropped
        assert model.config.id2label == LABELS
        for key, tensor in backbone.state_dict().items():
            assert torch.equal(model.xray_visual.state_dict()[key], tensor), (name, key)
        assert torch.equal(model.eval().xray_visual(images).pooler_output, backbone.eval()(images).pooler_output)
        if name == "hashtag":
            assert not torch.equal(model.head.weight, source.classifier.weight)
    # and back: the hashtag model drops a plain classifier's head quietly
    model.save_pretrained(tmp_path / "classifier")
    hashtag, info = XrayVisualForHashtagClassification.from_pretrained(
        tmp_path / "classifier", output_loading_info=True, **vocab.config_kwargs()
    )
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"} and not info["unexpected_keys"]


def test_image_classification_pipeline_on_a_real_image(tmp_path):
    torch.manual_seed(0)
    model = XrayVisualForImageClassification(tiny(id2label=LABELS)).eval()
    processor = XrayVisualImageProcessor(size=32)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(skdata.astronaut())
    classify = pipeline("image-classification", model=str(tmp_path), device="cpu")
    assert isinstance(classify.model, XrayVisualForImageClassification)
    result = classify(image, top_k=3)
    assert {r["label"] for r in result} == set(LABELS.values())
    with torch.no_grad():
        probs = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    expected = {LABELS[i]: p for i, p in enumerate(probs.tolist())}
    for r in result:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-5)
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)


def test_loss_decreases_in_a_few_steps_on_a_tiny_batch():
    torch.manual_seed(0)
    model = XrayVisualForImageClassification(tiny(id2label=LABELS)).train()
    views = [skdata.astronaut(), skdata.chelsea(), skdata.rocket(), skdata.astronaut()[:300, 100:400]]
    images = torch.cat([
        F.interpolate(torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1)[None].float() / 255, size=(32, 32),
                      mode="bilinear", antialias=True)
        for v in views
    ])
    labels = torch.tensor([0, 1, 2, 0])  # person, cat, rocket, person
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(10):
        loss = model(images, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses  # 1.11 -> 0.59 here


def test_linear_probe_keeps_the_backbone_in_eval_mode():
    model = XrayVisualForImageClassification(tiny(id2label=LABELS, drop_path_rate=0.5))
    model.freeze_backbone()
    model.train()
    assert model.head.training and not model.xray_visual.training
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images).logits, model(images).logits)
