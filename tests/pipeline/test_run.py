"""`xray-hf pipeline`: the shipped config resolves into the stages' run configs; a small pipeline of every step runs
into one directory, is interrupted (Ctrl-C) inside a stage and continues to the same result; report and cards."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel

from xray_hf.pipeline import load_pipeline_config, preset_path, render_report_md, run_pipeline
from xray_hf.pipeline.state import STATE_FILE
from xray_hf.run_config import RunConfig
from xray_hf.stages import STAGES
from xray_hf.trainers.run import run_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/replay.py
from replay import ReplayLoader, rank_mean_losses, union_batches  # noqa: E402

CONFIGS = preset_path("tiny").parent


# ------------------------------------------------------------------------------------------ a small pipeline
VISION = {"image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 64}
AUGMENT = {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0, "crop_scale": [0.8, 1.0]}
IMAGES = {"name": "openmoji", "split": "train", "batch_size": 16, "max_samples": 64}
VIDEOS = {"name": "moving-shapes", "split": "train", "batch_size": 8, "max_samples": 16, "num_frames": 4}
STEPS = {"max_steps": 4, "warmup_steps": 1, "logging_steps": 1, "save_steps": 2, "eval_steps": 4,
         "learning_rate": 2e-3, "per_device_eval_batch_size": 64}


def small_pipeline() -> dict:
    """Every step of the shipped pipeline on a few samples: `base:` for the backbone stages, full sections (a
    plain text tower instead of SmolLM2) for the CLIP ones."""
    data = {"resolution": 16, "augment": AUGMENT, "num_workers": 0}
    return {
        "seed": 0,
        "stages": {
            "mae": {"base": str(CONFIGS / "mae_tiny.yaml"),
                    "model": {"config": {**VISION, "decoder_hidden_size": 32, "decoder_num_attention_heads": 2,
                                         "decoder_intermediate_size": 64, "decoder_num_hidden_layers": 1}},
                    "data": {**data, "image": {"name": "mnist", "split": "train", "batch_size": 16, "max_samples": 64},
                             "video": VIDEOS, "eval": {"name": "mnist", "split": "validation", "max_samples": 32}},
                    "training": STEPS},
            "hashtag": {"base": str(CONFIGS / "hashtag_tiny.yaml"), "model": {"from_pretrained": "{output}/mae"},
                        "vocabulary": {"min_count": 2},
                        "data": {**data, "image": IMAGES, "video": {**VIDEOS, "hashtags_from": ["shape", "direction"]},
                                 "eval": {"name": "openmoji", "split": "validation", "max_samples": 32}},
                        "training": {**STEPS, "logging_steps": 1}},
            "clip": {
                "model": {"vision": {"from_pretrained": "{output}/hashtag"},
                          "text": {"preset": "tiny", "tokenizer": "smollm2",
                                   "config": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                              "max_position_embeddings": 32}},
                          "config": {"projection_dim": 16, "slip_hidden_size": 32, "slip_projection_dim": 8}},
                "captions": {"column": "caption", "hashtag_column": "hashtags"},
                "data": {**data, "image": IMAGES, "video": {**VIDEOS, "hashtags_from": ["shape", "direction"]},
                         "eval": [{"name": "openmoji", "split": "validation", "max_samples": 32}]},
                "training": {**STEPS, "optimizer": "adamw", "resolution_schedule": [[0, 8], [2, 16]]}},
            "distill": {
                "teacher": {"from_pretrained": "{output}/clip"},
                "model": {"vision": {"preset": "tiny", "config": {**VISION, "hidden_size": 16,
                                                                  "num_hidden_layers": 1, "intermediate_size": 32}}},
                "captions": {"column": "caption"},
                "data": {**data, "image": IMAGES, "video": VIDEOS, "video_fraction": 0.25,
                         "eval": [{"name": "openmoji", "split": "validation", "max_samples": 32}]},
                "training": {**STEPS, "optimizer": "adamw"}},
            "compress": {
                "model": {"from_pretrained": "{output}/clip",
                          "compression": {"compressed_dim": 8, "matryoshka_dims": [4]}},
                "texts": {"column": "caption"},
                "data": {"image": IMAGES, "eval": [{"name": "openmoji", "split": "validation", "max_samples": 32}]},
                "training": {"max_steps": 4, "optimizer": "adamw", "learning_rate": 1e-3, "logging_steps": 1,
                             "per_device_train_batch_size": 32, "save_strategy": "no"}},
        },
        "semantic_ids": {"model": "clip", "dataset": "openmoji", "levels": 2, "codebook_size": 4, "max_samples": 32,
                         "epochs": 2},
        "evaluation": [
            {"model": "clip", "task": "zero-shot", "dataset": "moving-shapes", "split": "test", "num_frames": 4},
            {"model": "clip", "task": "retrieval", "dataset": "openmoji", "split": "test", "max_samples": 24},
            {"model": "hashtag", "task": "linear-probe", "dataset": "mnist", "split": "test", "max_samples": 40,
             "max_train_samples": 60},
        ],
    }


def _default_sigint() -> None:
    # a child inherits an ignored SIGINT (as under nohup), and an earlier test in the same pytest process may leave
    # it ignored: the child must take Ctrl-C as a user's shell delivers it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "xray_hf.cli", "pipeline", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_sigint, **kwargs)


def _losses(results_path) -> list[float]:
    with open(results_path) as f:
        return [row["loss"] for row in json.load(f)["log_history"] if "loss" in row]


@pytest.mark.slow
def test_pipeline_runs_every_step_and_continues_after_ctrl_c_and_a_kill(tmp_path):
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(small_pipeline(), sort_keys=False))
    out = tmp_path / "run"

    # Ctrl-C while the hashtag stage trains, right after its first checkpoint is complete
    process = _cli("--config", str(config_path), "--output", str(out))
    checkpoint = out / "hashtag" / "checkpoint-2" / "data_state-rank0.json"
    deadline = time.time() + 600
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert checkpoint.exists(), process.communicate()[0][-3000:]
    process.send_signal(signal.SIGINT)
    # the tiny pipeline finishes seconds after that checkpoint: on a starved machine it can beat the signal
    assert process.poll() in (None, 130), "the pipeline finished before the test could interrupt it"
    log = process.communicate(timeout=120)[0]
    assert process.returncode == 130, log[-3000:]
    assert "rerun the same command to continue" in log
    state = json.loads((out / STATE_FILE).read_text())
    assert state["steps"]["mae"]["status"] == "done" and state["steps"]["hashtag"]["status"] == "running"
    assert not (out / "hashtag" / "results.json").exists()
    mae_weights = (out / "mae" / "model.safetensors").stat().st_mtime_ns

    # a kill (SIGKILL, no clean-up) as soon as the clip stage starts writing its first checkpoint
    process = _cli("--config", str(config_path), "--output", str(out))
    checkpoint = out / "clip" / "checkpoint-2"
    deadline = time.time() + 600
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert checkpoint.exists(), process.communicate()[0][-3000:]
    process.kill()
    process.communicate(timeout=60)
    state = json.loads((out / STATE_FILE).read_text())
    assert state["steps"]["hashtag"]["status"] == "done" and state["steps"]["clip"]["status"] == "running"

    report = run_pipeline(out, config=config_path)

    # the finished stage was kept, the interrupted ones resumed (or restarted) to the uninterrupted runs' losses
    assert (out / "mae" / "model.safetensors").stat().st_mtime_ns == mae_weights
    for name in ("hashtag", "clip"):
        reference = load_pipeline_config(config_path)["stages"][name]
        reference = json.loads(json.dumps(reference).replace("{output}", str(out)))
        reference["training"].update(output_dir=str(tmp_path / f"{name}_uninterrupted"), report_to=[])
        run_stage(name, reference)
        resumed = _losses(out / name / "results.json")
        assert resumed == _losses(tmp_path / f"{name}_uninterrupted" / "results.json"), name
        assert len(resumed) == 4

    # one entry per stage and semantic IDs, with metrics; evaluations attached to the stage evaluated
    assert set(report) == {"mae", "hashtag", "clip", "distill", "compress", "semantic_ids"}
    assert json.loads((out / "report.json").read_text()) == report
    for name in STAGES.keys() & report.keys():
        entry = report[name]
        assert entry["metrics"]["global_step"] == 4 and entry["metrics"]["train_loss"] > 0
        assert entry["parents"] == {"mae": [], "hashtag": ["mae"]}.get(name, entry["parents"])
        model = AutoModel.from_pretrained(out / name)  # every checkpoint loads with plain transformers
        assert model.config.model_type == entry["model_type"]
        assert any((out / name / "runs").rglob("events.out.tfevents.*"))  # TensorBoard logs
    assert report["clip"]["parents"] == ["hashtag", "mae"]
    tasks = {(run["task"], run["dataset"]) for run in report["clip"]["evaluation"]}
    assert tasks == {("zero-shot", "moving-shapes"), ("retrieval", "openmoji")}
    assert [run["task"] for run in report["hashtag"]["evaluation"]] == ["linear-probe"]
    zero_shot = json.loads((out / "eval" / "clip_zero-shot_moving-shapes_test.json").read_text())
    assert report["clip"]["evaluation"][0]["metrics"] == zero_shot["metrics"]
    assert report["semantic_ids"]["metrics"]["num_items"] == 32

    # report.md shows the numbers and every plot it names exists: losses, reconstructions, confusion, recall@k, grid
    markdown = (out / "report.md").read_text()
    plots = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    for expected in ("plots/mae_loss.png", "mae/reconstruction.png", "eval/clip_zero-shot_moving-shapes_test_confusion.png",
                     "eval/clip_retrieval_openmoji_test_recall_at_k.png",
                     "eval/clip_retrieval_openmoji_test_retrieval_grid.png"):
        assert expected in plots
    assert all((out / plot).is_file() for plot in plots)
    assert f"{report['hashtag']['metrics']['train_loss']:.4g}" in markdown

    # every checkpoint has a model card whose model-index carries its evaluations
    card = ModelCard.load(out / "clip" / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    values = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values[("openmoji", "image_retrieval_recall@1")] == report["clip"]["evaluation"][1]["metrics"][
        "image_retrieval_recall@1"]
    assert ModelCard.load(out / "mae" / "README.md").data.pipeline_tag == "image-feature-extraction"

    # a rerun of a finished pipeline does nothing; a changed stage is refused until restarted
    seconds = json.loads((out / STATE_FILE).read_text())["steps"]
    assert run_pipeline(out, config=config_path) == report
    assert json.loads((out / STATE_FILE).read_text())["steps"] == seconds
    changed = small_pipeline()
    changed["stages"]["compress"]["training"]["max_steps"] = 3
    config_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(ValueError, match="settings of step 'compress' changed.*--restart compress"):
        run_pipeline(out, config=config_path)
    clip_weights = (out / "clip" / "model.safetensors").stat().st_mtime_ns
    restarted = run_pipeline(out, config=config_path, restart=["compress"])
    assert restarted["compress"]["metrics"]["global_step"] == 3
    assert (out / "compress.previous").is_dir()
    for name in ("mae", "hashtag", "clip", "distill"):  # kept: the same entries, the same evaluations, not retrained
        assert restarted[name] == report[name]
    assert (out / "clip" / "model.safetensors").stat().st_mtime_ns == clip_weights


WORKER = r'''
"""
Run `xray-hf pipeline` in this rank; record per training stage (its folder name) each step's loss, inputs and random
draws (MAE masks, denoiser noise) and a hash of the trained weights, into <prefix>-rank<r>.json / .safetensors.
"""
import hashlib, json, os, sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import Trainer

from xray_hf.cli import main
from xray_hf.modeling.clip import XrayCLIPDenoiser
from xray_hf.trainers.mae import MAETrainer

record, tensors, current = {}, {}, {}
trainer_init, mask_noise, denoise = Trainer.__init__, MAETrainer.mask_noise, XrayCLIPDenoiser.forward


def weights_hash(model):
    state = model.state_dict()
    return hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()


def keep(key, value):
    run = record[current["name"]]
    tensors[f"{current['name']}.{len(run['steps'])}.{key}"] = value.detach().cpu().contiguous()


def recording_init(self, *args, **kwargs):
    trainer_init(self, *args, **kwargs)
    name = current["name"] = os.path.basename(os.path.normpath(self.args.output_dir))
    run = record[name] = {"world_size": self.args.world_size, "process_index": self.args.process_index, "steps": []}
    compute_loss, train = self.compute_loss, self.train

    def recording_compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        out = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            for key, value in inputs.items():
                if torch.is_tensor(value):
                    keep(key, value)
            run["steps"].append({"ids": [str(i) for i in inputs.get("id", [])],
                                 "loss": (out[0] if return_outputs else out).item()})
        return out

    def recording_train(*args, **kwargs):
        output = train(*args, **kwargs)
        run["global_step"], run["weights"] = self.state.global_step, weights_hash(self.model)
        return output

    self.compute_loss, self.train = recording_compute_loss, recording_train


def recording_noise(self, model, pixel_values):
    noise = mask_noise(self, model, pixel_values)
    if model.training:
        keep("noise", noise)
    return noise


def recording_denoise(self, embedding, noise=None):
    if noise is None and self.training:
        noise = torch.randn(embedding.shape[0], self.norm.normalized_shape[0], device=embedding.device)
        keep("denoise_noise", noise)
    return denoise(self, embedding, noise)


Trainer.__init__, MAETrainer.mask_noise, XrayCLIPDenoiser.forward = recording_init, recording_noise, recording_denoise
status = main(sys.argv[2:])
rank = os.environ["RANK"]
with open(f"{sys.argv[1]}-rank{rank}.json", "w") as f:
    json.dump(record, f)
save_file(tensors, f"{sys.argv[1]}-rank{rank}.safetensors")
if dist.is_initialized():
    dist.barrier()
sys.exit(status)
'''


def without_key_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with every attention layer's key bias zeroed. It has no effect on the layer's output (a bias on
    the keys adds one constant to all of a query's logits, which the softmax removes), so its loss gradient is zero
    and the optimizers move it by rounding noise (Lion by +-lr): no two runs agree on it, and nothing depends on it."""
    out = {}
    for key, value in state.items():
        value = value.clone()
        if key.endswith("qkv.bias"):
            value.view(3, -1)[1] = 0
        elif key.endswith(".kv.bias"):
            value.view(2, -1)[0] = 0
        elif key.endswith("k_proj.bias"):
            value.zero_()
        out[key] = value
    return out


