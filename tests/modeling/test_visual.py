import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import xray_hf  # noqa: F401
from xray_hf import XrayVisualConfig, XrayVisualModel
from xray_hf.modeling import token_reduction, visual
from xray_hf.modeling.token_reduction import evit_num_kept, evit_token_count, tome_num_merged
from xray_hf.modeling.visual import XrayVisualAttention, resize_position_table


def tiny(**overrides) -> XrayVisualConfig:
    return XrayVisualConfig.from_preset("tiny", **overrides)


def build(seed: int = 0, **overrides) -> XrayVisualModel:
    torch.manual_seed(seed)
    return XrayVisualModel(tiny(**overrides)).eval()


def trained_looking(seed: int = 0, scale: float = 8.0, **overrides) -> XrayVisualModel:
    """A tiny model whose weights are scaled up so attention is peaked, as after training (random init is near uniform)."""
    model = build(seed, **overrides)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1 or "token" in name or "position" in name:
                param.mul_(scale)
    return model


@pytest.fixture(scope="module")
def model():
    return build()


def test_image_shapes(model):
    out = model(torch.randn(2, 3, 32, 32))
    assert out.last_hidden_state.shape == (2, 1 + 16, 64)
    assert out.pooler_output.shape == (2, 64)
    assert out.register_tokens.shape == (2, 2, 64)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])


def test_video_and_rectangle_shapes(model):
    out = model(torch.randn(2, 4, 3, 32, 48))  # 2 tubelets x 4 x 6 patches
    assert out.last_hidden_state.shape == (2, 1 + 2 * 4 * 6, 64)
    out = model(torch.randn(1, 8, 3, 64, 24))  # any frame count divisible by the tubelet, any rectangle
    assert out.last_hidden_state.shape == (1, 1 + 4 * 8 * 3, 64)


def test_no_registers():
    out = build(num_register_tokens=0)(torch.randn(1, 3, 32, 32))
    assert out.register_tokens is None and out.last_hidden_state.shape == (1, 17, 64)


def test_registers_are_independent_of_the_input_and_removed_from_patches(model):
    out = model(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    embeddings = out.hidden_states[0]
    assert embeddings.shape[1] == 1 + 2 + 16
    assert torch.equal(embeddings[0, 1:3], model.embeddings.register_tokens[0])
    final = model.layernorm(out.hidden_states[-1])
    assert torch.allclose(out.register_tokens, final[:, 1:3])
    assert torch.allclose(out.last_hidden_state[:, 1:], final[:, 3:])


def test_image_equals_video_of_repeated_frames(model):
    image = torch.randn(2, 3, 32, 32)
    as_video = image[:, None].expand(-1, model.config.tubelet_size, -1, -1, -1)
    a, b = model(image).last_hidden_state, model(as_video).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)


def test_patch_embedding_equals_conv3d_reference(model):
    video = torch.randn(2, 4, 3, 32, 32)
    tokens, grid = model.embeddings.patch_embeddings(video)
    reference = model.embeddings.patch_embeddings.projection(video.transpose(1, 2)).flatten(2).transpose(1, 2)
    assert grid == (2, 4, 4) and torch.allclose(tokens, reference, atol=1e-6)


def test_position_interpolation_is_identity_at_native_size_and_fp32():
    table = torch.randn(1, 7, 16, dtype=torch.bfloat16)
    assert resize_position_table(table, 7, "bicubic") is table
    resized = resize_position_table(table, 11, "bicubic")
    assert resized.shape == (1, 11, 16) and resized.dtype == torch.bfloat16
    time_table = torch.randn(1, 4, 16)
    assert torch.equal(resize_position_table(time_table, 1, "linear")[0, 0], time_table[0, 0])
    stretched = resize_position_table(time_table, 7, "linear")  # align_corners: endpoints and midpoints exact
    assert torch.allclose(stretched[0, ::2], time_table[0], atol=1e-6)


def test_native_position_embeddings_are_the_factorised_sum(model):
    emb = model.embeddings
    pos = emb.position_embeddings(model.config.grid_size)
    t, h, w = model.config.grid_size
    manual = (emb.position_embeddings_time[0, 1] + emb.position_embeddings_height[0, 2]
              + emb.position_embeddings_width[0, 3])
    assert torch.allclose(pos[0, 1 * h * w + 2 * w + 3], manual)


