import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification

import xray_hf  # noqa: F401
from xray_hf import (
    HashtagVocabulary,
    XrayVisualConfig,
    XrayVisualForHashtagClassification,
    XrayVisualForImageClassification,
    XrayVisualForPreTraining,
    XrayVisualModel,
)
from xray_hf.modeling.hashtag import hashtag_loss

TAGS = [["#Cat", "cute"], ["cat", "dog"], ["dog"], ["cat", "bird", "dog"], ["bird"], ["fish"]]


def tiny(**overrides) -> XrayVisualConfig:
    kwargs = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4)
    kwargs.update(overrides)
    return XrayVisualConfig.from_preset("tiny", **kwargs)


@pytest.fixture(scope="module")
def vocab():
    return HashtagVocabulary.from_tag_lists(TAGS, min_count=2)


def test_vocabulary_counts_orders_and_normalises(vocab):
    assert vocab.labels == ["cat", "dog", "bird"]  # by count (3, 3, 2), ties alphabetically; 'cute', 'fish' < 2
    assert vocab.counts == {"cat": 3, "dog": 3, "bird": 2}
    assert "#CAT" in vocab and "fish" not in vocab
    target = vocab.encode([["Dog", "unknown"], [], ["#bird", "cat"]])
    assert target.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]
    assert vocab.decode(torch.tensor([[0.1, 0.9, 0.5]]), k=2) == [["dog", "bird"]]
    assert HashtagVocabulary.from_tag_lists(TAGS, max_size=2).labels == ["cat", "dog"]


def test_vocabulary_from_dataset_save_load_and_config(vocab, tmp_path):
    ds = datasets.Dataset.from_dict({"hashtags": TAGS})
    assert HashtagVocabulary.from_dataset(ds, min_count=2).labels == vocab.labels
    vocab.save(tmp_path / "vocab.json")
    assert HashtagVocabulary.load(tmp_path / "vocab.json").labels == vocab.labels
    config = tiny(**vocab.config_kwargs())
    config.save_pretrained(tmp_path)
    loaded = XrayVisualConfig.from_pretrained(tmp_path)
    assert loaded.num_labels == 3 and HashtagVocabulary.from_config(loaded).labels == vocab.labels


def test_vocabulary_errors():
    with pytest.raises(ValueError, match="min_count"):
        HashtagVocabulary.from_tag_lists(TAGS, min_count=10)
    with pytest.raises(TypeError, match="list of strings"):
        HashtagVocabulary.from_tag_lists(["cat", "dog"])
    with pytest.raises(ValueError, match="duplicate"):
        HashtagVocabulary(["cat", "#Cat"])
    with pytest.raises(ValueError, match="no column"):
        HashtagVocabulary.from_dataset(datasets.Dataset.from_dict({"tags": TAGS}))


def test_softmax_loss_is_cross_entropy_with_normalised_multi_hot():
    logits = torch.randn(3, 4)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    logp = logits.log_softmax(-1)
    expected = (-(0.5 * logp[0, 0] + 0.5 * logp[0, 2]) - logp[2, 1]) / 2  # the unlabelled row does not count
    assert torch.isclose(hashtag_loss(logits, labels), expected)
    # single labels: ordinary cross-entropy; label smoothing as in F.cross_entropy
    one_hot = F.one_hot(torch.tensor([2, 0, 3]), 4).float()
    assert torch.isclose(hashtag_loss(logits, one_hot), F.cross_entropy(logits, torch.tensor([2, 0, 3])))
    assert torch.isclose(
        hashtag_loss(logits, one_hot, label_smoothing=0.1),
        F.cross_entropy(logits, torch.tensor([2, 0, 3]), label_smoothing=0.1),
    )
    assert hashtag_loss(logits, torch.zeros(3, 4)).item() == 0.0


def test_bce_loss_and_errors():
    logits, labels = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    assert torch.isclose(hashtag_loss(logits, labels, "bce"), F.binary_cross_entropy_with_logits(logits, labels))
    with pytest.raises(ValueError, match="loss_type"):
        hashtag_loss(logits, labels, "focal")
    with pytest.raises(ValueError, match="multi-hot"):
        hashtag_loss(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing"):
        hashtag_loss(logits, labels, label_smoothing=1.0)


def test_model_on_images_and_videos(vocab):
    torch.manual_seed(0)
    model = XrayVisualForHashtagClassification(tiny(**vocab.config_kwargs())).eval()
    labels = vocab.encode([["cat"], ["dog", "bird"]])
    out = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert out.logits.shape == (2, 3) and out.logits.dtype == torch.float32 and out.loss.ndim == 0
    assert torch.allclose(out.logits, model.classifier(out.pooler_output))
    out = model(torch.randn(2, 4, 3, 32, 32), labels=labels, loss_type="bce")
    assert out.logits.shape == (2, 3)
    # AutoModelForImageClassification is the plain single-label head; the hashtag model loads by its class
    assert type(AutoModelForImageClassification.from_config(model.config)) is XrayVisualForImageClassification


def test_stage_handoff_from_mae_keeps_every_encoder_weight_and_drops_the_decoder(vocab, tmp_path):
    torch.manual_seed(0)
    mae = XrayVisualForPreTraining(tiny()).eval()
    mae.save_pretrained(tmp_path / "mae")
    model, info = XrayVisualForHashtagClassification.from_pretrained(
        tmp_path / "mae", output_loading_info=True, **vocab.config_kwargs()
    )
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]  # the decoder is dropped quietly
    for name, tensor in mae.xray_visual.state_dict().items():
        assert torch.equal(model.xray_visual.state_dict()[name], tensor), name
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(images).pooler_output, mae.xray_visual(images).pooler_output)
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird"}

    # the next stage loads the hashtag checkpoint the same way; a bare backbone checkpoint works too
    model.save_pretrained(tmp_path / "hashtag")
    backbone, info = XrayVisualModel.from_pretrained(tmp_path / "hashtag", output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.equal(backbone.eval()(images).pooler_output, mae.xray_visual(images).pooler_output)
    backbone.save_pretrained(tmp_path / "backbone")
    again, info = XrayVisualForHashtagClassification.from_pretrained(
        tmp_path / "backbone", output_loading_info=True, **vocab.config_kwargs()
    )
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}


def test_frozen_backbone_stays_in_eval_mode_through_train(vocab):
    torch.manual_seed(0)
    model = XrayVisualForHashtagClassification(tiny(drop_path_rate=0.5, **vocab.config_kwargs()))
    images = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model.train()(images).logits, model(images).logits)  # DropPath draws differ
    model.freeze_backbone()
    assert model.training and model.classifier.training and not model.xray_visual.training
    model.eval().train()  # as the Trainer does between evaluation and training steps
    assert model.classifier.training and not model.xray_visual.training
    assert not any(p.requires_grad for p in model.xray_visual.parameters()) and model.classifier.weight.requires_grad
    assert torch.equal(model(images).logits, model(images).logits)
    model.freeze_backbone(False)
    assert model.xray_visual.training and all(p.requires_grad for p in model.parameters())
