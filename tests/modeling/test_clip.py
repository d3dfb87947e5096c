import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForZeroShotImageClassification

import xray_hf  # noqa: F401
from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XrayLLM2CLIPTextConfig,
    XrayLLM2CLIPTextModel,
    XrayTextConfig,
    XrayTextModel,
    XrayVisualConfig,
    XrayVisualForHashtagClassification,
    XrayVisualModel,
)
from xray_hf.modeling.clip import XrayCLIPDenoiser, XrayCLIPSLIPHead
from xray_hf.modeling.outputs import XrayCLIPOutput, XrayVisualModelOutput
from xray_hf.modeling.text import XrayTextModelOutput

VOCAB = 100
BATCH = 4
TINY_LLM = {
    "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
}


def clip_config(tower: str = "plain", **overrides) -> XrayCLIPConfig:
    if tower == "plain":
        text = XrayTextConfig.from_preset("tiny", vocab_size=VOCAB, projection_dim=16, max_position_embeddings=16)
    else:
        text = XrayLLM2CLIPTextConfig(llm_config=TINY_LLM, projection_dim=16, adapter_depth=1)
    settings = {"slip_hidden_size": 32, "slip_projection_dim": 8, **overrides}
    return XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16,
                          **settings)


def build(tower: str = "plain", seed: int = 0, **overrides) -> XrayCLIPModel:
    torch.manual_seed(seed)
    return XrayCLIPModel(clip_config(tower, **overrides)).eval()


def batch(seed: int = 0, rows: int = BATCH) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (rows, 8), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # one padded caption
    pixel_values = torch.randn(rows, 3, 32, 32, generator=g)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


def loss_inputs(seed: int = 0, rows: int = BATCH) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    hashtag_ids = torch.randint(1, VOCAB, (rows, 5), generator=g)
    return dict(
        **batch(seed, rows),
        hashtag_input_ids=hashtag_ids,
        hashtag_attention_mask=torch.ones_like(hashtag_ids),
        hashtag_mask=torch.tensor([True, False] + [True] * (rows - 2)),
        simclr_view_1=torch.randn(rows, 3, 32, 32, generator=g),
        simclr_view_2=torch.randn(rows, 3, 32, 32, generator=g),
    )


def reference_clip_loss(image, text, scale, label_smoothing=0.0):
    """CLIP's symmetric cross-entropy, written out independently of xray_hf.losses."""
    logits = scale * image @ text.T
    labels = torch.arange(image.shape[0])
    return (F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)) / 2


def reference_nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent over the 2N views: each view's positive is the other view of its item; itself excluded."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    labels = torch.cat([torch.arange(n) + n, torch.arange(n)])
    return F.cross_entropy(sim, labels)


# ------------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("tower, text_class", [("plain", XrayTextModel), ("llm2clip", XrayLLM2CLIPTextModel)])
def test_towers_and_heads_follow_the_config(tower, text_class):
    model = build(tower)
    assert type(model.xray_visual) is XrayVisualModel and type(model.text_model) is text_class
    assert model.config.text_config is model.text_model.config  # one object, no drift
    assert model.visual_projection.weight.shape == (16, 64) and model.visual_projection.bias is None
    assert isinstance(model.slip_head, XrayCLIPSLIPHead) and isinstance(model.denoiser, XrayCLIPDenoiser)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    bare = build(tower, slip_weight=0.0, lambda_den=0.0)
    assert bare.slip_head is None and bare.denoiser is None


def test_logit_scale_starts_at_the_configured_value():
    assert build(logit_scale_init_value=1.25).logit_scale.item() == pytest.approx(1.25)