def test_non_native_rectangle_interpolates_each_axis(model):
    out = model(torch.randn(1, 3, 48, 40))
    assert out.last_hidden_state.shape == (1, 1 + 6 * 5, 64) and torch.isfinite(out.last_hidden_state).all()
    emb = model.embeddings
    pos = emb.position_embeddings((1, 6, 5)).reshape(6, 5, -1)
    heights = resize_position_table(emb.position_embeddings_height, 6, "bicubic")[0]
    widths = resize_position_table(emb.position_embeddings_width, 5, "bicubic")[0]
    assert torch.allclose(pos[4, 2], emb.position_embeddings_time[0, 0] + heights[4] + widths[2], atol=1e-6)


def test_save_pretrained_and_auto_model_give_identical_outputs(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is XrayVisualModel
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x).last_hidden_state, loaded(x).last_hidden_state)
    video = torch.randn(1, 4, 3, 32, 32)
    assert torch.equal(model(video).pooler_output, loaded(video).pooler_output)


def test_return_dict_false_gives_tuple(model):
    out = model(torch.randn(1, 3, 32, 32), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 17, 64)


# --- attention -----------------------------------------------------------------------------------


def reference_attention(module: XrayVisualAttention, x: torch.Tensor, bias: torch.Tensor | None = None):
    """Plain softmax attention, written out."""
    b, n, d = x.shape
    q, k, v = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) / module.head_dim**0.5
    if bias is not None:
        logits = logits + bias
    probs = logits.softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, d)
    return module.proj(out), probs


@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_attention_equals_softmax_reference(model, with_bias):
    attention = model.encoder.layer[0].attention
    x = torch.randn(2, 10, 64)
    bias = torch.randn(2, 1, 1, 10) if with_bias else None
    out, cls_attention, metric = attention(x, attn_bias=bias, return_cls_attention=True, return_metric=True)
    expected, probs = reference_attention(attention, x, bias)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(cls_attention, probs[:, :, 0].mean(1), atol=1e-6)
    assert metric.shape == (2, 10, 16)


# --- EViT ----------------------------------------------------------------------------------------


def test_keep_rate_one_equals_dense_exactly():
    dense = build(seed=3)
    evit = build(seed=3, evit_layers=[1, 2], keep_rate=1.0)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(dense(x).last_hidden_state, evit(x).last_hidden_state)
    assert evit(x).token_sizes is None


def test_evit_token_counts_per_layer():
    model = build(evit_layers=[1, 3], keep_rate=[0.5, 0.7])
    out = model(torch.randn(2, 4, 3, 32, 32), output_hidden_states=True)
    counts = [h.shape[1] - 3 for h in out.hidden_states]
    assert counts == [32, 32, 17, 17, 13]  # ceil(0.5*32)+1 = 17; ceil(0.7*17)+1 = 13
    assert counts[2] == evit_token_count(32, 0.5) and counts[4] == evit_token_count(17, 0.7)
    assert out.last_hidden_state.shape == (2, 1 + 13, 64)
    assert out.token_sizes is None  # EViT alone does not re-weight attention by size


def test_unsorted_evit_layers_prune_with_their_own_keep_rates(tmp_path):
    x = torch.randn(2, 4, 3, 32, 32)
    model = build(seed=1, evit_layers=[3, 1], keep_rate=[0.7, 0.5])
    out = model(x, output_hidden_states=True)
    assert [h.shape[1] - 3 for h in out.hidden_states] == [32, 32, 17, 17, 13]  # 0.5 at layer 1, 0.7 at layer 3
    model.save_pretrained(tmp_path)
    loaded = XrayVisualModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(x).last_hidden_state, out.last_hidden_state)
    # the same pairs as overrides when loading a dense checkpoint
    build(seed=1).save_pretrained(tmp_path / "dense")
    overridden = XrayVisualModel.from_pretrained(tmp_path / "dense", evit_layers=[3, 1], keep_rate=[0.7, 0.5]).eval()
    assert torch.equal(overridden(x).last_hidden_state, out.last_hidden_state)


def test_evit_with_tome_tracks_sizes():
    model = build(evit_layers=[1], keep_rate=0.5, tome_r=2)
    out = model(torch.randn(2, 4, 3, 32, 32), output_hidden_states=True)
    counts = [h.shape[1] - 3 for h in out.hidden_states[1:]]
    assert counts == [30, 16, 14, 12]  # ToMe, then EViT ceil(0.5*30)+1 (no ToMe there), ToMe, ToMe
    # Sizes count ToMe merges only: EViT's fused token is a new token of size 1, and ToMe keeps the total.
    model = build(evit_layers=[0], keep_rate=0.5, tome_r=2)
    out = model(torch.randn(2, 4, 3, 32, 32))
    assert out.token_sizes.shape == (2, 17 - 3 * 2)
    assert torch.equal(out.token_sizes.sum(1), torch.full((2,), 17.0))


