import math
import multiprocessing
import socket
from types import SimpleNamespace

import numpy as np
import math

import pytest
import torch
import torch.nn.functional as F

from xray_hf.losses import (
    CLIPStageLoss,
    ContrastiveLoss,
    DenoisingLoss,
    DistillationLoss,
    FeatureDistillationLoss,
    RelationalDistillationLoss,
    SiameseCaptionLoss,
    SimilarityDistillationLoss,
    SLIPLoss,
    hashtag_loss,
    masked_patch_loss,
    simcse_loss,
)

TOL = 1e-6


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# -- independent references, written from the papers' pseudo-code --


def _reference_clip_loss(image, text, scale, smoothing=0.0, keep=None):
    """CLIP's pseudo-code: logits = I_e @ T_e.T * exp(t); loss = (CE over axis 0 + CE over axis 1) / 2, with
    label smoothing over the kept columns and an optional (rows, cols) `keep` mask, row by row."""
    logits = image @ text.T * scale

    def rows_ce(matrix, keep):
        losses = []
        for i in range(matrix.shape[0]):
            cols = [j for j in range(matrix.shape[1]) if keep is None or keep[i][j]]
            row = matrix[i, cols]
            log_probs = row - torch.logsumexp(row, dim=0)
            nll = -log_probs[cols.index(i)]
            losses.append((1 - smoothing) * nll - smoothing * log_probs.mean())
        return torch.stack(losses).mean()

    keep_t = None if keep is None else [list(col) for col in zip(*keep)]
    return (rows_ce(logits, keep) + rows_ce(logits.T, keep_t)) / 2


