import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel

import xray_hf  # noqa: F401
from xray_hf import XrayLLM2CLIPTextConfig, XrayLLM2CLIPTextForMNTP, XrayLLM2CLIPTextModel
from xray_hf.configuration.text import BIDIRECTIONAL_LLM_TYPES
from xray_hf.convert import smollm2_tokenizer

CAPTIONS = [
    "a photo of a cat sleeping on a red sofa",
    "two dogs",
    "an aerial view of a city at night with many lights",
    "a bowl of soup",
]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def tiny_llm(vocab_size: int, model_type: str = "llama", **overrides) -> dict:
    return dict(
        model_type=model_type, vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **overrides,
    )


def build(vocab_size: int, seed: int = 0, **overrides) -> XrayLLM2CLIPTextModel:
    torch.manual_seed(seed)
    config = XrayLLM2CLIPTextConfig(llm_config=tiny_llm(vocab_size), projection_dim=16, **overrides)
    return XrayLLM2CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build(len(tokenizer))


def tokens(tokenizer, texts, side="right"):
    return tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")


def hidden(model, input_ids, attention_mask=None):
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        return model.llm_hidden_states(input_ids, attention_mask)


def test_shapes_and_text_features(model, tokenizer):
    batch = tokens(tokenizer, CAPTIONS)
    out = model(**batch)
    assert out.text_embeds.shape == (4, 16) and out.text_embeds.dtype == torch.float32
    assert out.pooler_output.shape == (4, 32)
    assert out.last_hidden_state.shape == (4, batch["input_ids"].shape[1], 32)
    assert torch.equal(model.get_text_features(**batch).pooler_output, out.text_embeds)


@pytest.mark.parametrize("padded", [False, True])
def test_attention_is_bidirectional(model, tokenizer, padded):
    ids = tokens(tokenizer, ["a photo of a cat"])["input_ids"]
    changed = ids.clone()
    changed[0, -1] = tokenizer.convert_tokens_to_ids("Ġdog")
    mask = torch.ones_like(ids)
    if padded:  # with padding the mask is materialised; without it SDPA must not fall back to is_causal=True
        pad = torch.full((1, 3), tokenizer.pad_token_id)
        ids, changed = torch.cat([ids, pad], 1), torch.cat([changed, pad], 1)
        mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.long)], 1)
    before, after = hidden(model, ids, mask), hidden(model, changed, mask)
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-3  # the first token sees the last one


def test_causal_option_is_causal(tokenizer):
    model = build(len(tokenizer), bidirectional=False)
    ids = tokens(tokenizer, ["a photo of a cat"])["input_ids"]
    changed = ids.clone()
    changed[0, -1] += 1
    assert torch.allclose(hidden(model, ids)[0, :-1], hidden(model, changed)[0, :-1], atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "eos", "weighted_mean"])
def test_padding_side_and_pad_tokens_do_not_change_embeddings(tokenizer, pooling):
    model = build(len(tokenizer), pooling=pooling)
    single = torch.cat([model.get_text_features(**tokens(tokenizer, [text])).pooler_output for text in CAPTIONS])
    right = tokens(tokenizer, CAPTIONS, "right")
    left = tokens(tokenizer, CAPTIONS, "left")
    noisy = right["input_ids"].masked_fill(right["attention_mask"] == 0, 12345)  # any id in padded slots
    for batch in (right, left, {"input_ids": noisy, "attention_mask": right["attention_mask"]}):
        assert torch.allclose(model.get_text_features(**batch).pooler_output, single, atol=1e-5)


def test_pooling_matches_reference(tokenizer):
    for pooling in ("mean", "eos", "weighted_mean"):
        model = build(len(tokenizer), pooling=pooling)
        for text in CAPTIONS[:2]:
            batch = tokens(tokenizer, [text])
            states = hidden(model, batch["input_ids"])[0]
            n = states.shape[0]
            weights = {"mean": torch.ones(n), "eos": F.one_hot(torch.tensor(n - 1), n).float(),
                       "weighted_mean": torch.arange(1, n + 1).float()}[pooling]
            reference = (states * weights[:, None]).sum(0) / weights.sum()
            pooled = model.get_llm_pooled_output(**batch)[0]
            assert torch.allclose(pooled, reference, atol=1e-5)