def test_evit_keeps_highest_attention_tokens_and_fuses_the_rest():
    from xray_hf.modeling.token_reduction import evit_reorganize

    hidden = torch.randn(1, 2 + 5, 4)
    attention = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])
    sizes = torch.tensor([1.0, 1.0, 2.0, 3.0, 1.0, 4.0, 1.0]).reshape(1, 7, 1)  # e.g. after ToMe merges
    out, sizes = evit_reorganize(hidden, attention, num_prefix_tokens=2, keep_rate=0.4, sizes=sizes)
    tokens = hidden[0, 2:]
    assert torch.equal(out[0, :2], hidden[0, :2])  # CLS and register untouched
    assert torch.equal(out[0, 2], tokens[1]) and torch.equal(out[0, 3], tokens[3])
    fused = 0.1 * tokens[0] + 0.05 * tokens[2] + 0.15 * tokens[4]
    assert torch.allclose(out[0, 4], fused)
    assert sizes[0, :, 0].tolist() == [1, 1, 3, 4, 1]  # kept tokens keep their sizes, the fused one is new: 1


def test_evit_keeps_the_top_k_by_cls_attention_at_its_layer_and_never_prunes_the_prefix():
    evit_model = trained_looking(seed=6, evit_layers=[1], keep_rate=0.25)
    dense_model = trained_looking(seed=6)
    x = torch.randn(2, 4, 3, 32, 32)
    evit = evit_model(x, output_hidden_states=True).hidden_states[2]
    dense_states = dense_model(x, output_hidden_states=True).hidden_states
    before, dense = dense_states[1], dense_states[2]  # input and output of layer 1 in the dense model
    assert evit.shape[1] == 3 + 8 + 1
    # CLS and registers come through the EViT layer exactly as through the dense one
    assert torch.allclose(evit[:, :3], dense[:, :3], atol=1e-5)
    # the kept tokens are the dense layer's patch tokens with the 8 highest CLS attentions, highest first
    layer = dense_model.encoder.layer[1]
    attn_out, cls_attention, _ = layer.attention(layer.norm1(before), return_cls_attention=True)
    cls_attention = cls_attention[:, 3:]
    top = cls_attention.argsort(dim=1, descending=True)
    kept, fused = top[:, :8], top[:, 8:]
    assert torch.allclose(evit[:, 3:11], dense[:, 3:].gather(1, kept[..., None].expand(-1, -1, 64)), atol=1e-5)
    # the fused token is the attention-weighted sum of the others (after attention), then the MLP
    mid = (before + attn_out)[:, 3:]
    weights = cls_attention.gather(1, fused)[..., None]
    fused_token = (mid.gather(1, fused[..., None].expand(-1, -1, 64)) * weights).sum(1)
    fused_token = fused_token + layer.mlp(layer.norm2(fused_token))
    assert torch.allclose(evit[:, 11], fused_token, atol=1e-4)


# --- ToMe ----------------------------------------------------------------------------------------


def test_tome_r_zero_equals_dense_and_tome_is_inference_only_by_default():
    dense = build(seed=4)
    tome0 = build(seed=4, tome_r=0)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(dense(x).last_hidden_state, tome0(x).last_hidden_state)
    tome = build(seed=4, tome_r=2)
    assert tome(x).last_hidden_state.shape[1] == 1 + 16 - 4 * 2
    tome.train()
    assert tome(x).last_hidden_state.shape[1] == 1 + 16
    tome.config.tome_in_training = True
    assert tome(x).last_hidden_state.shape[1] == 1 + 16 - 4 * 2


def test_tome_token_counts_and_sizes():
    model = build(tome_r=3)
    out = model(torch.randn(2, 4, 3, 32, 32), output_hidden_states=True)
    counts, expected, tokens = [h.shape[1] - 3 for h in out.hidden_states[1:]], [], 32
    for _ in range(4):
        tokens -= tome_num_merged(tokens, 3)
        expected.append(tokens)
    assert counts == expected == [29, 26, 23, 20]
    assert torch.allclose(out.token_sizes.sum(1), torch.full((2,), 32.0))