def replay_stage(name: str, section: dict, ranks: list[dict], output_dir, patch: pytest.MonkeyPatch) -> dict:
    """One process trains stage `name` from the same parents on the union of the ranks' batches, with their random
    draws (MAE masks, denoiser noise); returns its results."""
    from xray_hf.modeling.clip import XrayCLIPDenoiser
    from xray_hf.trainers import clip_run, compression, distill_run, hashtag_run, mae, mae_run

    batches = union_batches(ranks)
    noise = [batch.pop("noise", None) for batch in batches]
    denoise_noise = iter([batch.pop("denoise_noise", None) for batch in batches])
    for module in (mae_run, hashtag_run, clip_run, distill_run):
        patch.setattr(module, "build_train_loader", lambda *a, **k: ReplayLoader(batches))
    patch.setattr(compression.CompressionTrainer, "get_train_dataloader", lambda self: ReplayLoader(batches))
    patch.setattr(mae.MAETrainer, "mask_noise",
                  lambda self, model, pixels: noise[self.state.global_step] if model.training else None)
    denoise = XrayCLIPDenoiser.forward
    patch.setattr(XrayCLIPDenoiser, "forward", lambda self, embedding, noise=None: denoise(
        self, embedding, next(denoise_noise) if noise is None and self.training else noise))
    config = json.loads(json.dumps(section))
    config["training"].update(output_dir=str(output_dir), save_strategy="no", eval_strategy="no", report_to=[])
    return run_stage(name, config)