def test_cached_pooled_output_path_equals_token_path(model, tokenizer):
    batch = tokens(tokenizer, CAPTIONS)
    pooled = model.get_llm_pooled_output(**batch)
    assert torch.allclose(model.get_text_features(llm_pooled_output=pooled).pooler_output, model.get_text_features(**batch).pooler_output)
    out = model(llm_pooled_output=pooled)
    assert out.last_hidden_state is None


def test_sdpa_and_eager_agree(tokenizer):
    sdpa = build(len(tokenizer))
    eager = build(len(tokenizer), attn_implementation="eager")
    assert eager.config.llm_config._attn_implementation == "eager"
    batch = tokens(tokenizer, CAPTIONS)
    assert torch.allclose(sdpa.get_text_features(**batch).pooler_output, eager.get_text_features(**batch).pooler_output, atol=1e-5)


def test_frozen_llm_only_adapter_and_projection_train(model, tokenizer):
    model.train()
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter", "text_projection"}
    out = model(**tokens(tokenizer, CAPTIONS))
    assert out.pooler_output.grad_fn is None  # the LLM ran without building a graph
    out.text_embeds.sum().backward()
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is not None for p in model.adapter.parameters())
    model.zero_grad()
    model.eval()


def test_unfrozen_llm_gets_gradients(tokenizer):
    model = build(len(tokenizer), freeze_llm=False).train()
    model(**tokens(tokenizer, CAPTIONS)).text_embeds.sum().backward()
    assert model.llm.layers[0].self_attn.q_proj.weight.grad is not None
    model.freeze_llm()
    assert model.config.freeze_llm and not any(p.requires_grad for p in model.llm.parameters())


def test_save_and_auto_load(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, XrayLLM2CLIPTextModel)
    batch = tokens(tokenizer, CAPTIONS)
    assert torch.equal(loaded.get_text_features(**batch).pooler_output, model.get_text_features(**batch).pooler_output)
    assert not any(p.requires_grad for p in loaded.llm.parameters())


# -- a bidirectional checkpoint never becomes a causal model silently --


def test_causal_lm_auto_class_refuses_our_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="xray_llm2clip_text|Unrecognized configuration"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_stock_class_built_from_nested_config_is_bidirectional(model, tokenizer):
    stock = LlamaModel(model.config.llm_config).eval()
    stock.load_state_dict(model.llm.state_dict())
    batch = tokens(tokenizer, CAPTIONS)
    with torch.no_grad():
        theirs = stock(**batch).last_hidden_state  # no is_causal argument: taken from the nested config
        unpadded = stock(**tokens(tokenizer, CAPTIONS[:1])).last_hidden_state
    ours = hidden(model, batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    assert torch.allclose(theirs[mask], ours[mask], atol=1e-5)
    assert torch.allclose(unpadded[0], hidden(model, tokens(tokenizer, CAPTIONS[:1])["input_ids"])[0], atol=1e-5)


def test_llm_saved_on_its_own_reloads_bidirectional_in_stock_class(model, tokenizer, tmp_path):
    model.llm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["is_causal"] is False
    stock = AutoModel.from_pretrained(tmp_path).eval()
    assert type(stock) is LlamaModel
    ids = tokens(tokenizer, CAPTIONS[:1])["input_ids"]
    with torch.no_grad():
        assert torch.allclose(stock(input_ids=ids).last_hidden_state, hidden(model, ids), atol=1e-5)


def test_remote_code_llm_is_refused(tokenizer, tmp_path):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in tiny_llm(64).items() if k != "model_type"}))
    llama.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_llama_encoder.LlamaEncoderModel"}  # like LLM2Vec checkpoints
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="own modeling code"):
        XrayLLM2CLIPTextModel.from_llm(tmp_path)


def test_unsupported_attention_implementation_is_refused(tokenizer):
    config = XrayLLM2CLIPTextConfig(llm_config=tiny_llm(len(tokenizer)))
    config.llm_config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="not supported for bidirectional"):
        XrayLLM2CLIPTextModel(config)


