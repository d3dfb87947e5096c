import pytest
import torch

from xray_hf.eval.features import collate_samples, embed_images, encode_images, image_features, vision_backbone

from .helpers import OneHotCLIP, one_hot_images


def test_embedding_and_pooled_features_of_clip(tiny_clip):
    model, _, _ = tiny_clip
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        projected = model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(encode_images(model, pixels, batch_size=2), projected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encode_images(model, pixels, feature="pooled"), pooled, atol=1e-5, rtol=1e-5)
    assert vision_backbone(model) is model.vision_model


def test_frame_mean_embeds_clips_with_an_image_only_model(tiny_clip):
    model, _, _ = tiny_clip
    clips = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    per_frame = encode_images(model, clips.flatten(0, 1)).view(2, 3, -1).mean(1)
    torch.testing.assert_close(encode_images(model, clips, video_mode="frame-mean"), per_frame)


def test_columns_are_gathered_in_the_same_pass_and_batches_keep_order():
    labels = [3, 1, 4, 1, 5, 9, 2]
    samples = [{"pixel_values": image, "label": y, "caption": ["x"] * (i + 1)}
               for i, (image, y) in enumerate(zip(one_hot_images(labels), labels))]
    embeds, gathered = embed_images(OneHotCLIP(), samples, columns=("label", "caption"), batch_size=3)
    assert embeds.argmax(1).tolist() == labels
    assert gathered["label"] == labels and [len(c) for c in gathered["caption"]] == list(range(1, 8))
    loader = torch.utils.data.DataLoader(samples, batch_size=4, collate_fn=collate_samples)
    assert embed_images(OneHotCLIP(), loader)[0].argmax(1).tolist() == labels
    assert embed_images(OneHotCLIP(), iter(samples), batch_size=2)[0].argmax(1).tolist() == labels


def test_training_mode_is_restored_and_nothing_records_gradients(tiny_clip):
    model, _, _ = tiny_clip
    model.train()
    try:
        out = encode_images(model, torch.randn(2, 3, 32, 32))
        assert model.training and not out.requires_grad
    finally:
        model.eval()


def test_bad_inputs_are_named():
    model = OneHotCLIP()
    with pytest.raises(ValueError, match="feature"):
        image_features(model, torch.zeros(1, 3, 4, 4), feature="cls")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        image_features(model, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="no 'pixel_values'"):
        embed_images(model, [{"image": torch.zeros(3, 4, 4)}])
    with pytest.raises(ValueError, match="different pixel shapes"):
        embed_images(model, [{"pixel_values": torch.zeros(3, 4, 4)}, {"pixel_values": torch.zeros(3, 5, 5)}])
    with pytest.raises(ValueError, match="no column 'label'"):
        embed_images(model, [{"pixel_values": torch.zeros(3, 4, 4)}], columns=("label",))
    with pytest.raises(ValueError, match="no samples"):
        embed_images(model, [])
    with pytest.raises(ValueError, match="cannot find the vision backbone"):
        image_features(model, torch.zeros(1, 3, 4, 4), feature="pooled")


def test_feature_dim_from_the_config_matches_the_features(tiny_clip):
    from xray_hf import XrayVisualConfig
    from xray_hf.eval.features import feature_dim

    model, _, _ = tiny_clip
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for feature in ("embedding", "pooled"):
        assert feature_dim(model.config, feature) == encode_images(model, pixels, feature=feature).shape[1]
    assert (feature_dim(model.config), feature_dim(model.config, "pooled")) == (16, 32)
    backbone = XrayVisualConfig.from_preset("tiny")
    assert (feature_dim(backbone, "pooled"), feature_dim(backbone, "embedding")) == (backbone.hidden_size, None)
    with pytest.raises(ValueError, match="feature must be one of"):
        feature_dim(model.config, "logits")


def test_feature_names_have_one_definition():
    """The names an adapter config accepts are the ones `image_features` reads (one tuple, not a copy)."""
    from xray_hf.configuration.adapters import ADAPTER_FEATURES, ADAPTER_VIDEO_MODES
    from xray_hf.eval import features

    assert features.FEATURES is ADAPTER_FEATURES and features.VIDEO_MODES is ADAPTER_VIDEO_MODES