@pytest.mark.slow
def test_pipeline_under_torchrun_trains_every_stage_on_both_ranks(tmp_path):
    """The same command under `torchrun` (2 CPU ranks, gloo): every stage trains on both ranks into one model (the
    same weights on both), the one a single process trains from the same parents on the same global batches; the
    main process alone writes the state, semantic IDs, evaluations, report and cards, and every rank exits cleanly."""
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(small_pipeline(), sort_keys=False))
    out = tmp_path / "run"
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
         "127.0.0.1", "--master_port", str(port), str(worker), str(tmp_path / "record"), "pipeline", "--config",
         str(config_path), "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"mae", "hashtag", "clip", "distill", "compress", "semantic_ids"}
    for name in ("mae", "hashtag", "clip", "distill"):
        checkpoint = out / name / "checkpoint-2"
        assert {p.name for p in checkpoint.glob("data_state-rank*.json")} == {"data_state-rank0.json",
                                                                             "data_state-rank1.json"}
    assert {(run["task"], run["dataset"]) for run in report["clip"]["evaluation"]} == {
        ("zero-shot", "moving-shapes"), ("retrieval", "openmoji")}
    assert ModelCard.load(out / "clip" / "README.md").data.eval_results
    assert AutoModel.from_pretrained(out / "distill") is not None

    records = []
    for rank in (0, 1):
        record = json.loads((tmp_path / f"record-rank{rank}.json").read_text())
        tensors = load_file(tmp_path / f"record-rank{rank}.safetensors")
        for name, run in record.items():
            run["tensors"] = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == name}
        records.append(record)
    sections = json.loads(json.dumps(load_pipeline_config(config_path)["stages"]).replace("{output}", str(out)))
    assert list(records[0]) == list(records[1]) == list(sections)
    with pytest.MonkeyPatch.context() as patch:
        for name, section in sections.items():
            ranks = [record[name] for record in records]
            assert [(r["process_index"], r["world_size"], r["global_step"]) for r in ranks] == [(0, 2, 4), (1, 2, 4)]
            assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 4, name
            assert ranks[0]["weights"] == ranks[1]["weights"], f"{name}: the ranks trained different weights"
            assert report[name]["metrics"]["global_step"] == 4
            single = replay_stage(name, section, ranks, tmp_path / "single" / name, patch)
            got, want = rank_mean_losses(ranks), [e["loss"] for e in single["log_history"] if "loss" in e]
            loss_gap = max(abs(a - b) for a, b in zip(got, want))
            saved, reference = (without_key_biases(load_file(folder / name / "model.safetensors"))
                                for folder in (out, tmp_path / "single"))
            assert saved.keys() == reference.keys()
            weight_gap = max((saved[k].double() - reference[k].double()).abs().max().item() for k in saved)
            print(f"{name}: max |loss - one process| {loss_gap:.2e}, max |weight - one process| {weight_gap:.2e}")
            assert len(got) == len(want) == 4 and loss_gap < 1e-5, (name, got, want)
            assert weight_gap < 1e-5, name