def test_tome_merge_is_size_weighted_and_protects_prefix():
    from xray_hf.modeling.token_reduction import tome_merge

    torch.manual_seed(0)
    hidden = torch.randn(2, 1 + 8, 6)
    sizes = torch.randint(1, 4, (2, 9, 1)).float()
    merged, new_sizes = tome_merge(hidden, torch.randn(2, 9, 5), num_prefix_tokens=1, r=3, sizes=sizes)
    assert merged.shape == (2, 1 + 5, 6) and torch.equal(merged[:, 0], hidden[:, 0])
    # Size-weighted merging preserves the total mass and the size-weighted sum of the tokens.
    assert torch.allclose(new_sizes.sum(1), sizes.sum(1))
    assert torch.allclose((merged * new_sizes).sum(1), (hidden * sizes).sum(1), atol=1e-5)


def test_tome_merges_identical_tokens_first():
    from xray_hf.modeling.token_reduction import tome_merge

    tokens = torch.randn(1, 6, 3)
    tokens[0, 2] = tokens[0, 1]  # even index 2 (src) duplicates odd index 1 (dst)
    hidden = torch.cat([torch.zeros(1, 1, 3), tokens], dim=1)
    merged, sizes = tome_merge(hidden, hidden, num_prefix_tokens=1, r=1)
    assert merged.shape[1] == 6 and sizes.max() == 2
    assert torch.allclose(merged[0, 1:][sizes[0, 1:, 0] == 2][0], tokens[0, 1])


def test_switching_tome_on_without_a_merge_leaves_an_evit_model_unchanged(monkeypatch):
    # The paper's deployment: EViT in training, ToMe turned on for serving. EViT's fused token is a new
    # token of size 1, so tracking sizes for ToMe must not give it an attention bias it never had.
    model = trained_looking(seed=7, evit_layers=[1], keep_rate=0.5, pooling="mean")
    x = torch.randn(2, 4, 3, 32, 32)
    reference = model(x)
    monkeypatch.setattr(token_reduction, "tome_num_merged", lambda num_tokens, r: 0)
    model.config.tome_r = 1  # ToMe on (sizes tracked), but nothing merges
    out = model(x)
    assert out.last_hidden_state.shape == reference.last_hidden_state.shape
    assert torch.allclose(out.last_hidden_state, reference.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.pooler_output, reference.pooler_output, atol=1e-5)
    assert torch.equal(out.token_sizes, torch.ones_like(out.token_sizes))


# --- pooling, training ---------------------------------------------------------------------------


def test_mean_and_attention_pooling():
    x = torch.randn(2, 3, 32, 32)
    mean_model = build(pooling="mean")
    out = mean_model(x)
    assert torch.allclose(out.pooler_output, out.last_hidden_state[:, 1:].mean(1), atol=1e-6)
    attention_model = build(pooling="attention")
    assert attention_model(x).pooler_output.shape == (2, 64)
    assert "attention_pooling.query" in dict(attention_model.named_parameters())


