import math
import multiprocessing
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xray_hf.losses import ContrastiveLoss
from xray_hf.trainers.grad_cache import cached_backward, cached_encode, split_batch

TOL = 1e-6


class TinyCLIP(nn.Module):
    """Two towers with every kind of randomness GradCache must replay: dropout, a torch-drawn input augmentation,
    and draws from Python's and NumPy's generators; images `(B, 12)` or videos `(B, T, 12)`."""

    def __init__(self, noisy: bool = True):
        super().__init__()
        self.noisy = noisy
        self.image = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Dropout(0.3 if noisy else 0.0), nn.Linear(16, 8))
        self.embed = nn.Embedding(20, 16)
        self.text = nn.Sequential(nn.Dropout(0.2 if noisy else 0.0), nn.Linear(16, 8))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, chunk):
        pixels = chunk["pixel_values"]
        if pixels.dim() == 3:  # a video: average its frames
            pixels = pixels.mean(dim=1)
        if self.noisy:
            jitter = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
            pixels = jitter * (pixels + 0.1 * torch.randn_like(pixels))
        image = F.normalize(self.image(pixels), dim=-1)
        text = F.normalize(self.text(self.embed(chunk["input_ids"]).mean(dim=1)), dim=-1)
        scale = self.logit_scale.exp()
        return {"image_embeds": image, "text_embeds": text, "hashtag_embeds": None, "logit_scale": scale}


def _batch(rows=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(rows, 12, generator=generator),
            "input_ids": torch.randint(0, 20, (rows, 5), generator=generator), "ids": list(range(rows)), "tag": "x"}


def _loss(features):
    return ContrastiveLoss()(features["image_embeds"], features["text_embeds"], features["logit_scale"])


def _seed(seed=1):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _reference(model, chunks, scale=1.0):
    """What a machine with memory for the whole graph computes: every chunk encoded with grad, one loss, one
    backward."""
    model.zero_grad()
    outputs = [model(chunk) for chunk in chunks]
    features = {k: torch.cat([o[k] for o in outputs]) for k in ("image_embeds", "text_embeds")}
    features["logit_scale"] = outputs[0]["logit_scale"]
    loss = _loss(features)
    (scale * loss).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _max_gap(got, want):
    """Largest difference of the loss and every parameter gradient, relative above 1 (gradients here reach ~4, where
    chunked and full-batch fp32 sums differ by an ulp or two)."""
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    pairs = [(got_loss, want_loss)] + [(got_grads[n], want_grads[n]) for n in want_grads]
    return max(float(((g - w).abs() / w.abs().clamp_min(1.0)).max()) for g, w in pairs)


@pytest.mark.parametrize("chunk_size", [7, 4, 3])  # 1 chunk; 2 chunks of 4 + 3; 3 chunks of 3 + 3 + 1
def test_cached_backward_equals_the_uncached_computation(chunk_size):
    model = TinyCLIP()
    chunks = split_batch(_batch(), chunk_size)
    _seed()
    want = _reference(model, chunks)
    state_after_reference = torch.get_rng_state()
    model.zero_grad()
    _seed()
    loss, features = cached_backward(model, chunks, _loss)
    assert torch.equal(torch.get_rng_state(), state_after_reference)  # the replay leaves the caller's RNG alone
    assert _max_gap((loss, {n: p.grad for n, p in model.named_parameters()}), want) < TOL
    assert features["hashtag_embeds"] is None and features["image_embeds"].shape == (7, 8)
    assert not loss.requires_grad and not features["image_embeds"].requires_grad


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, TOL)])
@pytest.mark.parametrize("chunk_size", [4, 3])
def test_without_randomness_chunks_equal_one_full_batch_forward(chunk_size, dtype, tolerance):
    # fp64 shows the algebra is exact; in fp32 chunked and full-batch matmuls sum in other orders (~7e-7 here)
    model = TinyCLIP(noisy=False).to(dtype)
    batch = {**_batch(), "pixel_values": _batch()["pixel_values"].to(dtype)}
    want = _reference(model, [batch])
    model.zero_grad()
    loss, _ = cached_backward(model, split_batch(batch, chunk_size), _loss)
    assert _max_gap((loss, {n: p.grad for n, p in model.named_parameters()}), want) < tolerance


def test_deferred_backward_takes_the_outer_scale_and_chunks_may_differ_in_modality():
    # the Trainer's way: the features' backward runs later, scaled (gradient accumulation), outside autocast
    model = TinyCLIP()
    video = {"pixel_values": torch.randn(3, 4, 12), "input_ids": torch.randint(0, 20, (3, 5))}
    chunks = [split_batch(_batch(), 4)[0], video]
    _seed()
    want = _reference(model, chunks, scale=0.25)
    model.zero_grad()
    _seed()
    features = cached_encode(model, chunks)
    loss = _loss(features)
    (0.25 * loss).backward()
    assert _max_gap((loss.detach(), {n: p.grad for n, p in model.named_parameters()}), want) < TOL