# ------------------------------------------------------------------------------------------------- features
@torch.no_grad()
def test_image_and_video_features_are_the_projected_fp32_pooled_embedding():
    model = build()
    images = torch.randn(3, 3, 32, 32)
    out = model.get_image_features(images)
    assert isinstance(out, XrayVisualModelOutput)
    backbone = model.xray_visual(images)
    expected = backbone.pooler_output @ model.visual_projection.weight.T
    assert out.pooler_output.dtype == torch.float32 and out.pooler_output.shape == (3, 16)
    torch.testing.assert_close(out.pooler_output, expected)
    torch.testing.assert_close(out.last_hidden_state, backbone.last_hidden_state)

    videos = torch.randn(2, 4, 3, 32, 32)
    video_out = model.get_video_features(videos)
    assert isinstance(video_out, XrayVisualModelOutput) and video_out.pooler_output.shape == (2, 16)
    torch.testing.assert_close(video_out.pooler_output, model.xray_visual(videos).pooler_output
                               @ model.visual_projection.weight.T)
    torch.testing.assert_close(model.get_image_features(videos).pooler_output, video_out.pooler_output)


def test_get_video_features_refuses_images():
    model = build()
    with pytest.raises(ValueError, match="batch, frames, channels, height, width"):
        model.get_video_features(torch.randn(2, 3, 32, 32))


@torch.no_grad()
@pytest.mark.parametrize("tower", ["plain", "llm2clip"])
def test_text_features_are_the_projected_fp32_pooled_embedding(tower):
    model = build(tower)
    inputs = batch()
    out = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    assert isinstance(out, XrayTextModelOutput)
    tower_out = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    head = model.text_model.text_projection
    if tower == "plain":
        expected = head(tower_out.pooler_output)
    else:
        expected = head(model.text_model.adapter(tower_out.pooler_output))
    assert out.pooler_output.dtype == torch.float32 and out.pooler_output.shape == (BATCH, 16)
    torch.testing.assert_close(out.pooler_output, expected)
    torch.testing.assert_close(out.text_embeds, expected)


@torch.no_grad()
def test_text_features_from_cached_llm_output_equal_the_token_path():
    model = build("llm2clip")
    inputs = batch()
    pooled = model.text_model.get_llm_pooled_output(inputs["input_ids"], inputs["attention_mask"])
    from_cache = model.get_text_features(llm_pooled_output=pooled).pooler_output
    from_tokens = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
    torch.testing.assert_close(from_cache, from_tokens, rtol=1e-6, atol=1e-6)
    by_tokens = model(**inputs)
    by_cache = model(pixel_values=inputs["pixel_values"], llm_pooled_output=pooled)
    torch.testing.assert_close(by_cache.logits_per_image, by_tokens.logits_per_image, rtol=1e-5, atol=1e-5)


def test_cached_llm_output_needs_the_llm2clip_tower():
    with pytest.raises(ValueError, match="LLM2CLIP"):
        build("plain").get_text_features(llm_pooled_output=torch.randn(2, 64))
    with pytest.raises(ValueError, match="input_ids"):
        build("plain").get_text_features()


# -------------------------------------------------------------------------------------------------- forward
@torch.no_grad()
def test_logits_are_the_scaled_cosines_of_the_projected_embeddings():
    model = build()
    model.logit_scale.fill_(2.0)
    inputs = batch()
    out = model(**inputs)
    assert isinstance(out, XrayCLIPOutput)
    image = F.normalize(model.xray_visual(inputs["pixel_values"]).pooler_output @ model.visual_projection.weight.T,
                        dim=-1)
    text = F.normalize(model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
                       .text_embeds, dim=-1)
    expected = math.exp(2.0) * image @ text.T
    torch.testing.assert_close(out.logits_per_image, expected)
    torch.testing.assert_close(out.logits_per_text, expected.T)
    torch.testing.assert_close(out.image_embeds, image)
    torch.testing.assert_close(out.text_embeds, text)
    assert out.logit_scale.item() == pytest.approx(math.exp(2.0))
    assert out.loss is None and out.contrastive_loss is None
    assert out.logits_per_image.dtype == out.logits_per_text.dtype == torch.float32