def reference_attention_pooling(pool, tokens: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """One learned query, head by head: softmax(k . q / sqrt(d) + log size) over the tokens, then the projection."""
    width = tokens.shape[-1]
    head_dim = width // pool.num_heads
    key, value = pool.kv(tokens).split(width, dim=-1)
    heads = []
    for h in range(pool.num_heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        logits = key[..., part] @ pool.query[0, 0, part] / head_dim**0.5  # (B, N)
        if sizes is not None:
            logits = logits + sizes.log()
        heads.append((logits.softmax(dim=-1)[..., None] * value[..., part]).sum(dim=1))
    return pool.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("tome_r", [0, 3])
def test_attention_pooling_equals_a_written_out_reference(tome_r):
    model = trained_looking(seed=8, pooling="attention", tome_r=tome_r)
    out = model(torch.randn(2, 4, 3, 32, 32))
    tokens = out.last_hidden_state  # CLS and patch tokens after the final norm; registers are not pooled
    sizes = None if tome_r == 0 else torch.cat([torch.ones(2, 1), out.token_sizes], dim=1)
    if tome_r:
        assert out.token_sizes.max() > 1
    expected = reference_attention_pooling(model.attention_pooling, tokens, sizes)
    assert torch.allclose(out.pooler_output, expected, atol=1e-5)
    uniform = model.attention_pooling.proj(model.attention_pooling.kv(tokens)[..., 64:].mean(1))
    assert not torch.allclose(out.pooler_output, uniform, atol=1e-2)  # the query's weights matter here


def test_mean_pooling_is_size_weighted_under_tome():
    model = build(pooling="mean", tome_r=3)
    out = model(torch.randn(2, 3, 32, 32))
    w = out.token_sizes[..., None]
    assert torch.allclose(out.pooler_output, (out.last_hidden_state[:, 1:] * w).sum(1) / w.sum(1), atol=1e-6)


def test_gradient_checkpointing_gives_equal_gradients():
    x = torch.randn(2, 4, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = build(seed=5, evit_layers=[2], keep_rate=0.5, drop_path_rate=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # transformers 5: non-reentrant by default
            assert model.encoder.layer[0].gradient_checkpointing
        model(x).pooler_output.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_every_parameter_receives_a_gradient():
    model = build(pooling="attention").train()
    model(torch.randn(2, 3, 32, 32)).pooler_output.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == [], missing


def record_choices(monkeypatch) -> list[torch.Tensor]:
    """Record, per call, which tokens EViT keeps and which tokens ToMe merges (one row per sample)."""
    choices = []
    evit_reorganize, tome_merge = visual.evit_reorganize, visual.tome_merge

    def evit(hidden_states, cls_attention, num_prefix_tokens, keep_rate, sizes=None):
        kept = evit_num_kept(cls_attention.shape[1], keep_rate)
        choices.append(cls_attention.argsort(dim=1, descending=True)[:, :kept].sort(dim=1).values)
        return evit_reorganize(hidden_states, cls_attention, num_prefix_tokens, keep_rate, sizes)

    def tome(hidden_states, metric, num_prefix_tokens, r, sizes=None):
        batch, total = hidden_states.shape[:2]
        identity = torch.eye(total).expand(batch, -1, -1)  # merged rows show which tokens were merged
        members, _ = tome_merge(identity, metric, num_prefix_tokens, r, sizes)
        choices.append((members > 0).flatten(1))
        return tome_merge(hidden_states, metric, num_prefix_tokens, r, sizes)

    monkeypatch.setattr(visual, "evit_reorganize", evit)
    monkeypatch.setattr(visual, "tome_merge", tome)
    return choices


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize(
    "reduction",
    [{}, dict(evit_layers=[1, 2], keep_rate=0.5), dict(tome_r=3), dict(evit_layers=[1], keep_rate=0.5, tome_r=2)],
    ids=["dense", "evit", "tome", "evit+tome"],
)
def test_bf16_stays_close_to_fp32_and_only_flipped_choices_move_more(monkeypatch, reduction, pooling):
    model = trained_looking(seed=2, pooling=pooling, **reduction)
    x = torch.randn(16, 3, 32, 32)
    choices = record_choices(monkeypatch)
    with torch.no_grad():
        reference = model(x).pooler_output
        fp32_choices = list(choices)
        choices.clear()
        low = model.to(torch.bfloat16)(x.bfloat16()).pooler_output
    assert low.dtype == torch.bfloat16 and len(choices) == len(fp32_choices)
    low = low.float()
    same = torch.ones(len(x), dtype=torch.bool)
    for a, b in zip(fp32_choices, choices):
        same &= (a == b).all(dim=1)
    relative = (low - reference).norm(dim=-1) / reference.norm(dim=-1)
    # Where bf16 makes the same choices as fp32, it is as close as the dense model (measured: <= 2%).
    assert same.any() and relative[same].max() < 0.04, relative
    # A flipped near tie keeps or merges another token, so the output moves more (measured: up to 60% relative
    # on this tiny model), yet each embedding stays nearest to its own fp32 embedding.
    similarity = F.normalize(low, dim=-1) @ F.normalize(reference, dim=-1).T
    assert torch.equal(similarity.argmax(dim=1), torch.arange(len(x)))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(2, 1, 32, 32), "1 channels but the model expects 3"),
        (torch.randn(2, 3, 3, 32, 32), "3 frames, not divisible by the tubelet size 2"),
        (torch.randn(2, 3, 30, 32), "30x32 is not divisible by the patch size 8"),
        (torch.randn(3, 32, 32), "got shape"),
        (torch.randint(0, 255, (1, 3, 32, 32)), "floating point"),
        (torch.randn(1, 4, 32, 32, 3), "32 channels"),
    ],
)
def test_bad_input_raises_clear_error(model, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


def test_non_tensor_input_raises(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])


class _CudaAutocastSum(torch.overrides.TorchFunctionMode):
    """CUDA autocast's policy for `sum` (fp32 output), which CPU autocast does not apply."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.sum, torch.Tensor.sum) and isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out


def test_evit_fused_token_keeps_the_stream_dtype_under_an_fp32_sum():
    hidden = torch.randn(2, 1 + 16, 8, dtype=torch.bfloat16)
    attention = torch.rand(2, 16)
    with _CudaAutocastSum():
        out, _ = token_reduction.evit_reorganize(hidden, attention, num_prefix_tokens=1, keep_rate=0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1 + 8 + 1, 8)