def _reference_nt_xent(z1, z2, temperature):
    """SimCLR (Chen et al. 2020), Algorithm 1: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), averaged
    over both orderings of every positive pair."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = torch.cat([sim[i, :i], sim[i, i + 1:]])
        total = total - (sim[i, j] - torch.logsumexp(others, dim=0))
    return total / (2 * n)


def _gap(got, want):
    """Largest difference over pairs of tensors, relative above 1 (an fp32 ulp of a loss of ~5 is ~5e-7)."""
    return max(float(((g - w).abs() / w.abs().clamp_min(1.0)).max()) for g, w in zip(got, want))


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [leaf.grad for leaf in leaves]


# -- ContrastiveLoss, one process --


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_contrastive_matches_the_clip_reference_values_and_gradients(smoothing):
    image, text, scale = _unit(6, 8, seed=1), _unit(6, 8, seed=2), torch.tensor(1 / 0.07)
    loss_fn = ContrastiveLoss(label_smoothing=smoothing)
    got, got_grads = _grads(loss_fn, image, text, scale)
    want, want_grads = _grads(lambda i, t, s: _reference_clip_loss(i, t, s, smoothing), image, text, scale)
    assert _gap((got, *got_grads), (want, *want_grads)) < TOL


def test_contrastive_matches_open_clip_clip_loss():
    from open_clip.loss import ClipLoss

    image, text, scale, bias = _unit(5, 16, seed=3), _unit(5, 16, seed=4), torch.tensor(20.0), torch.tensor(-1.5)
    for args in [(image, text, scale), (image, text, scale, bias)]:
        got, got_grads = _grads(ContrastiveLoss(), *args)
        want, want_grads = _grads(ClipLoss(), *args)
        assert _gap((got, *got_grads), (want, *want_grads)) < TOL
    assert ContrastiveLoss()(image, text, scale, output_dict=True).keys() == {"contrastive_loss"}


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_contrastive_group_ids_drop_same_item_negatives(smoothing):
    # rows 0, 1 are two captions of one image, rows 3, 4 too: they are neither negatives nor smoothing targets
    image, text, scale = _unit(5, 8, seed=5), _unit(5, 8, seed=6), torch.tensor(10.0)
    groups = torch.tensor([0, 0, 1, 2, 2])
    keep = [[i == j or groups[i] != groups[j] for j in range(5)] for i in range(5)]
    loss_fn = ContrastiveLoss(label_smoothing=smoothing)
    got, got_grads = _grads(lambda *a: loss_fn(*a, group_ids=groups), image, text, scale)
    want, want_grads = _grads(lambda i, t, s: _reference_clip_loss(i, t, s, smoothing, keep), image, text, scale)
    assert torch.isfinite(got) and _gap((got, *got_grads), (want, *want_grads)) < TOL


def test_contrastive_is_fp32_for_bf16_inputs_and_accepts_a_float_scale():
    image, text = _unit(4, 8, seed=7), _unit(4, 8, seed=8)
    loss = ContrastiveLoss()(image.bfloat16(), text.bfloat16(), torch.tensor(14.0, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    assert torch.isclose(ContrastiveLoss()(image, text, 14.0), ContrastiveLoss()(image, text, torch.tensor(14.0)))


def test_contrastive_caches_labels_per_device_size_and_offset():
    loss_fn = ContrastiveLoss()
    first = loss_fn.ground_truth(torch.device("cpu"), 4, 0)
    assert loss_fn.ground_truth(torch.device("cpu"), 4, 0) is first
    assert loss_fn.ground_truth(torch.device("cpu"), 4, 4).tolist() == [4, 5, 6, 7]
    assert loss_fn.ground_truth(torch.device("cpu"), 3, 0) is not first


def test_contrastive_bad_input_raises():
    image, text = _unit(4, 8), _unit(4, 8, seed=1)
    with pytest.raises(ValueError, match="batch, dim"):
        ContrastiveLoss()(image, text[:3], 1.0)
    with pytest.raises(ValueError, match="batch, dim"):
        ContrastiveLoss()(image[0], text[0], 1.0)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        ContrastiveLoss()(image, text, torch.ones(2))
    with pytest.raises(ValueError, match="group_ids"):
        ContrastiveLoss()(image, text, 1.0, group_ids=torch.arange(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        ContrastiveLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="process group"):
        ContrastiveLoss(world_size=2, rank=0)(image, text, 1.0)
    with pytest.raises(ValueError, match="rank"):
        ContrastiveLoss(world_size=2, rank=2)(image, text, 1.0)


# -- SLIP, denoising, siamese, the stage loss --


def test_slip_matches_the_simclr_reference():
    z1, z2 = torch.randn(5, 8, generator=torch.Generator().manual_seed(9)), torch.randn(5, 8)
    got, got_grads = _grads(SLIPLoss(), z1, z2)
    want, want_grads = _grads(lambda a, b: _reference_nt_xent(a, b, 0.1), z1, z2)
    assert _gap((got, *got_grads), (want, *want_grads)) < TOL
    loss = SLIPLoss(temperature=0.5)(z1.bfloat16(), z2.bfloat16(), output_dict=True)
    assert loss.keys() == {"slip_loss"} and loss["slip_loss"].dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        SLIPLoss(temperature=0.0)
    with pytest.raises(ValueError, match="batch, dim"):
        SLIPLoss()(z1, z2[:4])


def test_denoising_is_mse_and_detaches_the_target_by_default():
    denoised, clean = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    loss = DenoisingLoss()(denoised, clean)
    assert torch.isclose(loss, ((denoised - clean) ** 2).sum(-1).mean() / 6)
    loss.backward()
    assert clean.grad is None and torch.allclose(denoised.grad, 2 * (denoised - clean).detach() / 24)
    denoised.grad = None
    DenoisingLoss(detach_target=False)(denoised, clean).backward()
    assert torch.allclose(clean.grad, -denoised.grad)
    # the encoder still learns through the denoiser's input when the target is detached
    embedding = torch.randn(4, 6, requires_grad=True)
    DenoisingLoss()(embedding * 0.5, embedding).backward()
    assert torch.allclose(embedding.grad, 0.5 * 2 * (0.5 - 1.0) * embedding.detach() / 24)
    low = DenoisingLoss()(denoised.bfloat16(), clean.bfloat16(), output_dict=True)
    assert low["denoise_loss"].dtype == torch.float32
    with pytest.raises(ValueError, match="denoised and clean"):
        DenoisingLoss()(denoised, clean[:3])


def test_siamese_is_two_contrastive_terms_and_masks_items_without_hashtags():
    image, text, tags, scale = _unit(6, 8, seed=1), _unit(6, 8, seed=2), _unit(6, 8, seed=3), torch.tensor(12.0)
    mask = torch.tensor([True, False, True, True, False, True])
    terms = SiameseCaptionLoss(hashtag_weight=0.5)(image, text, tags, scale, hashtag_mask=mask, output_dict=True)
    plain = ContrastiveLoss()
    assert torch.isclose(terms["caption_loss"], plain(image, text, scale), atol=TOL)
    assert torch.isclose(terms["hashtag_loss"], 0.5 * plain(image[mask], tags[mask], scale), atol=TOL)
    total = SiameseCaptionLoss()(image, text, tags, scale)
    assert torch.isclose(total, plain(image, text, scale) + plain(image, tags, scale))
    leaf = tags.clone().requires_grad_()
    nobody = torch.zeros(6, dtype=torch.bool)
    none = SiameseCaptionLoss()(image, text, leaf, scale, hashtag_mask=nobody, output_dict=True)
    none["hashtag_loss"].backward()
    assert none["hashtag_loss"] == 0 and torch.all(leaf.grad == 0)
    with pytest.raises(ValueError, match="hashtag_mask"):
        SiameseCaptionLoss()(image, text, tags, scale, hashtag_mask=mask[:4])


def test_siamese_hashtag_term_groups_identical_hashtag_texts_not_captions():
    """Two clips with different captions but the same hashtags ("circle, left"): in the hashtag term they are not
    each other's negatives, so a perfect match has no log-2 floor; the caption term keeps them apart."""
    image = _unit(2, 8, seed=1)
    tags = image.clone()
    tags[1] = tags[0]  # identical hashtag texts embed identically
    images = torch.stack([tags[0], tags[0]])  # both clips match their hashtags perfectly
    captions, hashtag_groups = torch.tensor([1, 2]), torch.tensor([7, 7])
    loss = SiameseCaptionLoss()
    grouped = loss(images, images, tags, 100.0, group_ids=captions, hashtag_group_ids=hashtag_groups,
                   output_dict=True)
    assert grouped["hashtag_loss"] < 1e-3
    by_caption = loss(images, images, tags, 100.0, group_ids=captions, output_dict=True)
    assert by_caption["hashtag_loss"] > math.log(2) - 1e-3  # the old behaviour: each the other's negative
    assert torch.isclose(grouped["caption_loss"], by_caption["caption_loss"])


