"""The stage trainers under real DDP: `torchrun --nproc_per_node 2 -m xray_hf.cli train ...` on CPU (gloo).

Two launches, each two ranks of one thread: (1) an MAE run over images and videos that crosses an epoch boundary,
checkpointing at step 3, then a hashtag run from its output (stages chained in one process, as a pipeline does);
(2) the MAE run resumed from step 3 into a new directory. A small wrapper script runs the CLI and records what
each rank's trainer did (sample ids and exact loss of every step, a hash of the final weights, every
`save_pretrained` call) without touching library code.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from xray_hf import XrayVisualForHashtagClassification, XrayVisualForPreTraining
from xray_hf.data import load_embedded
from xray_hf.data.tables import take_samples
from xray_hf.trainers.resume import DATA_STATE_NAME

pytestmark = pytest.mark.slow  # two torchrun launches: ~50 s on 2 cores, mostly imports

WORKER = r'''
"""Run `xray-hf` commands in this rank and record what the trainers did into <prefix>-rank<r>.json."""
import hashlib, json, os, sys

from transformers import PreTrainedModel

from xray_hf.cli import main
from xray_hf.trainers.base import XrayTrainer


def weights_hash(model):
    state = model.state_dict()
    return hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()


record = {"runs": [], "saves": []}
trainer_init, save_pretrained = XrayTrainer.__init__, PreTrainedModel.save_pretrained


def recording_init(self, *args, **kwargs):
    trainer_init(self, *args, **kwargs)
    run = {"world_size": self.args.world_size, "process_index": self.args.process_index, "steps": []}
    record["runs"].append(run)
    compute_loss, train = self.compute_loss, self.train

    def recording_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        out = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            run["steps"].append({"ids": list(inputs["id"]), "loss": (out[0] if return_outputs else out).item()})
        return out

    def recording_train(*args, **kwargs):
        output = train(*args, **kwargs)
        run["global_step"], run["weights"] = self.state.global_step, weights_hash(self.model)
        return output

    self.compute_loss, self.train = recording_compute_loss, recording_train


def recording_save(self, save_directory, *args, **kwargs):
    record["saves"].append(os.path.abspath(save_directory))
    return save_pretrained(self, save_directory, *args, **kwargs)


XrayTrainer.__init__, PreTrainedModel.save_pretrained = recording_init, recording_save
for argv in json.loads(sys.argv[2]):
    if main(argv) != 0:
        sys.exit(1)
with open(f"{sys.argv[1]}-rank{os.environ['RANK']}.json", "w") as f:
    json.dump(record, f)
'''

MODEL = {"preset": "tiny", "config": {
    "image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
}}
IMAGES, VIDEOS = 16, 8  # per epoch and rank: 2 image batches of 4 and 2 video batches of 2 -> 4 steps
MAE = {
    "stage": "mae", "seed": 0, "model": MODEL,
    "data": {
        "resolution": 16,
        "image": {"name": "mnist", "batch_size": 4, "max_samples": IMAGES},
        "video": {"name": "moving-shapes", "batch_size": 2, "max_samples": VIDEOS, "num_frames": 4},
        "eval": {"name": "mnist", "split": "validation", "max_samples": 8},
        "augment": {"flip_p": 0.5, "blur_p": 0.0},  # random crops and flips: augmentation must resume too
    },
    "training": {"output_dir": "unused", "max_steps": 6, "save_steps": 3, "logging_steps": 1,
                 "eval_strategy": "steps", "eval_steps": 3, "learning_rate": 1e-3, "warmup_steps": 1,
                 "report_to": [], "disable_tqdm": True},
}
HASHTAG = {
    "stage": "hashtag", "seed": 0, "vocabulary": {"min_count": 2},
    "data": {"resolution": 16, "image": {"name": "openmoji", "batch_size": 4, "max_samples": 32},
             "eval": {"name": "openmoji", "split": "validation", "max_samples": 8}},
    "training": {"output_dir": "unused", "max_steps": 2, "report_to": [], "disable_tqdm": True,
                 "hashtag_loss": "bce"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder, *args: str) -> subprocess.CompletedProcess:
    """`torchrun` with 2 CPU ranks of one thread each, gloo on loopback, running `args`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False)