def test_the_replay_runs_under_the_first_pass_autocast():
    # without autocast's weight cache, so the reference also casts the weights once per chunk: with it, the
    # reference sums the chunks' gradients of one bf16 weight copy in bf16 (the cached path sums them in fp32)
    model = TinyCLIP()
    chunks = split_batch(_batch(), 3)
    _seed()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        outputs = [model(chunk) for chunk in chunks]
        features = {k: torch.cat([o[k] for o in outputs]) for k in ("image_embeds", "text_embeds")}
        loss = _loss({**features, "logit_scale": outputs[0]["logit_scale"]})
    loss.backward()
    want = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    _seed()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        features = cached_encode(model, chunks)
        loss = _loss(features)
    assert features["image_embeds"].dtype == torch.bfloat16
    loss.backward()  # outside autocast, as the Trainer does
    assert _max_gap((loss.detach(), {n: p.grad for n, p in model.named_parameters()}), want) < TOL


def test_no_grad_is_plain_chunked_encoding():
    model = TinyCLIP(noisy=False).eval()
    with torch.no_grad():
        features = cached_encode(model, split_batch(_batch(), 3))
        full = model(_batch())
    assert not features["image_embeds"].requires_grad
    assert torch.allclose(features["image_embeds"], full["image_embeds"], atol=1e-6)


def test_bad_encoders_and_chunks_raise():
    model = TinyCLIP()
    chunks = split_batch(_batch(), 4)
    with pytest.raises(ValueError, match="at least one chunk"):
        cached_encode(model, [])
    with pytest.raises(ValueError, match="mapping of features"):
        cached_encode(lambda chunk: model(chunk)["image_embeds"], chunks)
    with pytest.raises(ValueError, match="must be tensors"):
        cached_encode(lambda chunk: {**model(chunk), "ids": chunk["ids"]}, chunks)
    with pytest.raises(ValueError, match="None in some chunks"):
        cached_encode(lambda chunk: {**model(chunk), "hashtag_embeds": None if len(chunk["ids"]) == 4 else
                                     model(chunk)["text_embeds"]}, chunks)
    with pytest.raises(ValueError, match="differs between chunks"):
        cached_encode(lambda chunk: {**model(chunk), "logit_scale": torch.tensor(float(len(chunk["ids"])))}, chunks)
    calls = []

    def drifting(chunk):  # randomness from outside the replayed generators
        calls.append(1)
        return {"image_embeds": model(chunk)["image_embeds"] + len(calls)}

    features = cached_encode(drifting, chunks)
    with pytest.raises(RuntimeError, match="replaying chunk 0"):
        features["image_embeds"].sum().backward()


def test_split_batch():
    batch = _batch(5)
    chunks = split_batch(batch, 2)
    assert [c["ids"] for c in chunks] == [[0, 1], [2, 3], [4]] and all(c["tag"] == "x" for c in chunks)
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), batch["input_ids"])
    with pytest.raises(ValueError, match="chunk_size"):
        split_batch(batch, 0)
    with pytest.raises(ValueError, match="batch dimension"):
        split_batch({"tag": "x"}, 2)


# -- 2 ranks (gloo) under DDP: gathered contrastive loss, cached in chunks, equals one process on both batches --


def _rank_step(rank, port, results):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(TinyCLIP())
        _seed(10 + rank)
        loss, _ = cached_backward(model, split_batch(_batch(6, seed=rank), 4), _loss, no_sync=model.no_sync)
        results.put((rank, float(loss), {n: p.grad.numpy() for n, p in model.module.named_parameters()}))
    except BaseException as error:
        results.put((rank, repr(error), None))
        raise
    finally:
        dist.destroy_process_group()


def test_two_ranks_under_ddp_equal_one_process_on_the_concatenated_batch(monkeypatch):
    # spawned children import this module by its name (`trainers.test_grad_cache`): from tests/, as pytest did
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # not fork: a pytest-xdist worker that ran autograd cannot fork
    results = context.Queue()
    processes = [context.Process(target=_rank_step, args=(r, port, results)) for r in range(2)]
    for process in processes:
        process.start()
    try:
        by_rank = {rank: (loss, grads) for rank, loss, grads in (results.get(timeout=240) for _ in range(2))}
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0, by_rank
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    # one process: each rank's chunks drawn with that rank's seed, one global loss on the concatenation
    torch.manual_seed(0)
    model = TinyCLIP()
    outputs = []
    for rank in range(2):
        _seed(10 + rank)
        outputs += [model(chunk) for chunk in split_batch(_batch(6, seed=rank), 4)]
    features = {k: torch.cat([o[k] for o in outputs]) for k in ("image_embeds", "text_embeds")}
    loss = _loss({**features, "logit_scale": outputs[0]["logit_scale"]})
    loss.backward()
    assert abs((by_rank[0][0] + by_rank[1][0]) / 2 - loss.item()) < TOL
    for name, parameter in model.named_parameters():
        for rank in range(2):  # DDP already averaged: every rank holds the same, global gradient
            assert abs(by_rank[rank][1][name] - parameter.grad.numpy()).max() < TOL, name
