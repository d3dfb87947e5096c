import pytest
import torch
from transformers import AutoModelForPreTraining

import xray_hf  # noqa: F401
from xray_hf import XrayVisualConfig, XrayVisualForPreTraining
from xray_hf.modeling.mae import masked_patch_loss, patchify, random_masking, unpatchify
from xray_hf.modeling.mae_visualization import reconstruction_panels, save_reconstruction_grid


def tiny(**overrides) -> XrayVisualConfig:
    kwargs = dict(decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4)
    kwargs.update(overrides)
    return XrayVisualConfig.from_preset("tiny", **kwargs)


def build(seed: int = 0, **overrides) -> XrayVisualForPreTraining:
    torch.manual_seed(seed)
    return XrayVisualForPreTraining(tiny(**overrides)).eval()


@pytest.fixture(scope="module")
def model():
    return build()


def test_patchify_roundtrip_and_order_matches_the_patch_embedding(model):
    images, videos = torch.randn(2, 3, 32, 48), torch.randn(2, 4, 3, 32, 16)
    assert torch.equal(unpatchify(patchify(images, 8, 2), (1, 4, 6), 8, 2, 3, video=False), images)
    assert torch.equal(unpatchify(patchify(videos, 8, 2), (2, 4, 2), 8, 2, 3, video=True), videos)
    # row i of patchify is exactly what token i of the Conv3d tokenizer sees
    conv = model.xray_visual.embeddings.patch_embeddings.projection
    w = conv.weight  # (D, C, t, p, p)
    tokens, _ = model.xray_visual.embeddings.patch_embeddings(videos)
    flat_w = w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)  # (D, t*p*p*C) in (t, p, p, C) order
    assert torch.allclose(patchify(videos, 8, 2) @ flat_w.T + conv.bias, tokens, atol=1e-5)
    tokens, _ = model.xray_visual.embeddings.patch_embeddings(images)
    flat_w = w.sum(2).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    assert torch.allclose(patchify(images, 8, 2) @ flat_w.T + conv.bias, tokens, atol=1e-5)


def test_random_masking_keeps_lowest_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.6, 0.4]])
    ids_keep, mask, ids_restore = random_masking(2, 4, 0.5, noise=noise)
    assert ids_keep.tolist() == [[1, 3], [0, 3]]
    assert mask.tolist() == [[1, 0, 1, 0], [0, 1, 1, 0]]
    shuffled = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(2, 5, 0.5, noise=noise)


@pytest.mark.parametrize(
    "num_patches, mask_ratio, visible",
    [(800, 0.9, 80), (1000, 0.9, 100), (1568, 0.9, 156), (196, 0.75, 49), (10, 0.75, 2), (100, 0.7, 30), (3, 0.9, 1)],
)
def test_visible_count_is_the_floor_of_the_exact_product(num_patches, mask_ratio, visible):
    # MAE keeps floor(N * (1 - r)) patches; float error must not cost one (800 * (1 - 0.9) = 79.999...)
    ids_keep, mask, _ = random_masking(1, num_patches, mask_ratio)
    assert ids_keep.shape == (1, visible) and int(mask.sum()) == num_patches - visible


def test_image_and_video_outputs(model):
    out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 16, 8 * 8 * 3) and out.logits.dtype == torch.float32
    assert out.mask.sum(1).tolist() == [12, 12]  # 75% of 16 patches (config default)
    assert out.last_hidden_state.shape == (2, 1 + 4, 64)  # the encoder saw CLS + 4 visible tokens
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out = model(torch.randn(2, 4, 3, 32, 48))  # 2 x 4 x 6 = 48 tubelets
    assert out.logits.shape == (2, 48, 2 * 8 * 8 * 3)
    assert out.mask.sum(1).tolist() == [44, 44]  # 90%: int(48 * 0.1) = 4 visible
    assert out.last_hidden_state.shape == (2, 1 + 4, 64)
    out = model(torch.randn(1, 8, 3, 64, 24), mask_ratio=0.5)  # other frame count, rectangle, explicit ratio
    assert out.logits.shape == (1, 4 * 8 * 3, 384) and out.mask.sum().item() == 48


def test_encoder_sees_only_visible_patches(model):
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    out = model(images, noise=noise)
    # change every masked patch: the encoder output is unchanged (bitwise), the reconstruction target is not
    patches = patchify(images, 8, 2)
    changed = torch.where(out.mask[..., None].bool(), torch.randn_like(patches), patches)
    changed = unpatchify(changed, (1, 4, 4), 8, 2, 3, video=False)
    out2 = model(changed, noise=noise)
    assert torch.equal(out.last_hidden_state, out2.last_hidden_state)
    assert torch.equal(out.logits, out2.logits)
    assert not torch.equal(out.loss, out2.loss)
    # and it equals the backbone run on the visible tokens only
    tokens, _ = model.xray_visual.embeddings.embed_patches(images)
    ids_keep, _, _ = random_masking(2, 16, 0.75, noise=noise)
    visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, 64))
    ref = model.xray_visual.encode(model.xray_visual.embeddings.add_prefix(visible))
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-6)


