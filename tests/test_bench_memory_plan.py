"""bench/memory_plan.py: the counting machinery on a layer whose bytes are known, then the --quick plan's
invariants (FSDP2 shards DDP's state over N, checkpointing lowers activations, AdamW keeps twice Lion's state,
block bytes are linear in batch and tokens, the dispatch-mode count equals autograd's saved tensors + output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import memory_plan  # bench/memory_plan.py, on sys.path


def test_fit_recovers_an_affine_function():
    truth = memory_plan.Fit(c=1000.0, a=30.0, b=7.0)
    n1, n2 = 9, 13
    fit = memory_plan.Fit.from_points(truth(2, n1), truth(2, n2), truth(3, n1), n1, n2)
    assert (fit.c, fit.a, fit.b) == pytest.approx((1000.0, 30.0, 7.0))
    stem = memory_plan.Fit.from_batches(truth(2, 0), truth(3, 0))
    assert stem(32, 0) == pytest.approx(truth(32, 0))


def test_counts_what_a_linear_layer_keeps_under_autocast():
    # fp32 weights under bf16 autocast, an input that needs its gradient (as a block's): the backward keeps the
    # bf16 copies of the weight and of the input (the bias is not needed), and the output is alive; nothing else
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(5, 16, requires_grad=True)
    got = memory_plan.measure(lambda: layer(x), list(layer.parameters()))
    bf16 = 2
    assert got.output == 5 * 8 * bf16
    assert got.saved == (16 * 8 + 5 * 16) * bf16
    assert got.retained == got.saved + got.output
    assert got.forward_end >= got.retained
    assert max(got.backward) >= got.output  # the incoming gradient and the weight gradient's bf16 product
    assert all(p.grad is None for p in layer.parameters())


def test_layer_norm_follows_cuda_autocast():
    # CUDA autocast runs layer_norm in fp32; CPU autocast would keep bf16
    norm = nn.LayerNorm(8).to(torch.bfloat16)
    with memory_plan.CudaAutocastPolicy(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.float32
        assert torch.randn(3, dtype=torch.bfloat16).sum().dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("memory_plan") / "plan.json"
    subprocess.run(
        [sys.executable, str(BENCH / "memory_plan.py"), "--quick", "--presets", "vit-l16", "evit-2b", "--frames", "2",
         "--video-size", "112", "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.read_text())


def test_fsdp2_shards_ddp_state_plus_a_unit_working_set(plan):
    for entry in list(plan["models"].values()) + [plan["clip"]]:
        shape = entry["shape"]
        assert sum(shape["units"]) + shape["root"] == shape["trainable"] + shape["frozen"]
        for opt in ("adamw", "lion"):
            ddp = entry["state"][f"ddp/{opt}"]
            for world in (8, 64):
                fsdp = entry["state"][f"fsdp2/{world}/{opt}"]
                sharded = fsdp["weights"] + fsdp["grads"] + fsdp["optimizer"]
                assert sharded == pytest.approx((ddp["weights"] + ddp["grads"] + ddp["optimizer"]) / world)
                # the working set holds at least the two largest units in bf16, and is far below a replica
                assert 2 * 2 * max(shape["units"]) <= fsdp["comm"] < ddp["weights"] / 2
    # the units are the ones the trainers shard: the frozen LLM lies wholly in frozen units (its embeddings too, not
    # in the root), and no unit mixes frozen and trainable parameters
    clip = plan["clip"]["shape"]
    assert sum(clip["units"]) - sum(clip["trainable_units"]) == clip["frozen"]
    assert all(t in (0, n) for n, t in zip(clip["units"], clip["trainable_units"]))


def test_adamw_keeps_twice_lions_state(plan):
    assert plan["optimizer_state_bytes"]["adamw"] == 2 * plan["optimizer_state_bytes"]["lion"] == 8
    for entry in plan["models"].values():
        for strategy in ("ddp", "fsdp2/8", "fsdp2/64"):
            adam, lion = entry["state"][f"{strategy}/adamw"], entry["state"][f"{strategy}/lion"]
            assert adam["optimizer"] == pytest.approx(2 * lion["optimizer"])


def test_checkpointing_lowers_activations(plan):
    for entry in plan["models"].values():
        for act in entry["activations"]["inputs"].values():
            for mode in ("ddp", "fsdp2"):
                assert act[f"{mode}/ckpt"]["peak"] < act[f"{mode}/full"]["peak"]
                assert act[f"{mode}/ckpt"]["retained"] < act[f"{mode}/full"]["retained"] / 5


def test_block_bytes_are_linear_in_batch_and_tokens(plan):
    for entry in plan["models"].values():
        for mode, kinds in entry["activations"]["fits"].items():
            for kind in kinds:
                # a fit from three shapes predicts a fourth, larger one (the backward peak op by op)
                assert kind["backward_ops_aligned"]
                assert kind["check_error"]["retained"] < 0.01, (mode, kind)
                assert kind["check_error"]["backward_peak"] < 0.01, (mode, kind)
                assert kind["fits"]["retained"]["b"] > 0
                # what the dispatch mode finds alive is what autograd saved plus the block output
                for point in kind["points"].values():
                    assert point["retained"] == point["saved"] + point["output"]


def test_evit_shrinks_the_token_schedule(plan):
    tokens = plan["models"]["evit-2b"]["activations"]["inputs"]
    for act in tokens.values():
        schedule = act["tokens"]
        assert len(schedule) == 48 and schedule[-1] < schedule[0] / 4
    dense = plan["models"]["vit-l16"]["activations"]["inputs"]
    assert all(len(set(act["tokens"])) == 1 for act in dense.values())