def test_clip_stage_loss_sums_its_weighted_terms_and_skips_missing_ones():
    image, text, tags, scale = _unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(4, 8, seed=3), torch.tensor(10.0)
    v1, v2, den, clean = (torch.randn(4, 8, generator=torch.Generator().manual_seed(s)) for s in range(4))
    loss_fn = CLIPStageLoss(hashtag_weight=0.5, slip_weight=2.0, lambda_den=3.0)
    out = loss_fn(image_embeds=image, text_embeds=text, logit_scale=scale, hashtag_embeds=tags, slip_embeds_1=v1,
                  slip_embeds_2=v2, denoised_embeds=den, denoise_target=clean)
    assert set(out) == {"contrastive_loss", "hashtag_loss", "slip_loss", "denoise_loss", "loss"}
    assert torch.isclose(out["loss"], sum(v for k, v in out.items() if k.endswith("_loss")))
    assert torch.isclose(out["slip_loss"], 2.0 * SLIPLoss()(v1, v2))
    assert torch.isclose(out["denoise_loss"], 3.0 * F.mse_loss(den, clean))
    assert torch.isclose(out["hashtag_loss"], 0.5 * ContrastiveLoss()(image, tags, scale))
    only = loss_fn(image_embeds=image, text_embeds=text, logit_scale=scale)
    assert set(only) == {"contrastive_loss", "loss"} and only["loss"] == only["contrastive_loss"]
    config = SimpleNamespace(label_smoothing=0.1, hashtag_loss_weight=1.0, slip_weight=0.0, slip_temperature=0.2,
                             lambda_den=1.0)
    from_config = CLIPStageLoss.from_config(config, world_size=1, rank=0)
    assert from_config.slip.temperature == 0.2 and from_config.siamese.contrastive.label_smoothing == 0.1
    assert "slip_loss" not in from_config(image_embeds=image, text_embeds=text, logit_scale=scale, slip_embeds_1=v1,
                                          slip_embeds_2=v2)
    with pytest.raises(ValueError, match="together"):
        loss_fn(image_embeds=image, text_embeds=text, logit_scale=scale, slip_embeds_1=v1)
    with pytest.raises(ValueError, match="together"):
        loss_fn(image_embeds=image, text_embeds=text, logit_scale=scale, denoised_embeds=den)


