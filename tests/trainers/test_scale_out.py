"""Every stage trainer under real DDP and FSDP2 on 2 CPU processes (gloo), against one process on the same global
batch; checkpoints that cross between DDP and FSDP2; `accelerate launch` with the shipped configs.

Launch 1 (`torchrun`, one import, many runs chained): MAE and CLIP under DDP and FSDP2 (each rank records its inputs
and per-step losses), MAE resumed under FSDP2 from an FSDP2 and from a DDP checkpoint and under DDP from an FSDP2
checkpoint, MAE under FSDP2 with non-reentrant gradient checkpointing and over a stream with a corrupt sample on one
rank, CLIP, MAE with 2 micro-batches of gradient accumulation and CLIP with the LLM2CLIP tower (frozen tiny LLaMA)
under DDP and FSDP2, then hashtag, distill, mntp and simcse for 2 steps under DDP and FSDP2, then compress from the DDP
CLIP under DDP and FSDP2 and resumed under FSDP2 from the DDP run's checkpoint. The worker also counts
FSDP2's reduce-scatters, block forwards, checkpoint files each rank reads and full tensors each rank gathers. The single-process references are
`run_stage` in the test process, fed the union of both ranks' recorded batches (and MAE masks, CLIP, compress). Launch 2 and 3:
`accelerate launch --config_file configs/accelerate/{fsdp2,ddp}.yaml`.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, LlamaForCausalLM

from xray_hf import (
    XrayCLIPModel,
    XrayVisualForPreTraining,
    XrayVisualModel,
)
from xray_hf.trainers import clip_run, compression, mae, mae_run
from xray_hf.trainers.run import run_stage

from .test_distributed import HASHTAG, MODEL, free_port, launch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from replay import ReplayLoader, rank_mean_losses, union_batches  # noqa: E402

pytestmark = pytest.mark.slow  # three launches, ~2.5 min on 2 cores

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "accelerate")

WORKER = r'''
"""Run `xray-hf` commands in this rank; record per run what the trainer did into <prefix>-rank<r>.json and the
inputs of every training step into <prefix>-rank<r>.safetensors."""
import gc, hashlib, json, os, sys

import safetensors.torch
import torch
import torch.distributed
from safetensors.torch import save_file

from transformers import Trainer

import xray_hf.trainers.fsdp_trainer as fsdp_trainer
from xray_hf.cli import main
from xray_hf.trainers.mae import MAETrainer

record, tensors = {"runs": []}, {}
trainer_init, mask_noise = Trainer.__init__, MAETrainer.mask_noise


def count(key, amount=1):
    if record["runs"]:
        counts = record["runs"][-1].setdefault("counts", {})
        counts[key] = counts.get(key, 0) + amount


def counting(key, function):
    def wrapper(*args, **kwargs):
        count(key)
        return function(*args, **kwargs)
    return wrapper


def loading(function):  # which checkpoint files this rank reads
    def wrapper(f, *args, **kwargs):
        if record["runs"] and isinstance(f, (str, os.PathLike)):
            record["runs"][-1].setdefault("loaded", []).append(os.path.basename(f))
        return function(f, *args, **kwargs)
    return wrapper


def sizing(key, function):  # how many full tensors a rank holds after gathering a checkpoint's state
    def wrapper(*args, **kwargs):
        state = function(*args, **kwargs)
        count(key, len(state.get("state", {})) if "param_groups" in state else len(state))
        return state
    return wrapper


def block_call(module, args):  # every block's MLP (inside the checkpointed `forward`): recomputations included
    if type(module).__name__ == "XrayVisualMLP":
        count("block_calls")


torch.distributed.reduce_scatter_single = counting("reduce_scatter", torch.distributed.reduce_scatter_single)
torch.load, safetensors.torch.load_file = loading(torch.load), loading(safetensors.torch.load_file)
fsdp_trainer.full_optimizer_state = sizing("full_optimizer_tensors", fsdp_trainer.full_optimizer_state)
fsdp_trainer.full_model_state = sizing("full_model_tensors", fsdp_trainer.full_model_state)
torch.nn.modules.module.register_module_forward_pre_hook(block_call)


def weights_hash(model):
    state = model.state_dict()
    return hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()


def sharding(model):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    fsdp = [m for m in model.modules() if isinstance(m, FSDPModule)]
    units = [type(m).__name__ for m in fsdp]
    trainable = []  # per unit, the requires_grad of the parameters FSDP manages in it
    for unit in fsdp:
        group = unit._get_fsdp_state()._fsdp_param_group
        trainable.append(sorted({p.sharded_param.requires_grad for p in group.fsdp_params} if group else []))
    return {"units": units, "dtensors": sum(isinstance(p, DTensor) for p in params), "params": len(params),
            "local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
            "full": sum(p.numel() for p in params), "unit_trainable": trainable,
            "checkpointing": bool(getattr(model, "is_gradient_checkpointing", False))}


def recording_init(self, *args, **kwargs):
    trainer_init(self, *args, **kwargs)
    index = len(record["runs"])
    run = {"world_size": self.args.world_size, "process_index": self.args.process_index, "steps": []}
    record["runs"].append(run)
    compute_loss, train = self.compute_loss, self.train

    def recording_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and "sharding" not in run:
            run["sharding"] = sharding(model)
            frozen = [p for p in model.parameters() if not p.requires_grad]
            run["frozen_params"], run["frozen_with_grad"] = len(frozen), 0

            def frozen_grads(optimizer, args, kwargs):  # before each optimizer step: no frozen parameter has a grad
                run["frozen_with_grad"] += sum(p.grad is not None for p in frozen)

            getattr(self.optimizer, "optimizer", self.optimizer).register_step_pre_hook(frozen_grads)
            loss_fn = getattr(self, "loss_fn", None)
            gathering = [m for m in getattr(loss_fn, "modules", list)() if hasattr(m, "ranks")]
            run["loss_world_size"] = gathering[0].ranks()[1] if gathering else None  # the contrastive loss's
        out = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            step = len(run["steps"])
            run["steps"].append({"ids": [str(i) for i in inputs.get("id", [])],
                                 "loss": (out[0] if return_outputs else out).item()})
            for key, value in inputs.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{step}.{key}"] = value.detach().cpu().contiguous()
        return out

    def recording_train(*args, **kwargs):
        output = train(*args, **kwargs)
        run["global_step"], run["weights"] = self.state.global_step, weights_hash(self.model)
        run["plain_after_train"] = sharding(self.model)["dtensors"] == 0
        if "sharding" in run and run["sharding"]["dtensors"]:  # what stays alive of the sharded run
            gc.collect()
            run["live_dtensors"] = sum(isinstance(o, torch.distributed.tensor.DTensor) for o in gc.get_objects())
            run["accelerator_refs"] = len(self.accelerator._models) + len(self.accelerator._optimizers)
        return output

    self.compute_loss, self.train = recording_compute_loss, recording_train


def recording_noise(self, model, pixel_values):
    noise = mask_noise(self, model, pixel_values)
    if model.training:
        index, run = len(record["runs"]) - 1, record["runs"][-1]
        tensors[f"{index}.{len(run['steps'])}.noise"] = noise.detach().cpu().contiguous()
    return noise


Trainer.__init__, MAETrainer.mask_noise = recording_init, recording_noise
for argv in json.loads(sys.argv[2]):
    if main(argv) != 0:
        sys.exit(1)
rank = os.environ["RANK"]
with open(f"{sys.argv[1]}-rank{rank}.json", "w") as f:
    json.dump(record, f)
save_file(tensors, f"{sys.argv[1]}-rank{rank}.safetensors")
import torch.distributed as dist

if dist.is_initialized():  # leave together: gloo can abort a process whose peer exits first
    dist.barrier()
    dist.destroy_process_group()
'''

FSDP = {"fsdp": True, "fsdp_config": {"version": 2}}
STEPS = 4
MAE = {
    "stage": "mae", "seed": 0, "model": MODEL,
    "data": {"resolution": 16, "image": {"name": "mnist", "batch_size": 4, "max_samples": 32},
             "augment": {"flip_p": 0.5, "blur_p": 0.0}},
    "training": {"output_dir": "unused", "max_steps": STEPS, "save_steps": 2, "logging_steps": 1,
                 "learning_rate": 1e-3, "warmup_steps": 1, "optimizer": "adamw", "report_to": [],
                 "disable_tqdm": True},
}
VISION = {"preset": "tiny", "config": {"image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32,
                                       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}}
TEXT = {"preset": "tiny", "tokenizer": "smollm2", "config": {"num_hidden_layers": 1, "hidden_size": 32,
                                                             "num_attention_heads": 2, "max_position_embeddings": 32}}
CLIP = {
    "stage": "clip", "seed": 0,
    "model": {"vision": VISION, "text": TEXT,
              "config": {"projection_dim": 16, "slip_weight": 0.0, "lambda_den": 0.0, "hashtag_loss_weight": 0.0}},
    "captions": {"column": "caption", "hashtag_column": None},
    "data": {"resolution": 16, "image": {"name": "openmoji", "split": "train", "batch_size": 8, "max_samples": 64},
             "augment": {"flip_p": 0.5, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0,
                         "crop_scale": [0.8, 1.0]}},
    "training": {"output_dir": "unused", "max_steps": 3, "learning_rate": 2e-3, "optimizer": "adamw",
                 "warmup_steps": 1, "logging_steps": 1, "save_strategy": "no", "report_to": [], "disable_tqdm": True},
}
GA_STEPS = 2  # optimizer steps of the gradient-accumulation runs (2 micro-batches each)


def llm2clip_config(llm_dir) -> dict:
    """CLIP with the LLM2CLIP text tower as users run it: a (tiny) LLaMA, frozen, run on every step (no text cache),
    under a trainable adapter and projection."""
    text = {"from_llm": str(llm_dir), "config": {"pooling": "mean", "max_text_length": 16, "adapter_depth": 1}}
    return {**CLIP, "model": {**CLIP["model"], "text": text}, "text_cache": {"enabled": False}}


TWO_STEPS = {"max_steps": 2, "save_strategy": "no", "report_to": [], "disable_tqdm": True}


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(value).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def corrupt_source(folder) -> str:
    """Two Parquet shards of 8 images (one shard per rank); the second holds one corrupt image."""
    os.makedirs(folder, exist_ok=True)
    for shard in (0, 1):
        rows = [8 * shard + i for i in range(8)]
        images = [{"bytes": b"not an image" if row == 11 else _png(row), "path": None} for row in rows]
        table = datasets.Dataset.from_dict({"id": [f"img{row}" for row in rows], "image": images},
                                           features=datasets.Features({"id": datasets.Value("string"),
                                                                       "image": datasets.Image()}))
        table.to_parquet(os.path.join(folder, f"shard-{shard}.parquet"))
    return str(folder)


def write(folder, name: str, config: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def with_training(config: dict, **training) -> dict:
    return {**config, "training": {**config["training"], **training}}


def run_worker(folder, name: str, commands: list[list[str]], launcher: list[str] | None = None) -> list[dict]:
    worker = folder / "worker.py"
    worker.write_text(WORKER)
    args = [str(worker), str(folder / name), json.dumps(commands)]
    if launcher is None:
        proc = launch(folder, *args)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
        proc = subprocess.run([*launcher, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    assert proc.returncode == 0, "launch failed:\n" + "\n".join(errors[-20:]) + proc.stderr[-4000:]
    records = []
    for rank in (0, 1):
        record = json.loads((folder / f"{name}-rank{rank}.json").read_text())
        record["tensors"] = load_file(folder / f"{name}-rank{rank}.safetensors")
        records.append(record)
    return records


RUNS = ["mae_ddp", "mae_fsdp", "mae_fsdp_from_fsdp", "mae_fsdp_from_ddp", "mae_ddp_from_fsdp", "mae_fsdp_checkpointing",
        "mae_corrupt", "clip_ddp", "clip_fsdp", "mae_ga_ddp", "mae_ga_fsdp", "clip_llm_ddp", "clip_llm_fsdp", "hashtag_ddp", "hashtag_fsdp", "distill_ddp", "distill_fsdp",
        "mntp_ddp", "mntp_fsdp", "simcse_ddp", "simcse_fsdp", "compress_ddp", "compress_fsdp", "compress_fsdp_from_ddp"]


def compress_config(clip_dir: str, output_dir: str, **training) -> dict:
    """The compress stage on a CLIP checkpoint: 32 OpenMoji images and their captions, 8 per rank and step."""
    return {
        "stage": "compress", "seed": 0,
        "model": {"from_pretrained": clip_dir, "compression": {"compressed_dim": 8, "matryoshka_dims": [4]}},
        "texts": {"column": "caption"},
        "data": {"image": {"name": "openmoji", "split": "train", "max_samples": 32, "batch_size": 32}},
        "training": {"output_dir": output_dir, "max_steps": 3, "optimizer": "adamw", "learning_rate": 1e-2,
                     "warmup_steps": 0, "per_device_train_batch_size": 8, "logging_steps": 1, "save_steps": 2,
                     "report_to": [], "disable_tqdm": True, **training},
    }


@pytest.fixture(scope="module")
def chained(tmp_path_factory, llm_dir):
    """Launch 1: every run of `RUNS` in order, in one `torchrun` of 2 ranks; returns (folder, {run: [rank records]})."""
    folder = tmp_path_factory.mktemp("scale_out")
    out = {name: str(folder / name) for name in RUNS}
    mae_cfg, clip_cfg = write(folder, "mae", MAE), write(folder, "clip", CLIP)
    mae_fsdp = write(folder, "mae_fsdp", with_training(MAE, **FSDP))
    commands = [
        ["train", "mae", "--config", mae_cfg, "--output-dir", out["mae_ddp"]],
        ["train", "mae", "--config", mae_fsdp, "--output-dir", out["mae_fsdp"]],
        ["train", "mae", "--config", mae_fsdp, "--output-dir", out["mae_fsdp_from_fsdp"],
         "--resume", os.path.join(out["mae_fsdp"], "checkpoint-2")],
        ["train", "mae", "--config", mae_fsdp, "--output-dir", out["mae_fsdp_from_ddp"],
         "--resume", os.path.join(out["mae_ddp"], "checkpoint-2")],
        ["train", "mae", "--config", mae_cfg, "--output-dir", out["mae_ddp_from_fsdp"],
         "--resume", os.path.join(out["mae_fsdp"], "checkpoint-2")],
        ["train", "mae", "--config", write(folder, "mae_ckpt", with_training(
            MAE, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, **FSDP)),
         "--output-dir", out["mae_fsdp_checkpointing"]],
        ["train", "mae", "--config", write(folder, "mae_corrupt", {
            **with_training(MAE, max_steps=5, save_strategy="no", **FSDP),
            "data": {"resolution": 16, "augment": {"flip_p": 0.0, "blur_p": 0.0},
                     "image": {"path": corrupt_source(folder / "corrupt"), "num_samples": 16, "batch_size": 2}}}),
         "--output-dir", out["mae_corrupt"]],
        ["train", "clip", "--config", clip_cfg, "--output-dir", out["clip_ddp"]],
        ["train", "clip", "--config", write(folder, "clip_fsdp", with_training(CLIP, **FSDP)),
         "--output-dir", out["clip_fsdp"]],
    ]
    for kind, extra in (("ddp", {}), ("fsdp", FSDP)):
        commands.append(["train", "mae", "--config", write(folder, f"mae_ga_{kind}", with_training(
            MAE, max_steps=GA_STEPS, gradient_accumulation_steps=2, save_strategy="no", **extra)),
            "--output-dir", out[f"mae_ga_{kind}"]])
    for kind, extra in (("ddp", {}), ("fsdp", FSDP)):
        commands.append(["train", "clip", "--config", write(folder, f"clip_llm_{kind}", with_training(
            llm2clip_config(llm_dir), **extra)), "--output-dir", out[f"clip_llm_{kind}"]])
    for kind, extra in (("ddp", {}), ("fsdp", FSDP)):
        hashtag = {**HASHTAG, "model": {"from_pretrained": out["mae_ddp"]},
                   "training": {**HASHTAG["training"], **extra, "output_dir": out[f"hashtag_{kind}"]}}
        distill = {
            "stage": "distill", "seed": 0, "teacher": {"from_pretrained": out["clip_ddp"]},
            "model": {"vision": VISION}, "captions": {"column": "caption", "hashtag_column": None},
            "data": {"resolution": 16, "image": {"name": "openmoji", "split": "train", "batch_size": 4,
                                                 "max_samples": 16}},
            "training": {**TWO_STEPS, **extra, "output_dir": out[f"distill_{kind}"]}}
        text = {"from_llm": str(llm_dir), "config": {"pooling": "mean", "max_text_length": 16, "projection_dim": 16}}
        llm2vec_data = {"sources": [{"name": "openmoji", "split": "train", "columns": ["caption", "hashtags"],
                                     "max_samples": 32}], "max_length": 16}
        llm2vec_training = {**TWO_STEPS, **extra, "per_device_train_batch_size": 4, "use_cpu": True}
        mntp = {"stage": "mntp", "seed": 0, "model": {"text": text, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "data": llm2vec_data, "training": {**llm2vec_training, "output_dir": out[f"mntp_{kind}"]}}
        simcse = {"stage": "simcse", "seed": 0,
                  "model": {"text": {"from_pretrained": out[f"mntp_{kind}"]}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                  "data": llm2vec_data, "training": {**llm2vec_training, "output_dir": out[f"simcse_{kind}"]}}
        for stage, config in (("hashtag", hashtag), ("distill", distill), ("mntp", mntp)):
            commands.append(["train", stage, "--config", write(folder, f"{stage}_{kind}", config)])
        simcse_command = ["train", "simcse", "--config", write(folder, f"simcse_{kind}", simcse)]
        commands.append(simcse_command)
    for kind, extra in (("ddp", {}), ("fsdp", FSDP)):
        commands.append(["train", "compress", "--config", write(folder, f"compress_{kind}", compress_config(
            out["clip_ddp"], out[f"compress_{kind}"], **extra))])
    commands.append(["train", "compress", "--config", write(folder, "compress_fsdp_from_ddp", compress_config(
        out["clip_ddp"], out["compress_fsdp_from_ddp"], **FSDP)),
        "--resume", os.path.join(out["compress_ddp"], "checkpoint-2")])
    order = RUNS[:13] + ["hashtag_ddp", "distill_ddp", "mntp_ddp", "simcse_ddp", "hashtag_fsdp", "distill_fsdp",
                        "mntp_fsdp", "simcse_fsdp", "compress_ddp", "compress_fsdp", "compress_fsdp_from_ddp"]
    records = run_worker(folder, "chained", commands)
    assert [len(record["runs"]) for record in records] == [len(order)] * 2  # one trainer per run
    runs = {name: [record["runs"][i] | {"tensors": {k.split(".", 1)[1]: v for k, v in record["tensors"].items()
                                                    if k.split(".", 1)[0] == str(i)}}
                   for record in records] for i, name in enumerate(order)}
    return folder, runs


@pytest.fixture(scope="module")
def references(chained, tmp_path_factory, monkeypatch_module):
    """The single-process MAE and CLIP runs over the union of the DDP run's batches (and masks)."""
    folder, runs = chained
    out = tmp_path_factory.mktemp("single")
    results = {}
    mae_batches = union_batches(runs["mae_ddp"])
    noise = [batch.pop("noise") for batch in mae_batches]
    monkeypatch_module.setattr(mae_run, "build_train_loader", lambda *a, **k: ReplayLoader(mae_batches))
    monkeypatch_module.setattr(mae.MAETrainer, "mask_noise",
                               lambda self, model, pixels: noise[self.state.global_step] if model.training else None)
    results["mae"] = run_stage("mae", with_training(MAE, output_dir=str(out / "mae"), save_strategy="no"))
    clip_batches = union_batches(runs["clip_ddp"])
    monkeypatch_module.setattr(clip_run, "build_train_loader", lambda *a, **k: ReplayLoader(clip_batches))
    results["clip"] = run_stage("clip", with_training(CLIP, output_dir=str(out / "clip")))
    compress_batches = union_batches(runs["compress_ddp"])
    monkeypatch_module.setattr(compression.CompressionTrainer, "get_train_dataloader",
                               lambda self: ReplayLoader(compress_batches))
    results["compress"] = run_stage("compress", compress_config(str(folder / "clip_ddp"), str(out / "compress"),
                                                                save_strategy="no"))
    return out, results


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