@torch.no_grad()
def test_logits_for_more_texts_than_images():
    model = build()
    inputs = batch()
    out = model(pixel_values=inputs["pixel_values"][:2], input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"])
    assert out.logits_per_image.shape == (2, BATCH) and out.logits_per_text.shape == (BATCH, 2)


def test_return_loss_gives_every_term_and_they_sum_to_the_loss():
    config = dict(label_smoothing=0.1, hashtag_loss_weight=0.5, slip_weight=0.25, slip_temperature=0.2,
                  lambda_den=0.75)
    model = build(**config)
    inputs = loss_inputs()
    out = model(**inputs, return_loss=True)
    terms = {name: out[name] for name in ("contrastive_loss", "hashtag_loss", "slip_loss", "denoise_loss")}
    for name, value in terms.items():
        assert value is not None and value.shape == () and value.dtype == torch.float32, name
        assert torch.isfinite(value) and value.item() > 0, name
        assert value.requires_grad, name
    torch.testing.assert_close(out.loss, sum(terms.values()))

    # each term against an independent reference on the output fields
    scale = out.logit_scale
    torch.testing.assert_close(out.contrastive_loss,
                               reference_clip_loss(out.image_embeds, out.text_embeds, scale, 0.1))
    keep = inputs["hashtag_mask"]
    torch.testing.assert_close(out.hashtag_loss,
                               0.5 * reference_clip_loss(out.image_embeds[keep], out.hashtag_embeds[keep], scale, 0.1))
    torch.testing.assert_close(out.slip_loss, 0.25 * reference_nt_xent(out.slip_embeds_1, out.slip_embeds_2, 0.2))
    torch.testing.assert_close(out.denoise_loss, 0.75 * F.mse_loss(out.denoised_embeds, out.denoise_target))
    # the denoiser reconstructs the backbone's pooled output; the SLIP head sees the views
    with torch.no_grad():
        torch.testing.assert_close(out.denoise_target, model.xray_visual(inputs["pixel_values"]).pooler_output)
        views = model.xray_visual(torch.cat([inputs["simclr_view_1"], inputs["simclr_view_2"]])).pooler_output
        torch.testing.assert_close(torch.cat([out.slip_embeds_1, out.slip_embeds_2]), model.slip_head(views))
    assert out.denoise_target.shape == out.denoised_embeds.shape == (BATCH, 64)
    assert out.hashtag_embeds.shape == (BATCH, 16) and out.slip_embeds_1.shape == (BATCH, 8)


def test_contrastive_term_equals_a_reference_clip_loss_without_smoothing():
    model = build(lambda_den=0.0)
    out = model(**batch(), return_loss=True)
    assert set(k for k in out.keys() if k.endswith("loss")) == {"loss", "contrastive_loss"}
    reference = reference_clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
    torch.testing.assert_close(out.contrastive_loss, reference)
    torch.testing.assert_close(out.loss, reference)


def test_loss_gradient_reaches_both_towers_and_the_logit_scale():
    model = build().train()
    model(**loss_inputs(), return_loss=True).loss.backward()
    for name in ("logit_scale", "visual_projection.weight", "text_model.text_projection.weight",
                 "xray_visual.embeddings.cls_token", "slip_head.mlp.0.weight", "denoiser.down.0.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_return_loss_needs_both_modalities():
    model = build()
    inputs = batch()
    with pytest.raises(ValueError, match="return_loss needs both"):
        model(pixel_values=inputs["pixel_values"], return_loss=True)


def test_simclr_views_with_slip_disabled_are_refused():
    model = build(slip_weight=0.0)
    inputs = loss_inputs()
    with pytest.raises(ValueError, match="slip_weight is 0"):
        model(**inputs, return_loss=True)
    with pytest.raises(ValueError, match="both simclr_view_1 and simclr_view_2"):
        build()(**batch(), simclr_view_1=inputs["simclr_view_1"])


def test_loss_falls_over_adamw_steps_on_a_fixed_batch():
    model = build().train()
    inputs = loss_inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for step in range(30):
        torch.manual_seed(step)  # the denoiser's noise
        out = model(**inputs, return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
        losses.append((out.loss.item(), out.contrastive_loss.item()))
    first, last = losses[0], losses[-1]
    assert all(math.isfinite(total) for total, _ in losses)
    assert last[0] < 0.5 * first[0], losses
    assert last[1] < 0.5 * first[1], losses


# ------------------------------------------------------------------------------------------ save and load
@pytest.mark.parametrize("tower", ["plain", "llm2clip"])
def test_save_and_load_give_identical_logits(tmp_path, tower):
    model = build(tower)
    with torch.no_grad():
        model.logit_scale.fill_(3.3)  # not the init value: loading must not re-initialise it
    model.save_pretrained(tmp_path)
    inputs = batch()
    with torch.no_grad():
        expected = model(**inputs)
        for loader in (XrayCLIPModel, AutoModel, AutoModelForZeroShotImageClassification):
            loaded, info = loader.from_pretrained(tmp_path, output_loading_info=True)
            assert type(loaded) is XrayCLIPModel, loader
            assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
            loaded.eval()
            assert loaded.logit_scale.item() == pytest.approx(3.3)
            out = loaded(**inputs)
            torch.testing.assert_close(out.logits_per_image, expected.logits_per_image, rtol=0, atol=0)
            torch.testing.assert_close(out.logits_per_text, expected.logits_per_text, rtol=0, atol=0)


def test_vision_tower_loads_from_a_clip_checkpoint_alone(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    backbone, info = XrayVisualModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert backbone.config.hidden_size == 64 and backbone.config.num_hidden_layers == 4
    expected = model.xray_visual.state_dict()
    assert set(backbone.state_dict()) == set(expected)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key
    images, videos = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        for pixels in (images, videos):
            torch.testing.assert_close(backbone.eval()(pixels).pooler_output, model.xray_visual(pixels).pooler_output,
                                       rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- precision
def test_bf16_autocast_keeps_logits_and_losses_fp32_and_close_to_fp32():
    model = build(hashtag_loss_weight=0.5)
    inputs = loss_inputs()
    torch.manual_seed(0)
    reference = model(**inputs, return_loss=True)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs, return_loss=True)
    for name in ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds", "logit_scale", "loss",
                 "contrastive_loss", "hashtag_loss", "slip_loss", "denoise_loss", "hashtag_embeds", "slip_embeds_1",
                 "denoised_embeds"):
        assert out[name].dtype == torch.float32, name
    torch.testing.assert_close(out.logits_per_image, reference.logits_per_image, rtol=0, atol=0.15)
    for name in ("loss", "contrastive_loss", "hashtag_loss", "slip_loss", "denoise_loss"):
        torch.testing.assert_close(out[name], reference[name], rtol=0.03, atol=0.02, msg=name)
    # the terms are computed in fp32 from the (fp32) embeddings the bf16 towers produced
    torch.testing.assert_close(out.contrastive_loss, reference_clip_loss(out.image_embeds, out.text_embeds,
                                                                         out.logit_scale), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.slip_loss, reference_nt_xent(out.slip_embeds_1, out.slip_embeds_2, 0.1),
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------- optimisation
def test_clamp_logit_scale_clamps_to_zero_and_log_100():
    model = build()
    for value, expected in ((7.0, math.log(100)), (-1.0, 0.0), (2.0, 2.0)):
        with torch.no_grad():
            model.logit_scale.fill_(value)
        model.clamp_logit_scale()
        assert model.logit_scale.item() == pytest.approx(expected)
        assert model.logit_scale.requires_grad


def test_no_weight_decay_names_the_logit_scale():
    model = build()
    names = model.no_weight_decay()
    assert "logit_scale" in names
    parameters = dict(model.named_parameters())
    assert all(name in parameters for name in names)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(monkeypatch):
    model = build().train()
    inputs = loss_inputs()

    def gradients():
        model.zero_grad()
        torch.manual_seed(0)
        model(**inputs, return_loss=True).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # count runs of an MLP inside the first layer of each tower (forward hooks do not fire on the recompute)
    calls = {"vision": 0, "text": 0}

    def count(name, module):
        forward = module.forward

        def counted(*args, **kwargs):
            calls[name] += 1
            return forward(*args, **kwargs)

        monkeypatch.setattr(module, "forward", counted)

    count("vision", model.xray_visual.encoder.layer[0].mlp)
    count("text", model.text_model.text_model.encoder.layers[0].mlp)
    plain = gradients()
    plain_calls = dict(calls)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    calls.update(vision=0, text=0)
    checkpointed = gradients()
    # images and SLIP views through the backbone, captions and hashtags through the text tower: each twice now
    assert plain_calls == {"vision": 2, "text": 2}
    assert calls == {name: 2 * count for name, count in plain_calls.items()}, (calls, plain_calls)
    assert set(checkpointed) == set(plain) and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------- LLM2CLIP tower
def _llm_frozen(model: XrayCLIPModel) -> None:
    tower = model.text_model
    assert all(not p.requires_grad for p in tower.llm.parameters())
    assert all(p.requires_grad for p in tower.adapter.parameters())
    assert tower.text_projection.weight.requires_grad
    assert model.visual_projection.weight.requires_grad and model.logit_scale.requires_grad
    assert all(p.requires_grad for p in model.xray_visual.parameters())


def test_llm2clip_tower_keeps_its_llm_frozen_after_construction_and_loading(tmp_path):
    model = build("llm2clip").train()
    _llm_frozen(model)
    model(**batch(), return_loss=True).loss.backward()
    assert all(p.grad is None for p in model.text_model.llm.parameters())
    assert model.text_model.text_projection.weight.grad is not None
    model.zero_grad()
    model.save_pretrained(tmp_path)
    for loader in (XrayCLIPModel, AutoModel):
        loaded = loader.from_pretrained(tmp_path)
        assert loaded.config.text_config.freeze_llm
        _llm_frozen(loaded)


def test_llm2clip_tower_with_a_trainable_llm_stays_trainable(tmp_path):
    torch.manual_seed(0)
    config = clip_config("llm2clip")
    config.text_config.freeze_llm = False
    model = XrayCLIPModel(config)
    assert all(p.requires_grad for p in model.text_model.llm.parameters())
    model.save_pretrained(tmp_path)
    assert all(p.requires_grad for p in XrayCLIPModel.from_pretrained(tmp_path).text_model.llm.parameters())


# --------------------------------------------------------------------------------------------- stage handoff
@pytest.fixture
def stage_dirs(tmp_path):
    torch.manual_seed(1)
    vision_config = XrayVisualConfig.from_preset("tiny", id2label={0: "#cat", 1: "#dog", 2: "#sunset"})
    hashtag = XrayVisualForHashtagClassification(vision_config)
    hashtag.save_pretrained(tmp_path / "hashtag")
    tower = XrayLLM2CLIPTextModel(XrayLLM2CLIPTextConfig(llm_config=TINY_LLM, projection_dim=24, adapter_depth=1))
    tower.save_pretrained(tmp_path / "text")
    return hashtag, tower, tmp_path


def test_from_stages_loads_the_hashtag_backbone_and_the_text_tower(stage_dirs):
    hashtag, tower, root = stage_dirs
    model = XrayCLIPModel.from_stages(vision=root / "hashtag", text=root / "text", lambda_den=0.5)
    assert isinstance(model, XrayCLIPModel) and type(model.text_model) is XrayLLM2CLIPTextModel
    assert model.config.projection_dim == 24 and model.config.lambda_den == 0.5  # the tower's projection_dim
    assert not hasattr(model, "classifier") and "classifier" not in str(list(model.state_dict()))
    backbone = hashtag.xray_visual.state_dict()
    assert set(model.xray_visual.state_dict()) == set(backbone)
    for key, value in model.xray_visual.state_dict().items():
        assert torch.equal(value, backbone[key]), key
    saved_tower = tower.state_dict()
    assert set(model.text_model.state_dict()) == set(saved_tower)
    for key, value in model.text_model.state_dict().items():
        assert torch.equal(value, saved_tower[key]), key
    _llm_frozen(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.xray_visual(images).pooler_output,
                                   hashtag.eval()(images).pooler_output, rtol=0, atol=0)
        inputs = batch()
        torch.testing.assert_close(model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
                                   tower.eval()(inputs["input_ids"], inputs["attention_mask"]).text_embeds)


def test_from_stages_accepts_loaded_models(stage_dirs):
    hashtag, tower, _ = stage_dirs
    model = XrayCLIPModel.from_stages(vision=hashtag.xray_visual, text=tower)
    assert torch.equal(model.xray_visual.embeddings.cls_token, hashtag.xray_visual.embeddings.cls_token)
    _llm_frozen(model)


def test_from_stages_follows_the_towers_freeze_llm_unless_told_otherwise(stage_dirs):
    """`freeze_llm` lives in the tower's config (the LoRA stages keep it True); from_stages honours it, and an
    explicit `freeze_llm=` overrides it either way."""
    _, tower, _ = stage_dirs
    backbone = XrayVisualModel(XrayVisualConfig.from_preset("tiny"))
    _llm_frozen(XrayCLIPModel.from_stages(vision=backbone, text=tower))  # the saved tower says frozen
    trainable = XrayCLIPModel.from_stages(vision=backbone, text=tower, freeze_llm=False)
    assert all(p.requires_grad for p in trainable.text_model.llm.parameters())
    assert trainable.config.text_config.freeze_llm is False
    tower.freeze_llm(False)  # a tower whose config says its LLM trains
    assert XrayCLIPModel.from_stages(vision=backbone, text=tower).config.text_config.freeze_llm is False
    _llm_frozen(XrayCLIPModel.from_stages(vision=backbone, text=tower, freeze_llm=True))
    tower.freeze_llm(True)  # the fixture is shared


def test_from_stages_refuses_a_vision_checkpoint_missing_backbone_weights(stage_dirs):
    hashtag, _, root = stage_dirs
    broken = root / "broken"
    hashtag.config.save_pretrained(broken)
    weights = load_file(root / "hashtag" / "model.safetensors")
    kept = {key: value for key, value in weights.items() if ".layer.1." not in key}
    assert len(kept) < len(weights)
    save_file(kept, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not hold a complete XrayVisual backbone"):
        XrayCLIPModel.from_stages(vision=broken, text=root / "text")


def _drop_keys(path, word):
    weights = load_file(path / "model.safetensors")
    kept = {key: value for key, value in weights.items() if word not in key}
    save_file(kept, path / "model.safetensors", metadata={"format": "pt"})


def test_from_stages_takes_a_tower_whose_untied_llm_has_no_head(tmp_path):
    # An untied LLM built from a base-model-only checkpoint: the tower keeps no LM head (never a random one).
    torch.manual_seed(0)
    XrayVisualModel(XrayVisualConfig.from_preset("tiny")).save_pretrained(tmp_path / "vision")
    config = XrayLLM2CLIPTextConfig(llm_config={**TINY_LLM, "tie_word_embeddings": False}, projection_dim=16,
                                    adapter_depth=1)
    XrayLLM2CLIPTextModel(config).save_pretrained(tmp_path / "text")
    _drop_keys(tmp_path / "text", "lm_head")
    tower = XrayLLM2CLIPTextModel.from_pretrained(tmp_path / "text")
    assert tower.lm_head is None
    model = XrayCLIPModel.from_stages(vision=tmp_path / "vision", text=tmp_path / "text")
    assert model.text_model.lm_head is None
    assert not any("lm_head" in key for key in model.state_dict())
    for key, value in model.text_model.state_dict().items():
        assert torch.equal(value, tower.state_dict()[key]), key
    _llm_frozen(model)


def test_clip_checkpoint_without_the_untied_llm_head_loads_without_a_random_head(tmp_path):
    torch.manual_seed(0)
    config = clip_config("llm2clip")
    config.text_config.llm_config.tie_word_embeddings = False
    model = XrayCLIPModel(config).eval()
    assert model.text_model.lm_head is not None
    model.save_pretrained(tmp_path)
    _drop_keys(tmp_path, "lm_head")
    loaded, info = XrayCLIPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.text_model.lm_head is None and not info["missing_keys"]
    _llm_frozen(loaded)
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits_per_image, model(**inputs).logits_per_image, rtol=0, atol=0)


def test_a_backbone_checkpoint_is_refused_not_loaded_as_a_random_clip_model(tmp_path):
    XrayVisualModel(XrayVisualConfig.from_preset("tiny")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="from_stages"):
        XrayCLIPModel.from_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is XrayVisualModel