def test_loss_counts_masked_patches_only_and_normalises_per_patch():
    target = torch.randn(2, 6, 12) * 3 + 5
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.float32)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert masked_patch_loss(normed, target, mask).item() < 1e-10
    logits = normed.clone()
    logits[mask == 0] += 100.0  # errors on visible patches do not count
    assert masked_patch_loss(logits, target, mask).item() < 1e-10
    logits = normed + 0.5 * mask[..., None]
    assert torch.isclose(masked_patch_loss(logits, target, mask), torch.tensor(0.25))
    # raw-pixel targets when norm_pix_loss is off
    assert torch.isclose(masked_patch_loss(target + 1.0, target, mask, norm_pix_loss=False), torch.tensor(1.0))


def test_noise_makes_it_deterministic_and_the_mask_ratio_is_configurable():
    model = build(mask_ratio=0.5, video_mask_ratio=0.75)
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    a, b = model(images, noise=noise), model(images, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.mask, b.mask)
    assert a.mask.sum().item() == 16
    assert model(torch.randn(1, 4, 3, 32, 32)).mask.sum().item() == 24  # 75% of 32 tubelets
    with pytest.raises(ValueError, match="mask_ratio"):
        model(images, mask_ratio=1.0)


def test_image_head_is_the_time_average_of_the_tubelet_head(model):
    image = torch.randn(2, 3, 32, 32)
    clip = image[:, None].expand(-1, 2, -1, -1, -1)  # one tubelet whose frames are the image
    noise = torch.rand(2, 16)
    a, b = model(image, noise=noise), model(clip, noise=noise, mask_ratio=0.75)
    assert torch.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-5)
    video_logits = b.logits.view(2, 16, 2, -1).mean(dim=2)
    assert torch.allclose(a.logits, video_logits, atol=1e-5)


def test_gradients_reach_encoder_and_decoder_and_bf16_loss_is_fp32():
    model = build().train()
    model(torch.randn(2, 4, 3, 32, 32)).loss.backward()
    assert model.xray_visual.encoder.layer[0].attention.qkv.weight.grad.abs().sum() > 0
    assert model.decoder.mask_token.grad.abs().sum() > 0
    assert model.decoder.pred.weight.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.loss.dtype == torch.float32 and out.logits.dtype == torch.float32


def test_reconstruct_inverts_norm_pix_targets(model):
    images = torch.randn(2, 3, 32, 32)
    out = model(images)
    target = patchify(images, 8, 2)
    perfect = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert torch.allclose(model.reconstruct(images, perfect, out.mask), images, atol=1e-4)
    pasted = model.reconstruct(images, torch.zeros_like(out.logits), out.mask, paste_visible=True)
    keep = (out.mask == 0)[..., None]
    assert torch.equal(patchify(pasted, 8, 2)[keep.expand_as(target)], target[keep.expand_as(target)])


def test_reconstruction_grid_png(model, tmp_path):
    from PIL import Image

    panels, loss = reconstruction_panels(model, torch.randn(3, 3, 32, 32))
    assert panels.shape == (3, 4, 1, 3, 32, 32) and 0 <= panels.min() and panels.max() <= 1
    path = tmp_path / "grid.png"
    save_reconstruction_grid(model, torch.randn(3, 3, 32, 32), path, min_height=64)
    with Image.open(path) as img:  # 3 rows x 4 panels of 64 px (scaled x2) with 2 px padding
        assert img.size == (4 * 64 + 5 * 2, 3 * 64 + 4 * 2)
    save_reconstruction_grid(model, torch.randn(2, 4, 3, 32, 32), tmp_path / "video.png", min_height=32)
    with Image.open(tmp_path / "video.png") as img:  # each panel shows the 4 frames side by side
        assert img.size == (4 * 128 + 5 * 2, 2 * 32 + 3 * 2)


def test_evit_pruning_is_refused():
    with pytest.raises(ValueError, match="EViT"):
        XrayVisualForPreTraining(tiny(evit_layers=[1], keep_rate=0.5))
    XrayVisualForPreTraining(tiny(evit_layers=[1], keep_rate=1.0))  # no pruning: fine


def test_bad_config_values():
    with pytest.raises(ValueError, match="video_mask_ratio"):
        tiny(video_mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        tiny(decoder_hidden_size=30)
    with pytest.raises(ValueError, match="decoder_num_hidden_layers"):
        tiny(decoder_num_hidden_layers=0)


def test_bad_input(model):
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 30, 32))


def test_auto_class_and_save_load_roundtrip(model, tmp_path):
    assert isinstance(AutoModelForPreTraining.from_config(model.config), XrayVisualForPreTraining)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(model(images, noise=noise).logits, loaded(images, noise=noise).logits)
    assert loaded.config.mask_ratio == 0.75 and loaded.config.video_mask_ratio == 0.9
    assert loaded.config.norm_pix_loss is True