def test_moved_losses_stay_importable_from_their_modules():
    from xray_hf.modeling import hashtag, mae

    assert mae.masked_patch_loss is masked_patch_loss and hashtag.hashtag_loss is hashtag_loss


# -- 2 processes (gloo): every batch-coupled loss equals the single-process loss on the concatenated batch --

# name -> (kind, loss kwargs, per-rank sizes, extras); gradients are of the global leaves, averaged over ranks (DDP)
CASES = {
    **{f"clip-local{int(local)}-ls{ls}": ("clip", dict(local_loss=local, label_smoothing=ls), [4, 4], {})
       for local in (True, False) for ls in (0.0, 0.1)},
    "clip-uneven": ("clip", dict(), [5, 3], {}),
    "clip-uneven-global": ("clip", dict(local_loss=False), [5, 3], {}),
    "clip-groups-bias": ("clip", dict(label_smoothing=0.1), [4, 4], {"groups": [0, 1, 1, 2, 3, 4, 4, 0], "bias": -2.0}),
    "clip-nograd-global": ("clip", dict(local_loss=False, gather_with_grad=False), [4, 4], {}),
    "clip-nograd-local": ("clip", dict(gather_with_grad=False), [4, 4], {}),
    "slip-local": ("slip", dict(), [4, 4], {}),
    "slip-global": ("slip", dict(local_loss=False), [4, 4], {}),
    "slip-uneven": ("slip", dict(), [2, 6], {}),
    "siamese": ("siamese", dict(), [4, 4], {"mask": [1, 1, 0, 1, 0, 0, 1, 0]}),
    "siamese-empty-rank": ("siamese", dict(), [4, 4], {"mask": [1, 1, 0, 1, 0, 0, 0, 0]}),
    "stage": ("stage", dict(label_smoothing=0.1), [4, 4], {"mask": [1, 1, 1, 1, 0, 1, 1, 1]}),
    "distill": ("distill", dict(contrastive_weight=0.5), [4, 4], {}),
    "distill-uneven-global": ("distill", dict(local_loss=False, temperature=2.0), [5, 3], {}),
    "compression": ("compression", dict(), [4, 4], {}),
    "compression-uneven-global": ("compression", dict(local_loss=False, mse_weight=0.5), [5, 3], {}),
    # the softmax hashtag loss skips samples without hashtags: rank 0 holds 1 labelled sample, rank 1 holds 3
    "hashtag": ("hashtag", dict(label_smoothing=0.1), [4, 4], {"mask": [1, 0, 0, 0, 1, 1, 0, 1]}),
}
FEATURES = {"clip": ("image", "text"), "slip": ("view_1", "view_2"), "siamese": ("image", "text", "tags"),
            "stage": ("image", "text", "tags", "view_1", "view_2", "denoised", "clean"),
            "distill": ("image", "text", "teacher_image", "teacher_text"), "compression": ("compressed", "full"),
            "hashtag": ("logits",)}