losses = rank_mean_losses


def single_losses(results: dict) -> list[float]:
    return [e["loss"] for e in results["log_history"] if "loss" in e]


def test_ranks_read_disjoint_samples_of_the_same_global_batch(chained):
    _, runs = chained
    for name in ("mae_ddp", "mae_fsdp", "clip_ddp", "clip_fsdp"):
        ranks = runs[name]
        assert [(r["process_index"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)], name
        assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == ranks[0]["global_step"], name
        for s0, s1 in zip(ranks[0]["steps"], ranks[1]["steps"]):
            assert s0["ids"] and not set(s0["ids"]) & set(s1["ids"]), name
    for stage in ("mae", "clip"):  # DDP and FSDP2 read the very same samples
        assert ([[s["ids"] for s in r["steps"]] for r in runs[f"{stage}_ddp"]]
                == [[s["ids"] for s in r["steps"]] for r in runs[f"{stage}_fsdp"]])


def test_fsdp_really_shards_every_block_and_ddp_does_not(chained):
    _, runs = chained
    for rank in runs["mae_fsdp"]:
        sharding = rank["sharding"]
        assert sharding["dtensors"] == sharding["params"]  # no 0-d parameter in MAE: every one sharded
        assert sharding["units"].count("FSDPXrayVisualLayer") == 3  # 2 encoder + 1 decoder blocks, then the root
        assert sharding["units"][0] == "FSDPXrayVisualForPreTraining"
        assert sharding["local"] < 0.6 * sharding["full"]  # about half the parameters live on each rank
        assert rank["plain_after_train"]
    assert sum(r["sharding"]["local"] for r in runs["mae_fsdp"]) == runs["mae_fsdp"][0]["sharding"]["full"]
    clip = runs["clip_fsdp"][0]["sharding"]
    assert clip["params"] - clip["dtensors"] == 1  # logit_scale: 0-d, replicated
    assert clip["units"].count("FSDPCLIPEncoderLayer") == 1 and clip["units"].count("FSDPXrayVisualLayer") == 2
    assert runs["mae_ddp"][0]["sharding"]["dtensors"] == 0 and runs["mae_ddp"][0]["sharding"]["units"] == []


def test_ddp_and_fsdp_losses_equal_one_process_on_the_global_batch(chained, references):
    _, runs = chained
    _, results = references
    for stage in ("mae", "clip"):
        single = single_losses(results[stage])
        for kind in ("ddp", "fsdp"):
            got = losses(runs[f"{stage}_{kind}"])
            assert len(got) == len(single)
            difference = max(abs(a - b) for a, b in zip(got, single))
            print(f"{stage} {kind}: max |loss - one process| = {difference:.2e} over {len(got)} steps")
            assert difference < 1e-5, (stage, kind, got, single)
        ranks = runs[f"{stage}_fsdp"]
        assert ranks[0]["weights"] == ranks[1]["weights"]  # the gathered model is the same on both ranks
    # CLIP's loss gathered the features of both ranks (with gradients): each rank's loss is its rows against the
    # global batch, and the ranks' mean is the one-process loss of the union checked above
    assert [r["loss_world_size"] for r in runs["clip_fsdp"] + runs["clip_ddp"]] == [2, 2, 2, 2]
    assert runs["clip_fsdp"][0]["steps"][0]["loss"] != runs["clip_fsdp"][1]["steps"][0]["loss"]


def test_saved_models_load_with_from_pretrained_and_embed_like_one_process(chained, references):
    folder, _ = chained
    single, _ = references
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for stage in ("mae", "clip"):
        embeds = []
        for path in (single / stage, folder / f"{stage}_ddp", folder / f"{stage}_fsdp"):
            assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
            with torch.no_grad():
                embeds.append(XrayVisualModel.from_pretrained(path).eval()(pixels).pooler_output)
        for other in embeds[1:]:
            torch.testing.assert_close(other, embeds[0], atol=1e-5, rtol=0)
    clip = AutoModel.from_pretrained(folder / "clip_fsdp")
    assert isinstance(clip, XrayCLIPModel) and clip.logit_scale.ndim == 0
    # the heads too: MAE's reconstruction under fixed masks, CLIP's projected image and text features (not tensor by
    # tensor: attention's key bias gets no gradient, so AdamW moves it by rounding noise, with no effect on outputs)
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(2))
    outputs = {}
    for kind in ("single", "ddp", "fsdp"):
        mae_dir = single / "mae" if kind == "single" else folder / f"mae_{kind}"
        clip_dir = single / "clip" if kind == "single" else folder / f"clip_{kind}"
        with torch.no_grad():
            mae_model = XrayVisualForPreTraining.from_pretrained(mae_dir).eval()
            clip_model = XrayCLIPModel.from_pretrained(clip_dir).eval()
            outputs[kind] = [mae_model(pixel_values=pixels, noise=noise).logits,
                             clip_model.get_image_features(pixels).pooler_output,
                             clip_model.get_text_features(input_ids=ids).pooler_output]
    for kind in ("ddp", "fsdp"):
        for got, want in zip(outputs[kind], outputs["single"]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_fsdp_resume_continues_the_loss_curve_from_fsdp_and_ddp_checkpoints(chained):
    _, runs = chained
    for name, source in (("mae_fsdp_from_fsdp", "mae_fsdp"), ("mae_fsdp_from_ddp", "mae_ddp"),
                         ("mae_ddp_from_fsdp", "mae_fsdp")):
        for rank in (0, 1):
            before, after = runs[source][rank], runs[name][rank]
            assert after["global_step"] == STEPS and len(after["steps"]) == STEPS - 2
            assert [s["ids"] for s in after["steps"]] == [s["ids"] for s in before["steps"][2:]], name
            for got, want in zip(after["steps"], before["steps"][2:]):
                assert abs(got["loss"] - want["loss"]) < 1e-5, (name, rank, got, want)
    # checkpoints hold full tensors in one layout: the FSDP2 checkpoint's optimizer state has full-shape moments
    state = torch.load(os.path.join(chained[0], "mae_fsdp", "checkpoint-2", "optimizer.pt"), weights_only=True)
    ddp = torch.load(os.path.join(chained[0], "mae_ddp", "checkpoint-2", "optimizer.pt"), weights_only=True)
    assert state["param_groups"] == ddp["param_groups"]
    for index, entry in ddp["state"].items():
        assert state["state"][index]["exp_avg"].shape == entry["exp_avg"].shape


def test_non_reentrant_gradient_checkpointing_under_fsdp_gives_the_same_losses(chained):
    _, runs = chained
    got, want = losses(runs["mae_fsdp_checkpointing"]), losses(runs["mae_fsdp"])
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-6
    # checkpointing was on: the flag, and every block's forward runs twice per step (recomputed in backward)
    for on, off in zip(runs["mae_fsdp_checkpointing"], runs["mae_fsdp"]):
        assert on["sharding"]["checkpointing"] and not off["sharding"]["checkpointing"]
        calls = [run["counts"]["block_calls"] / len(run["steps"]) for run in (on, off)]
        print(f"block forwards per step: {calls[0]:.0f} with checkpointing, {calls[1]:.0f} without")
        assert calls == [6, 3]  # 2 encoder + 1 decoder blocks


def test_fsdp_checkpoints_are_gathered_on_and_read_by_rank_0_only(chained):
    _, runs = chained
    # saving (2 checkpoints + the final model): rank 0 receives the full states, rank 1 nothing
    zero, one = (r["counts"] for r in runs["mae_fsdp"])
    print(f"full tensors gathered per rank: {zero['full_optimizer_tensors']} / {one['full_optimizer_tensors']} "
          f"(optimizer), {zero['full_model_tensors']} / {one['full_model_tensors']} (model)")
    assert zero["full_optimizer_tensors"] > 0 and zero["full_model_tensors"] > 0
    assert one["full_optimizer_tensors"] == 0 and one["full_model_tensors"] == 0
    # resuming under FSDP2 (from FSDP2 or DDP): rank 0 alone reads the weights and the optimizer state
    for name in ("mae_fsdp_from_fsdp", "mae_fsdp_from_ddp"):
        zero, one = (r.get("loaded", []) for r in runs[name])
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt"} <= set(zero), (name, zero)
        assert "optimizer.pt" not in one and "model.safetensors" not in one, (name, one)
    assert "optimizer.pt" in runs["mae_ddp_from_fsdp"][1]["loaded"]  # DDP: every rank loads (the Trainer's way)


def test_sharded_model_and_optimizer_are_released_after_training(chained):
    _, runs = chained
    for name in ("mae_fsdp", "mae_ga_fsdp", "mntp_fsdp", "clip_fsdp", "clip_llm_fsdp", "compress_fsdp"):
        for rank in runs[name]:
            assert rank["plain_after_train"], name
            assert rank["accelerator_refs"] == 0, name
            print(f"{name}: {rank['live_dtensors']} sharded tensors alive after train() "
                  f"({rank['sharding']['dtensors']} sharded parameters)")
            assert rank["live_dtensors"] == 0, name


def test_gradient_accumulation_under_fsdp_matches_ddp_and_reduces_once_per_step(chained):
    folder, runs = chained
    ddp, fsdp = runs["mae_ga_ddp"], runs["mae_ga_fsdp"]
    for rank in (0, 1):
        assert fsdp[rank]["global_step"] == GA_STEPS and len(fsdp[rank]["steps"]) == 2 * GA_STEPS
        assert [s["ids"] for s in fsdp[rank]["steps"]] == [s["ids"] for s in ddp[rank]["steps"]]
        difference = max(abs(a["loss"] - b["loss"]) for a, b in zip(fsdp[rank]["steps"], ddp[rank]["steps"]))
        print(f"gradient accumulation 2, rank {rank}: max |FSDP2 - DDP| micro-batch loss = {difference:.2e}")
        assert difference < 1e-5
    saved = [load_file(folder / name / "model.safetensors") for name in ("mae_ga_ddp", "mae_ga_fsdp")]
    assert saved[0].keys() == saved[1].keys()
    weights = max((saved[0][k] - saved[1][k]).abs().max().item() for k in saved[0])
    print(f"gradient accumulation 2: max |FSDP2 - DDP| weight = {weights:.2e}")
    assert weights < 1e-5
    # one reduce-scatter per unit (3 blocks and the root) per optimizer step, not per micro-batch: as without
    # accumulation
    for ga, plain in zip(fsdp, runs["mae_fsdp"]):
        units = len(ga["sharding"]["units"])
        print(f"reduce-scatters: {ga['counts']['reduce_scatter']} over {GA_STEPS} steps of 2 micro-batches, "
              f"{plain['counts']['reduce_scatter']} over {STEPS} steps without accumulation ({units} units)")
        assert ga["counts"]["reduce_scatter"] == units * GA_STEPS
        assert plain["counts"]["reduce_scatter"] == units * STEPS
    assert "reduce_scatter" not in ddp[0].get("counts", {})


def test_llm2clip_under_fsdp_keeps_the_frozen_llm_apart_and_matches_ddp(chained, llm_dir):
    folder, runs = chained
    ddp, fsdp = runs["clip_llm_ddp"], runs["clip_llm_fsdp"]
    sharding = fsdp[0]["sharding"]
    assert sharding["units"].count("FSDPLlamaDecoderLayer") == 2 and "FSDPLlamaModel" in sharding["units"]
    assert sharding["units"][0] == "FSDPXrayCLIPModel"
    # issue 12's rule: no unit mixes frozen and trainable parameters; the LLM's units are frozen, the root trains
    assert all(len(unit) == 1 for unit in sharding["unit_trainable"]), sharding
    units = dict(zip(sharding["units"], sharding["unit_trainable"]))
    assert units["FSDPLlamaModel"] == [False] and units["FSDPLlamaDecoderLayer"] == [False]
    assert units["FSDPXrayCLIPModel"] == [True] and units["FSDPXrayVisualLayer"] == [True]
    for rank in fsdp + ddp:
        assert rank["frozen_params"] > 0 and rank["frozen_with_grad"] == 0
    for rank in (0, 1):
        got, want = [s["loss"] for s in fsdp[rank]["steps"]], [s["loss"] for s in ddp[rank]["steps"]]
        difference = max(abs(a - b) for a, b in zip(got, want))
        print(f"LLM2CLIP rank {rank}: max |FSDP2 - DDP| loss = {difference:.2e} over {len(got)} steps")
        assert len(got) == 3 and difference < 1e-5
    # the frozen LLM is saved unchanged, the adapter trained
    llm = LlamaForCausalLM.from_pretrained(llm_dir).model.state_dict()
    clip = XrayCLIPModel.from_pretrained(folder / "clip_llm_fsdp")
    for name, value in clip.text_model.llm.state_dict().items():
        assert torch.equal(value, llm[name]), name
    ddp_model = XrayCLIPModel.from_pretrained(folder / "clip_llm_ddp")  # the adapter trained as under DDP
    for (name, value), other in zip(clip.text_model.adapter.state_dict().items(),
                                    ddp_model.text_model.adapter.state_dict().values()):
        torch.testing.assert_close(value, other, atol=1e-5, rtol=0, msg=name)


def test_corrupt_sample_on_one_rank_is_skipped_and_both_ranks_take_the_same_steps(chained):
    _, runs = chained
    ranks = runs["mae_corrupt"]
    assert [r["global_step"] for r in ranks] == [5, 5] and [len(r["steps"]) for r in ranks] == [5, 5]
    seen = [[i for s in r["steps"][:4] for i in s["ids"]] for r in ranks]  # the first epoch of each rank
    assert not set(seen[0]) & set(seen[1])
    assert "img11" not in {i for r in ranks for s in r["steps"] for i in s["ids"]}
    assert all(s["ids"][0][:3] == "img" for r in ranks for s in r["steps"])
    shards = [{int(i[3:]) // 8 for i in ids} for ids in seen]
    assert len(shards[0]) == len(shards[1]) == 1 and shards[0] != shards[1]  # one Parquet shard per rank
    assert ranks[0]["weights"] == ranks[1]["weights"]


@pytest.mark.parametrize("stage", ["hashtag", "distill", "mntp", "simcse"])
def test_every_other_stage_trains_under_ddp_and_fsdp(chained, stage):
    folder, runs = chained
    for kind in ("ddp", "fsdp"):
        ranks = runs[f"{stage}_{kind}"]
        assert [(r["process_index"], r["world_size"], r["global_step"]) for r in ranks] == [(0, 2, 2), (1, 2, 2)]
        assert ranks[0]["weights"] == ranks[1]["weights"]
        assert all(torch.isfinite(torch.tensor(s["loss"])) for r in ranks for s in r["steps"])
        assert (folder / f"{stage}_{kind}" / "model.safetensors").is_file()
        assert AutoModel.from_pretrained(folder / f"{stage}_{kind}") is not None
    fsdp = runs[f"{stage}_fsdp"][0]["sharding"]
    assert fsdp["units"] and fsdp["local"] < fsdp["full"]
    assert runs[f"{stage}_fsdp"][0]["plain_after_train"]


def test_compress_trains_one_projection_under_ddp_and_fsdp_like_one_process(chained, references):
    """The compress stage's projection goes through the DDP / FSDP2 wrapper (its gradients are synchronised) and its
    similarity loss sees the global batch: both ranks end with the same weights, the one-process run's."""
    folder, runs = chained
    single, results = references
    key = "embedding_compression.projection.weight"
    want = single_losses(results["compress"])
    reference = load_file(single / "compress" / "model.safetensors")
    source = load_file(folder / "clip_ddp" / "model.safetensors")
    for kind in ("ddp", "fsdp"):
        ranks = runs[f"compress_{kind}"]
        assert [(r["process_index"], r["world_size"], r["global_step"]) for r in ranks] == [(0, 2, 3), (1, 2, 3)]
        assert ranks[0]["weights"] == ranks[1]["weights"], kind  # one projection, not one per rank
        got = losses(ranks)
        difference = max(abs(a - b) for a, b in zip(got, want))
        print(f"compress {kind}: max |loss - one process| = {difference:.2e} over {len(got)} steps")
        assert len(got) == len(want) == 3 and difference < 1e-5, (kind, got, want)
        saved = load_file(folder / f"compress_{kind}" / "model.safetensors")
        weight = (saved[key] - reference[key]).abs().max().item()
        print(f"compress {kind}: max |projection - one process| = {weight:.2e}")
        assert weight < 1e-5 and not torch.equal(saved[key], saved[key].new_zeros(saved[key].shape))
        for name, value in source.items():  # the towers are the source checkpoint's
            assert torch.equal(saved[name], value), name
        model = AutoModel.from_pretrained(folder / f"compress_{kind}")
        assert isinstance(model, XrayCLIPModel) and bool(model.embedding_compression.int8_calibrated)
    sharding = runs["compress_fsdp"][0]["sharding"]
    assert sharding["units"] == ["FSDPXrayEmbeddingCompression"] and sharding["dtensors"] == sharding["params"] == 1
    assert sharding["local"] < sharding["full"]
    assert (folder / "compress_fsdp" / "checkpoint-2" / "model.safetensors").is_file()  # saved while sharded
    # resumed under FSDP2 from the DDP run's checkpoint: the last step is the DDP run's
    for resumed, before in zip(runs["compress_fsdp_from_ddp"], runs["compress_ddp"]):
        assert resumed["global_step"] == 3 and len(resumed["steps"]) == 1
        assert abs(resumed["steps"][0]["loss"] - before["steps"][2]["loss"]) < 1e-5


def test_accelerate_launch_with_the_shipped_fsdp2_and_ddp_configs(tmp_path):
    config = write(tmp_path, "mae", with_training(MAE, max_steps=2, save_strategy="no"))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    fsdp = run_worker(tmp_path, "fsdp2", [["train", "mae", "--config", config, "--output-dir", str(tmp_path / "a")]],
                      launcher=[*accelerate, "--config_file", os.path.join(CONFIGS, "fsdp2.yaml")])
    for rank in fsdp:
        run = rank["runs"][0]
        assert run["world_size"] == 2 and run["global_step"] == 2
        assert run["sharding"]["dtensors"] == run["sharding"]["params"]  # real sharding on CPU processes
        assert run["sharding"]["local"] < 0.6 * run["sharding"]["full"]
    assert (tmp_path / "a" / "model.safetensors").is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    accelerate[-1] = str(free_port())
    proc = subprocess.run([*accelerate, "--config_file", os.path.join(CONFIGS, "ddp.yaml"), "-m", "xray_hf.cli",
                           "train", "mae", "--config", config, "--output-dir", str(tmp_path / "b")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["global_step"] == 2 and proc.stdout.count("mae finished") == 1
