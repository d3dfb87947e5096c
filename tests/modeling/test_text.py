import pytest
import torch
from transformers import AutoModel

import xray_hf  # noqa: F401
from xray_hf import XrayTextConfig, XrayTextModel
from xray_hf.convert import smollm2_tokenizer

CAPTIONS = ["a photo of a cat sleeping on a red sofa", "two dogs", "a bowl of soup with bread on the side"]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def build(tokenizer, seed: int = 0, **overrides) -> XrayTextModel:
    torch.manual_seed(seed)
    config = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=16, **overrides)
    return XrayTextModel(config).eval()


def tokens(tokenizer, texts, side="right"):
    return tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")


def test_shapes(tokenizer):
    model = build(tokenizer)
    batch = tokens(tokenizer, CAPTIONS)
    out = model(**batch)
    assert out.text_embeds.shape == (3, 16) and out.text_embeds.dtype == torch.float32
    assert out.pooler_output.shape == (3, 64)
    assert out.last_hidden_state.shape == (3, batch["input_ids"].shape[1], 64)
    assert torch.equal(model.get_text_features(**batch).pooler_output, out.text_embeds)


def test_attention_is_causal_and_eos_pooling_reads_the_last_real_token(tokenizer):
    model = build(tokenizer)
    ids = tokens(tokenizer, CAPTIONS[:1])["input_ids"]
    changed = ids.clone()
    changed[0, -1] += 1
    with torch.no_grad():
        a, b = model(input_ids=ids), model(input_ids=changed)
    assert torch.allclose(a.last_hidden_state[0, :-1], b.last_hidden_state[0, :-1], atol=1e-6)
    assert torch.equal(a.pooler_output[0], a.last_hidden_state[0, -1])
    assert not torch.allclose(a.pooler_output, b.pooler_output)


@pytest.mark.parametrize("pooling", ["eos", "mean"])
def test_padding_side_and_pad_tokens_do_not_change_embeddings(tokenizer, pooling):
    model = build(tokenizer, pooling=pooling)
    single = torch.cat([model.get_text_features(**tokens(tokenizer, [text])).pooler_output for text in CAPTIONS])
    right, left = tokens(tokenizer, CAPTIONS, "right"), tokens(tokenizer, CAPTIONS, "left")
    noisy = right["input_ids"].masked_fill(right["attention_mask"] == 0, 777)
    for batch in (right, left, {"input_ids": noisy, "attention_mask": right["attention_mask"]}):
        assert torch.allclose(model.get_text_features(**batch).pooler_output, single, atol=1e-5)


def test_trains(tokenizer):
    model = build(tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tokens(tokenizer, CAPTIONS)
    target = torch.eye(3, 16)
    losses = []
    for _ in range(10):
        loss = (model(**batch).text_embeds - target).square().mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


def test_save_and_auto_load(tokenizer, tmp_path):
    model = build(tokenizer)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, XrayTextModel)
    batch = tokens(tokenizer, CAPTIONS)
    assert torch.equal(loaded.get_text_features(**batch).pooler_output, model.get_text_features(**batch).pooler_output)


def test_bad_input_raises(tokenizer):
    model = build(tokenizer, max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token"):
        model(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.zeros(2, 4, dtype=torch.long))


def test_trainer_style_activation_checkpointing_keeps_gradients(tokenizer):
    # the Trainer calls activation_checkpointing_enable(every_n_layers=..., offload=...): this raised TypeError
    batch = tokens(tokenizer, CAPTIONS)

    def gradients(model):
        model.zero_grad()
        model(**batch).text_embeds.square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = build(tokenizer).train()
    reference = gradients(plain)
    checkpointed = build(tokenizer).train()
    checkpointed.activation_checkpointing_enable(every_n_layers=1, offload=False)
    assert checkpointed.is_activation_checkpointing
    layers = [m for m in checkpointed.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)
    for name, grad in gradients(checkpointed).items():
        assert torch.allclose(grad, reference[name], rtol=1e-5, atol=1e-7), name