def _run_case(name, rank, world_size):
    """This rank's loss and the gradients of the *global* leaves (zero outside this rank's rows)."""
    kind, kwargs, sizes, extras = CASES[name]
    total = sum(sizes)
    start = sum(sizes[:rank]) if world_size > 1 else 0
    stop = start + sizes[rank] if world_size > 1 else total
    generator = torch.Generator().manual_seed(len(name))
    leaves = {k: torch.randn(total, 8, generator=generator).requires_grad_() for k in FEATURES[kind]}
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    local = {k: v[start:stop] for k, v in leaves.items()}
    unit = {k: F.normalize(v, dim=-1) for k, v in local.items()}
    # contrastive cases read rank and world size from torch.distributed at call time, the others are given them
    scale, dist_kwargs = log_scale.exp(), {} if kind == "clip" else dict(rank=rank, world_size=world_size)
    mask = torch.tensor(extras["mask"], dtype=torch.bool)[start:stop] if "mask" in extras else None
    if kind == "clip":
        groups = torch.tensor(extras["groups"])[start:stop] if "groups" in extras else None
        loss = ContrastiveLoss(**kwargs, **dist_kwargs)(unit["image"], unit["text"], scale, extras.get("bias"),
                                                        group_ids=groups)
    elif kind == "slip":
        loss = SLIPLoss(**kwargs, **dist_kwargs)(local["view_1"], local["view_2"])
    elif kind == "siamese":
        loss = SiameseCaptionLoss(**kwargs, **dist_kwargs)(unit["image"], unit["text"], unit["tags"], scale,
                                                           hashtag_mask=mask)
    elif kind == "distill":  # the teacher's features are detached: their gradients stay zero
        loss = DistillationLoss(**kwargs, **dist_kwargs)(
            image_embeds=local["image"], teacher_image_embeds=local["teacher_image"], text_embeds=local["text"],
            logit_scale=scale, teacher_text_embeds=local["teacher_text"], teacher_logit_scale=20.0)["loss"]
    elif kind == "hashtag":
        labels = (torch.rand(total, 8, generator=generator) < 0.4) | (torch.arange(8) == torch.arange(total)[:, None] % 8)
        labels = (labels & torch.tensor(extras["mask"], dtype=torch.bool)[:, None]).float()[start:stop]
        loss = hashtag_loss(local["logits"], labels, "softmax", world_size=world_size, **kwargs)
    elif kind == "compression":  # Matryoshka sizes 8 and 4 of the projection; the full embeddings are detached
        loss = SimilarityDistillationLoss({8: 1.0, 4: 0.5}, **kwargs, **dist_kwargs)(local["compressed"], local["full"])
    else:
        loss = CLIPStageLoss(**kwargs, **dist_kwargs)(
            image_embeds=unit["image"], text_embeds=unit["text"], logit_scale=scale, hashtag_embeds=unit["tags"],
            hashtag_mask=mask, slip_embeds_1=local["view_1"], slip_embeds_2=local["view_2"],
            denoised_embeds=local["denoised"], denoise_target=local["clean"])["loss"]
    loss.backward()
    grads = {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in leaves.items()}  # detached target
    grads["log_scale"] = torch.zeros(()) if log_scale.grad is None else log_scale.grad
    return float(loss.detach()), {k: g.double().numpy() for k, g in grads.items()}


def _rank_losses(rank, port, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results.put((rank, {name: _run_case(name, rank, 2) for name in CASES}))
    except BaseException as error:  # report instead of leaving the parent waiting
        results.put((rank, repr(error)))
        raise
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # not fork: a pytest-xdist worker that ran autograd cannot fork
    results = context.Queue()
    processes = [context.Process(target=_rank_losses, args=(r, port, results)) for r in range(2)]
    for process in processes:
        process.start()
    try:
        by_rank = dict(results.get(timeout=240) for _ in range(2))
        assert all(isinstance(result, dict) for result in by_rank.values()), by_rank
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    return by_rank


def _averaged(by_rank, name):
    (loss_0, grads_0), (loss_1, grads_1) = by_rank[0][name], by_rank[1][name]
    return (loss_0 + loss_1) / 2, {k: (grads_0[k] + grads_1[k]) / 2 for k in grads_0}


def _max_difference(got, want):
    """Largest difference of the loss and every gradient, relative above 1 (losses of ~5-20 and log-scale gradients
    of ~5 differ by an ulp or two of fp32: ~1e-6 absolute; feature gradients stay below ~2e-7 absolute)."""
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    gaps = [abs(got_loss - want_loss) / max(1.0, abs(want_loss))]
    gaps += [float((abs(got_grads[k] - want_grads[k]) / np.maximum(1.0, abs(want_grads[k]))).max()) for k in want_grads]
    return max(gaps)


@pytest.mark.parametrize("name", [n for n in CASES if "nograd" not in n])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_rank_results, name):
    expected = _run_case(name, 0, 1)
    assert _max_difference(_averaged(two_rank_results, name), expected) < TOL
    # every rank computes the same global loss (distillation's per-row feature term stays each rank's share)
    if CASES[name][1].get("local_loss") is False and CASES[name][0] != "distill":
        assert abs(two_rank_results[0][name][0] - two_rank_results[1][name][0]) < TOL