def torchrun(folder, name: str, *commands: list[str]) -> list[dict]:
    """Run the CLI `commands` one after another in 2 CPU ranks; return each rank's record."""
    worker = folder / "worker.py"
    worker.write_text(WORKER)
    proc = launch(folder, str(worker), str(folder / name), json.dumps([list(c) for c in commands]))
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    (folder / f"{name}.out").write_text(proc.stdout)
    return [json.loads((folder / f"{name}-rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Launch 1: MAE 6 steps (checkpoints 3 and 6), then hashtag from it. Launch 2: MAE resumed at step 3."""
    folder = tmp_path_factory.mktemp("ddp")
    mae, hashtag = folder / "mae.yaml", folder / "hashtag.yaml"
    mae.write_text(yaml.safe_dump(MAE))
    hashtag.write_text(yaml.safe_dump({**HASHTAG, "model": {"from_pretrained": str(folder / "full")},
                                       "training": {**HASHTAG["training"], "output_dir": str(folder / "hashtag")}}))
    full = torchrun(folder, "full",
                    ["train", "mae", "--config", str(mae), "--output-dir", str(folder / "full")],
                    ["train", "hashtag", "--config", str(hashtag)])
    resumed = torchrun(folder, "resumed", ["train", "mae", "--config", str(mae), "--output-dir",
                                           str(folder / "resumed"), "--resume", str(folder / "full" / "checkpoint-3")])
    return folder, full, resumed


def weights_hash(model) -> str:
    state = model.state_dict()
    return hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()


def test_ranks_read_disjoint_samples_in_lockstep(runs):
    _, full, _ = runs
    mae = [record["runs"][0] for record in full]
    assert [(r["process_index"], r["world_size"]) for r in mae] == [(0, 2), (1, 2)]  # real DDP, not 2 x rank 0
    assert [r["global_step"] for r in mae] == [6, 6] and [len(r["steps"]) for r in mae] == [6, 6]
    image_ids = set(take_samples(load_embedded("mnist", "train"), IMAGES)["id"])  # the rows max_samples keeps
    video_ids = set(take_samples(load_embedded("moving-shapes", "train"), VIDEOS)["id"])
    for step in range(6):  # every step has one modality, the same on both ranks (one DDP graph)
        kinds = [{"image" if i in image_ids else "video" if i in video_ids else "?" for i in r["steps"][step]["ids"]}
                 for r in mae]
        assert kinds[0] == kinds[1] and len(kinds[0]) == 1 and "?" not in kinds[0], (step, kinds)
    for epoch in (range(4), range(4, 6)):  # the run crosses the end of the first epoch
        seen = [[i for s in epoch for i in r["steps"][s]["ids"]] for r in mae]
        assert not set(seen[0]) & set(seen[1])
        assert all(len(ids) == len(set(ids)) for ids in seen)
    first_epoch = {i for r in mae for s in range(4) for i in r["steps"][s]["ids"]}
    assert first_epoch == image_ids | video_ids  # together the ranks read every sample once
    assert mae[0]["steps"][0]["loss"] != mae[1]["steps"][0]["loss"]  # different data, different masks
    assert mae[0]["weights"] == mae[1]["weights"]  # DDP averaged the gradients: identical models


def test_model_and_checkpoints_saved_once_with_per_rank_data_state(runs):
    folder, full, _ = runs
    out = folder / "full"
    saves = [[os.path.relpath(p, folder) for p in record["saves"]] for record in full]
    assert saves[1] == []  # rank 1 never writes a model
    assert {"full/checkpoint-3", "full/checkpoint-6", "full", "hashtag"} <= set(saves[0])
    assert len(saves[0]) == len(set(saves[0]))  # each checkpoint and each final model written once
    model = XrayVisualForPreTraining.from_pretrained(out)
    assert weights_hash(model) == full[0]["runs"][0]["weights"]
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 6 and set(results["eval"]) == {"masked_loss", "patch_mean_loss"}
    assert (out / "reconstruction.png").is_file()
    printed = (folder / "full.out").read_text()
    assert printed.count("mae finished") == printed.count("hashtag finished") == 1  # rank 0 reports, once
    for step in (3, 6):
        states = [json.loads((out / f"checkpoint-{step}" / DATA_STATE_NAME.format(rank=r)).read_text())
                  for r in (0, 1)]
        assert states[0]["epoch"] == states[1]["epoch"] == (0 if step == 3 else 1)
        assert states[0]["loader"]["step"] == states[1]["loader"]["step"] == step % 4  # schedule position
        assert (out / f"checkpoint-{step}" / "rng_state_1.pth").is_file()


def test_resume_under_two_ranks_reproduces_the_uninterrupted_run_bitwise(runs):
    _, full, resumed = runs
    for rank in (0, 1):
        before, after = full[rank]["runs"][0], resumed[rank]["runs"][0]
        assert after["world_size"] == 2 and after["global_step"] == 6
        assert after["steps"] == before["steps"][3:]  # same samples, exactly the same losses (masks, augmentation)
        assert after["weights"] == before["weights"]  # gloo sums 2 ranks exactly: bitwise equal weights


def test_hashtag_stage_trains_and_evaluates_under_ddp(runs):
    folder, full, _ = runs
    hashtag = [record["runs"][1] for record in full]
    assert [(r["process_index"], r["world_size"], r["global_step"]) for r in hashtag] == [(0, 2, 2), (1, 2, 2)]
    assert hashtag[0]["weights"] == hashtag[1]["weights"]
    assert not {i for s in hashtag[0]["steps"] for i in s["ids"]} & {i for s in hashtag[1]["steps"] for i in s["ids"]}
    results = json.loads((folder / "hashtag" / "results.json").read_text())
    assert 0.0 <= results["eval"]["eval_mAP"] <= 1.0  # the final evaluation gathered from both ranks
    model = XrayVisualForHashtagClassification.from_pretrained(folder / "hashtag")
    assert model.config.num_labels == results["vocabulary_size"] and weights_hash(model) == hashtag[0]["weights"]