@pytest.mark.parametrize("model_type", BIDIRECTIONAL_LLM_TYPES)
def test_every_supported_llm_type_is_bidirectional(model_type):
    torch.manual_seed(0)
    config = XrayLLM2CLIPTextConfig(llm_config=tiny_llm(64, model_type), projection_dim=8)
    model = XrayLLM2CLIPTextModel(config).eval()
    ids = torch.randint(3, 64, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 64
    assert (hidden(model, ids)[0, 0] - hidden(model, changed)[0, 0]).abs().max() > 1e-4


# -- building from a plain LLM checkpoint --


def test_from_llm_loads_the_llm_weights(tmp_path):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in tiny_llm(64).items() if k != "model_type"}))
    llama.save_pretrained(tmp_path)
    model = XrayLLM2CLIPTextModel.from_llm(tmp_path, projection_dim=8)
    for name, tensor in llama.model.state_dict().items():
        assert torch.equal(model.llm.state_dict()[name], tensor)
    assert model.config.llm_config.is_causal is False and model.config.projection_dim == 8
    model.save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="already an xray_hf checkpoint"):
        XrayLLM2CLIPTextModel.from_llm(tmp_path / "ours")


def test_mntp_from_untied_llm_keeps_its_lm_head(tmp_path):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**{**{k: v for k, v in tiny_llm(64).items() if k != "model_type"},
                                            "tie_word_embeddings": False}))
    llama.save_pretrained(tmp_path)
    mntp = XrayLLM2CLIPTextForMNTP.from_llm(tmp_path)
    assert torch.equal(mntp.lm_head.weight, llama.lm_head.weight)
    assert torch.equal(mntp.llm.get_input_embeddings().weight, llama.model.embed_tokens.weight)


def test_text_tower_carries_the_untied_head_frozen_and_unused(tmp_path):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**{**{k: v for k, v in tiny_llm(64).items() if k != "model_type"},
                                            "tie_word_embeddings": False}))
    llama.save_pretrained(tmp_path / "llm")
    text = XrayLLM2CLIPTextModel.from_llm(tmp_path / "llm", projection_dim=8, freeze_llm=False)
    assert torch.equal(text.lm_head.weight, llama.lm_head.weight)
    assert not text.lm_head.weight.requires_grad  # never trains in the text tower, frozen LLM or not
    ids = torch.randint(3, 64, (2, 5))
    text(input_ids=ids).text_embeds.sum().backward()
    assert text.lm_head.weight.grad is None
    text.save_pretrained(tmp_path / "text")
    loaded, info = XrayLLM2CLIPTextModel.from_pretrained(tmp_path / "text", output_loading_info=True)
    assert not info["missing_keys"] and torch.equal(loaded.lm_head.weight, llama.lm_head.weight)


def test_untied_llm_without_its_head_gives_no_random_head(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(**{**{k: v for k, v in tiny_llm(64).items() if k != "model_type"},
                            "tie_word_embeddings": False})
    LlamaModel(config).save_pretrained(tmp_path / "llm")  # the base model only: no lm_head.weight
    text = XrayLLM2CLIPTextModel.from_llm(tmp_path / "llm", projection_dim=8)
    assert text.lm_head is None  # not needed by the text tower; a random one is never kept
    with pytest.raises(ValueError, match="no LM head"):
        XrayLLM2CLIPTextForMNTP.from_llm(tmp_path / "llm")
    text.save_pretrained(tmp_path / "text")
    assert XrayLLM2CLIPTextModel.from_pretrained(tmp_path / "text").lm_head is None
    with pytest.raises(ValueError, match="no LM head"):
        XrayLLM2CLIPTextForMNTP.from_pretrained(tmp_path / "text")


# -- bad input --


def test_bad_input_raises(model, tokenizer):
    batch = tokens(tokenizer, CAPTIONS[:2])
    with pytest.raises(ValueError, match="exactly one"):
        model(**batch, llm_pooled_output=torch.zeros(2, 32))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="shape"):
        model(llm_pooled_output=torch.zeros(2, 31))
    with pytest.raises(ValueError, match="at least one token"):
        model(input_ids=batch["input_ids"], attention_mask=torch.zeros_like(batch["attention_mask"]))
    with pytest.raises(ValueError, match="differs"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"][:, :-1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"] * 2)
    with pytest.raises(ValueError, match="batch, sequence"):
        model(input_ids=batch["input_ids"][0])