def test_two_ranks_equal_the_clip_reference(two_rank_results):
    for name in ("clip-local1-ls0.0", "clip-local0-ls0.1"):
        _, kwargs, sizes, _ = CASES[name]
        generator = torch.Generator().manual_seed(len(name))
        image, text = (torch.randn(8, 8, generator=generator) for _ in range(2))
        log_scale = torch.tensor(math.log(10.0))
        loss, grads = _grads(
            lambda i, t, s: _reference_clip_loss(F.normalize(i, dim=-1), F.normalize(t, dim=-1), s.exp(),
                                                 kwargs["label_smoothing"]),
            image, text, log_scale)
        reference = (float(loss), {k: g.double().numpy() for k, g in zip(("image", "text", "log_scale"), grads)})
        assert _max_difference(_averaged(two_rank_results, name), reference) < TOL


def test_gathering_without_gradients_is_not_the_global_gradient(two_rank_results):
    # the documented rule: global loss + plain gather -> global gradient / world_size; local loss -> lost terms
    expected_loss, expected_grads = _run_case("clip-nograd-global", 0, 1)
    loss, grads = _averaged(two_rank_results, "clip-nograd-global")
    assert abs(loss - expected_loss) < TOL
    assert all(abs(grads[k] - expected_grads[k] / 2).max() < TOL for k in ("image", "text"))
    expected = _run_case("clip-nograd-local", 0, 1)
    assert _max_difference(_averaged(two_rank_results, "clip-nograd-local"), expected) > 1e-3


# -- SimCSE --


def test_simcse_matches_a_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    sim = F.cosine_similarity(a[:, None], b[None], dim=-1) / 0.05
    expected_ab = -torch.log_softmax(sim, dim=1).diagonal().mean()
    expected_ba = -torch.log_softmax(sim.T, dim=1).diagonal().mean()
    assert torch.allclose(simcse_loss(a, b, symmetric=False), expected_ab, atol=1e-5)
    assert torch.allclose(simcse_loss(a, b), (expected_ab + expected_ba) / 2, atol=1e-5)


def test_simcse_is_low_for_aligned_pairs_and_fp32_for_bf16_inputs():
    torch.manual_seed(0)
    a = torch.randn(6, 16)
    aligned = simcse_loss(a.bfloat16(), (a + 0.01 * torch.randn_like(a)).bfloat16())
    shuffled = simcse_loss(a, a[torch.randperm(6)])
    assert aligned.dtype == torch.float32 and aligned < 0.01 < shuffled


def test_simcse_group_ids_drop_same_item_negatives():
    # rows 0 and 1 are two captions of the same item: row 1's positive must not count as row 0's negative
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = a.clone()
    without = simcse_loss(a, b, temperature=0.1, symmetric=False)
    with_groups = simcse_loss(a, b, temperature=0.1, group_ids=torch.tensor([7, 7, 3]), symmetric=False)
    assert with_groups < without
    assert with_groups < 1e-3


def test_simcse_bad_input_raises():
    with pytest.raises(ValueError, match="batch, dim"):
        simcse_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        simcse_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)
    with pytest.raises(ValueError, match="group_ids"):
        simcse_loss(torch.randn(3, 4), torch.randn(3, 4), group_ids=torch.arange(2))