def tiny_clip_checkpoint(path) -> None:
    """A random tiny CLIP checkpoint with its processor and tokenizer (what an evaluation loads)."""
    from xray_hf import (XrayCLIPConfig, XrayCLIPModel, XrayCLIPProcessor, XrayTextConfig, XrayVisualConfig,
                         XrayVisualImageProcessor, XrayVisualVideoProcessor)
    from xray_hf.convert import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    vision = XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4, num_frames=4, hidden_size=32,
                                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    text = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=16, max_position_embeddings=32,
                                      hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = XrayCLIPConfig(vision_config=vision, text_config=text, projection_dim=16, slip_weight=0.0, lambda_den=0.0)
    torch.manual_seed(0)
    XrayCLIPModel(config).save_pretrained(path)
    XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=16),
                                XrayVisualVideoProcessor(size=16, num_frames=4), tokenizer).save_pretrained(path)


def test_every_evaluation_runs_under_its_own_name_and_a_path_dataset_is_one_file_name(tmp_path):
    """Two `evaluation:` entries that differ only in an option both run and are reported apart (report.json,
    report.md, the model card and its model-index); a dataset given as a path is one safe component of the
    result's file name, so the result and its plots sit in eval/ where the report links them."""
    from xray_hf.data import load_embedded, write_shards
    from xray_hf.model_card import write_model_card
    from xray_hf.pipeline import build_report
    from xray_hf.pipeline.state import Pipeline, Ranks
    from xray_hf.pipeline.steps import EvalStep

    out = tmp_path / "run"
    tiny_clip_checkpoint(out / "clip")
    source = tmp_path / "my photos" / "set 1"
    write_shards(load_embedded("openmoji", "test").select(range(10)), str(source), "parquet", 1)
    runs = [{"model": "clip", "task": "retrieval", "dataset": "openmoji", "split": "test", "max_samples": 12},
            {"model": "clip", "task": "retrieval", "dataset": "openmoji", "split": "test", "max_samples": 16},
            {"model": "clip", "task": "retrieval", "dataset": str(source), "split": "train"}]
    pipeline = Pipeline(str(out), {"stages": {"clip": {}}, "evaluation": runs}, Ranks())

    class Quiet:
        def write(self, message):
            pass

    evaluated = EvalStep(runs).run(pipeline, Quiet())
    stage = {"stage": "clip", "checkpoint": "clip", "parents": [], "model_type": "xray_clip",
             "architectures": ["XrayCLIPModel"], "data": [], "metrics": {}, "evaluation": [], "plots": []}
    pipeline.state = {"steps": {"clip": {"status": "done", "seconds": 1.0, "entry": stage},
                                "eval": {"status": "done", "seconds": 1.0, "entry": evaluated}}}
    report = build_report(pipeline)

    files = sorted((out / "eval").rglob("*.json"))
    assert [f.parent for f in files] == [out / "eval"] * 3, files  # one file per evaluation, none nested
    results = [json.loads(f.read_text()) for f in files]
    assert sorted(r["num_samples"] for r in results) == [10, 12, 16]
    reported = report["clip"]["evaluation"]
    assert len(reported) == 3 and len({run["name"] for run in reported}) == 3
    for run in reported:  # each reported under its own name with its own numbers
        assert run["metrics"] == json.loads((out / "eval" / f"{run['name']}.json").read_text())["metrics"]
    assert [run["settings"] for run in reported] == [{"max_samples": 12}, {"max_samples": 16}, {}]
    markdown = render_report_md(report)
    assert "max_samples=12" in markdown and "max_samples=16" in markdown
    plots = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert len(plots) == 6 and all((out / plot).is_file() for plot in plots), plots

    write_model_card(str(out / "clip"), report["clip"])  # two results of one metric on one dataset: both kept
    card = ModelCard.load(out / "clip" / "README.md")
    recall = {(r.dataset_type, r.metric_config): r.metric_value for r in card.data.eval_results
              if r.metric_type == "image_retrieval_recall@1"}
    assert recall == {("openmoji", "max_samples=12"): reported[0]["metrics"]["image_retrieval_recall@1"],
                      ("openmoji", "max_samples=16"): reported[1]["metrics"]["image_retrieval_recall@1"],
                      (str(source), None): reported[2]["metrics"]["image_retrieval_recall@1"]}