# -- the MNTP head --


def test_mntp_loss_is_shifted_cross_entropy(tokenizer):
    torch.manual_seed(0)
    config = XrayLLM2CLIPTextConfig(llm_config=tiny_llm(len(tokenizer)))
    mntp = XrayLLM2CLIPTextForMNTP(config).eval()
    assert mntp.lm_head is None  # tied: the input embeddings are the head
    batch = tokens(tokenizer, CAPTIONS[:2])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 1:3] = batch["input_ids"][:, 1:3]
    out = mntp(**batch, labels=labels)
    full = mntp(**batch).logits  # (B, L, V)
    reference = F.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), labels[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, reference, atol=1e-5)
    assert out.logits.shape == (4, len(tokenizer))
    with pytest.raises(ValueError, match="no token to predict"):
        mntp(**batch, labels=torch.full_like(labels, -100))


def test_gradient_checkpointing_recomputes_every_layer_and_keeps_gradients(tokenizer):
    model = build(len(tokenizer), freeze_llm=False).train()
    model.llm.get_input_embeddings().weight.requires_grad_(False)  # as with LoRA: the layers' input needs no grad
    batch = tokens(tokenizer, CAPTIONS)
    # counts the runs of each layer's first module (a pre-hook: the layer's own hooks stay outside the checkpoint,
    # and the non-reentrant recomputation stops, before the layer's end, once it has what backward needs)
    calls = [0] * len(model.llm.layers)
    for i, layer in enumerate(model.llm.layers):
        layer.input_layernorm.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))

    def gradients():
        model.zero_grad()
        calls[:] = [0] * len(calls)
        model(**batch).text_embeds.square().sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    reference = gradients()
    assert not model.is_activation_checkpointing and calls == [1, 1]
    # what Trainer(args.activation_checkpointing=True) calls
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=None, every_n_layers=1, offload=False)
    assert model.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.llm.layers)
    assert all(layer._gradient_checkpointing_func.keywords["use_reentrant"] is False for layer in model.llm.layers)
    checkpointed = gradients()
    assert calls == [2, 2]  # each layer ran again in the backward pass: its activations were not kept
    assert checkpointed.keys() == reference.keys() and "llm.layers.0.mlp.up_proj.weight" in reference
    for name, grad in reference.items():
        assert torch.allclose(checkpointed[name], grad, rtol=1e-5, atol=1e-7), name
    # user kwargs keep non-reentrant checkpointing unless they ask otherwise
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    gradients()
    assert calls == [1, 1]
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"preserve_rng_state": False})
    assert all(layer._gradient_checkpointing_func.keywords == {"use_reentrant": False, "preserve_rng_state": False}
               for layer in model.llm.layers)
    gradients()
    assert calls == [2, 2]


def test_bf16_matches_fp32_within_tolerance(tokenizer):
    fp32 = build(len(tokenizer))
    bf16 = build(len(tokenizer)).to(torch.bfloat16)  # the same weights, rounded to bf16
    batch = tokens(tokenizer, CAPTIONS)
    with torch.no_grad():
        ref, out = fp32(**batch), bf16(**batch)
    assert out.text_embeds.dtype == torch.float32 and out.pooler_output.dtype == torch.float32
    for name in ("pooler_output", "text_embeds"):
        # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%) per operation; through 2 LLM layers,
        # pooling and 4 adapter blocks the error stays within 2% of each embedding's norm (seen: 0.4-1.1%)
        ours, theirs = getattr(out, name), getattr(ref, name)
        relative = (ours - theirs).norm(dim=-1) / theirs.norm(dim=-1)
        assert relative.max() < 0.02, (name, relative)
        assert F.cosine_similarity(ours, theirs, dim=-1).min() > 0.9998, name