def test_losses_stay_fp32_inside_a_bf16_autocast_region():
    from xray_hf.losses import CLIPStageLoss

    torch.manual_seed(0)
    image, text, tags = (torch.nn.functional.normalize(torch.randn(6, 16), dim=-1) for _ in range(3))
    views = torch.randn(6, 8), torch.randn(6, 8)
    denoised, target = torch.randn(6, 32), torch.randn(6, 32)
    loss = CLIPStageLoss(label_smoothing=0.1, rank=0, world_size=1)
    kwargs = dict(image_embeds=image, text_embeds=text, logit_scale=torch.tensor(20.0), hashtag_embeds=tags,
                  slip_embeds_1=views[0], slip_embeds_2=views[1], denoised_embeds=denoised, denoise_target=target)
    reference = loss(**kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # matmuls would run in bf16 here (off by ~5e-3)
        inside = loss(**kwargs)
    for key, value in reference.items():
        assert inside[key].dtype == torch.float32 and torch.equal(inside[key], value), key


# -- distillation --
def test_feature_distillation_is_zero_on_the_teacher_and_l2_is_twice_cosine():
    teacher, student = torch.randn(6, 16), torch.randn(6, 16, requires_grad=True)
    cosine, l2 = FeatureDistillationLoss("cosine"), FeatureDistillationLoss("l2")
    assert float(cosine(3.0 * teacher, teacher)) == pytest.approx(0.0, abs=1e-6)  # scale-free: normalised
    want = (1 - F.cosine_similarity(student, teacher)).mean()
    assert torch.allclose(cosine(student, teacher), want, atol=1e-6)
    assert torch.allclose(l2(student, teacher), 2 * want, atol=1e-6)
    teacher.requires_grad_()
    cosine(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None  # the target is detached
    with pytest.raises(ValueError, match="metric"):
        FeatureDistillationLoss("kl")
    with pytest.raises(ValueError, match="batch, dim"):
        cosine(torch.randn(6, 16), torch.randn(6, 8))


def test_relational_distillation_is_open_clip_distill_term_minus_the_teacher_entropy():
    from open_clip.loss import DistillClipLoss

    image, text, t_image, t_text = (F.normalize(torch.randn(8, 12, generator=torch.Generator().manual_seed(i)), dim=-1)
                                    for i in range(4))
    scale, t_scale = torch.tensor(12.0), torch.tensor(30.0)
    ours = RelationalDistillationLoss(rank=0, world_size=1)(image, text, scale, t_image, t_text, t_scale)
    _, theirs = DistillClipLoss()(image, text, scale, t_image, t_text, t_scale)
    t_logits = t_scale * t_image @ t_text.T
    entropy = sum(-(p * p.log()).sum(-1).mean() for p in (t_logits.softmax(-1), t_logits.T.softmax(-1))) / 2
    assert abs(float(ours) - float(theirs - entropy)) < 1e-5
    same = RelationalDistillationLoss(rank=0, world_size=1)(t_image, t_text, t_scale, t_image, t_text, t_scale)
    assert abs(float(same)) < 1e-6  # a student that matches the teacher pays nothing


def test_distillation_loss_weights_terms_and_checks_its_inputs():
    torch.manual_seed(0)
    image, t_image, text = torch.randn(4, 8), torch.randn(4, 8), F.normalize(torch.randn(4, 8), dim=-1)
    loss = DistillationLoss(feature_weight=2.0, relational_weight=0.5, contrastive_weight=1.0, rank=0, world_size=1)
    terms = loss(image, t_image, text, torch.tensor(10.0), text, torch.tensor(10.0))
    assert set(terms) == {"feature_distill_loss", "relational_distill_loss", "contrastive_loss", "loss"}
    assert torch.allclose(terms["feature_distill_loss"], 2.0 * FeatureDistillationLoss()(image, t_image))
    assert torch.allclose(terms["loss"], sum(v for k, v in terms.items() if k != "loss"))
    features_only = DistillationLoss(relational_weight=0.0, rank=0, world_size=1)(image, t_image)
    assert set(features_only) == {"feature_distill_loss", "loss"}
    with pytest.raises(ValueError, match="text_embeds"):
        DistillationLoss(rank=0, world_size=1)(image, t_image)  # relational without texts
    with pytest.raises(ValueError, match="not all 0"):
        DistillationLoss(feature_weight=0.0, relational_weight=0.0)