def test_an_unreadable_state_file_is_an_error_not_a_fresh_start(tmp_path):
    """The state says which steps finished: a damaged one must stop the run, not silently redo everything."""
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({"stages": {"mae": {"base": str(CONFIGS / "mae_tiny.yaml")}}},
                                          sort_keys=False))
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_FILE).write_text('{"steps": {"mae": {"status": "do')
    with pytest.raises(ValueError, match="pipeline_state.json is not readable JSON.*move it aside"):
        run_pipeline(out, config=config_path)
    assert (out / STATE_FILE).read_text() == '{"steps": {"mae": {"status": "do'  # left as it was


def test_one_stage_runs_twice_under_two_names_and_the_second_continues_the_first(tmp_path, monkeypatch):
    """The shipped pipeline's shape: `clip_video:` (stage: clip) warms CLIP up on clips, `clip:` continues its whole
    checkpoint. Each trains as the clip stage into its own folder, is reported as a clip stage (model card
    included), and the second starts from the first's weights (failed before: a section had to be named after its
    stage). Each section is parsed once, at load: the stages run the parsed run configs (they were parsed again)."""
    clip = small_pipeline()["stages"]["clip"]
    warmup = json.loads(json.dumps(clip))
    warmup["model"]["vision"] = {"preset": "tiny", "config": VISION}
    warmup["data"].pop("image")
    warmup["training"].update(max_steps=2, save_steps=2, eval_steps=2, resolution_schedule=[[0, 16]])
    warmup["model"]["config"].update(hashtag_loss_weight=0.0, slip_weight=0.0)
    continued = json.loads(json.dumps(clip))
    continued["model"] = {"from_pretrained": "{output}/clip_video", "config": {"slip_weight": 1.0}}
    continued["training"].update(max_steps=2, save_steps=2, eval_steps=2, learning_rate=0.0, warmup_steps=0)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump({"seed": 0, "stages": {"clip_video": {"stage": "clip", **warmup},
                                                                 "clip": continued}}, sort_keys=False))
    out = tmp_path / "run"
    parsed = []
    parse = RunConfig.from_dict.__func__
    monkeypatch.setattr(RunConfig, "from_dict", classmethod(lambda cls, *a, **k: parsed.append(a[1]) or parse(cls, *a, **k)))
    report = run_pipeline(out, config=config_path)
    assert parsed == ["clip", "clip"]
    monkeypatch.undo()

    assert {name: (entry["stage"], entry["parents"]) for name, entry in report.items()} == {
        "clip_video": ("clip", []), "clip": ("clip", ["clip_video"])}
    first, second = load_file(out / "clip_video" / "model.safetensors"), load_file(out / "clip" / "model.safetensors")
    vision = [key for key in first if key.startswith(("xray_visual.", "visual_projection."))]
    assert vision and all(torch.equal(first[key], second[key]) for key in vision)  # learning rate 0: unchanged
    assert json.loads((out / "clip" / "config.json").read_text())["slip_weight"] == 1.0
    assert ModelCard.load(out / "clip_video" / "README.md").data.pipeline_tag == "zero-shot-image-classification"
    card = (out / "clip" / "README.md").read_text()  # its parent is described as the clip stage it is
    assert "clip_video" in card and "outside the stage table" not in card

    # --restart of the renamed section moves its folder aside and trains it again (it resumed its finished
    # checkpoint, training nothing, when only sections named after a stage were moved)
    weights = (out / "clip_video" / "model.safetensors").stat().st_mtime_ns
    restarted = run_pipeline(out, config=config_path, restart=["clip_video"])
    assert (out / "clip_video.previous" / "model.safetensors").stat().st_mtime_ns == weights
    assert (out / "clip_video" / "model.safetensors").stat().st_mtime_ns != weights
    assert restarted["clip_video"]["metrics"]["global_step"] == 2
