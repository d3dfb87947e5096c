"""Does distillation keep what the teacher knows (issue 11, paper 4.11)? Tiny CLIP teachers trained by
`scripts/learn_clip.py` are distilled into students half as wide and half as deep (about 1/8 of the backbone's
FLOPs), with the teacher's text tower, and both are evaluated on the embedded test splits:

- fashion: the Fashion-MNIST teachers (`fashion_seed{s}`, template captions): zero-shot top-1 on the test split;
- openmoji: the OpenMoji teachers (`towers_plain_from_scratch_seed{s}`): retrieval R@1/R@5 both ways on the test
  split (names never seen in training).

Students train with feature + relational distillation and a little contrastive loss, from the teacher cache (the
teacher's vision tower never runs during training). The throughput ratio is images/s of the student's over the
teacher's image tower, measured in this run on the same batch and threads (interleaved rounds).

    python scripts/learn_clip.py --experiments fashion towers --towers plain_from_scratch   # the teachers
    python scripts/learn_distill.py --teachers runs/learn_clip --output runs/learn_distill
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from learn_clip import QUIET, TRAIN_TEMPLATES  # scripts/ (the script's folder is on sys.path)

from xray_hf import XrayCLIPModel
from xray_hf.eval import run_eval
from xray_hf.trainers.run import run_stage

STUDENT = {"preset": "tiny", "config": {"image_size": 32, "patch_size": 4, "num_frames": 4, "hidden_size": 32,
                                        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}}
RETRIEVAL = ("text_retrieval_recall@1", "text_retrieval_recall@5", "image_retrieval_recall@1", "image_retrieval_recall@5")

EXPERIMENTS = {
    # name: (teacher folder pattern, captions, training source, batch size, steps, evaluate)
    "fashion": ("fashion_seed{seed}", {"templates": TRAIN_TEMPLATES},
                {"name": "fashion-mnist", "split": "train", "batch_size": 128}, 1200, "zero-shot"),
    "openmoji": ("towers_plain_from_scratch_seed{seed}", {"column": "caption"},
                 {"name": "openmoji", "split": "train", "batch_size": 64}, 600, "retrieval"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def evaluate(model_dir: str, task: str) -> dict[str, float]:
    if task == "zero-shot":
        metrics = run_eval(model_dir, "zero-shot", "fashion-mnist", split="test", templates=TRAIN_TEMPLATES,
                           plots=False)["metrics"]
        return {"zeroshot_acc1": metrics["acc1"]}
    metrics = run_eval(model_dir, "retrieval", "openmoji", split="test", plots=False)["metrics"]
    return {key: metrics[key] for key in RETRIEVAL}


def images_per_second(teacher_dir: str, student_dir: str, rounds: int = 7, batch: int = 256) -> dict[str, float]:
    """Image-tower throughput of both models on the same random batch, interleaved rounds, median."""
    models = {name: XrayCLIPModel.from_pretrained(path).eval() for name, path in
              (("teacher", teacher_dir), ("student", student_dir))}
    pixels = torch.randn(batch, 3, 32, 32)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.get_image_features(pixels)  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model.get_image_features(pixels)
                times[name].append(time.perf_counter() - start)
    rates = {f"{name}_images_per_s": batch / statistics.median(t) for name, t in times.items()}
    rates["student_speedup"] = rates["student_images_per_s"] / rates["teacher_images_per_s"]
    rates["student_params_ratio"] = (models["student"].xray_visual.num_parameters()
                                     / models["teacher"].xray_visual.num_parameters())
    return rates


def distil(teacher_dir: str, out: str, seed: int, captions: dict, source: dict, steps: int,
           teacher_cache: bool = True) -> float:
    config = {
        "stage": "distill", "seed": seed,
        "teacher": {"from_pretrained": teacher_dir},
        "model": {"vision": STUDENT},
        "captions": captions,
        "teacher_cache": {"enabled": teacher_cache,
                          "dir": os.path.join(out, "..", f"teacher_cache_{os.path.basename(teacher_dir)}")},
        "data": {"resolution": 32, "image": source,
                 "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0,
                             "crop_scale": [0.8, 1.0]}},
        "training": {"output_dir": out, "max_steps": steps, "learning_rate": 2e-3, "optimizer": "adamw",
                     "weight_decay": 0.05, "warmup_steps": 30, "logging_steps": 50, "lr_scheduler_type": "cosine",
                     "feature_distill_weight": 1.0, "relational_distill_weight": 1.0, "contrastive_weight": 0.1,
                     **QUIET},
    }
    start = time.time()
    run_stage("distill", config)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", default="runs/learn_clip", help="folder of scripts/learn_clip.py's runs")
    parser.add_argument("--output", default="runs/learn_distill")
    parser.add_argument("--experiments", nargs="+", default=sorted(EXPERIMENTS), choices=sorted(EXPERIMENTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-teacher-cache", action="store_true",
                        help="run the teacher on the student's augmented pixels instead of its cached clean views")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    results = {}
    for name in args.experiments:
        pattern, captions, source, steps, task = EXPERIMENTS[name]
        runs = []
        for seed in args.seeds:
            teacher_dir = os.path.join(args.teachers, pattern.format(seed=seed))
            if not os.path.isfile(os.path.join(teacher_dir, "config.json")):
                raise SystemExit(f"no teacher at {teacher_dir}: run scripts/learn_clip.py first (see --help)")
            out = os.path.join(args.output, f"{name}_seed{seed}")
            seconds = distil(teacher_dir, out, seed, captions, source, args.steps or steps,
                             teacher_cache=not args.no_teacher_cache)
            teacher, student = evaluate(teacher_dir, task), evaluate(out, task)
            run = {"teacher": teacher, "student": student,
                   "retention": {k: student[k] / teacher[k] if teacher[k] else float("nan") for k in teacher},
                   "train_seconds": seconds, **images_per_second(teacher_dir, out)}
            runs.append(run)
            log(f"{name} seed {seed}: {json.dumps(run)}")
        keys = runs[0]["retention"]
        summary = {
            "teacher": {k: statistics.mean(r["teacher"][k] for r in runs) for k in keys},
            "student": {k: statistics.mean(r["student"][k] for r in runs) for k in keys},
            "retention_of_means": {k: statistics.mean(r["student"][k] for r in runs)
                                   / max(statistics.mean(r["teacher"][k] for r in runs), 1e-12) for k in keys},
            "student_speedup": statistics.mean(r["student_speedup"] for r in runs),
        }
        results[name] = {"runs": runs, "summary": summary, "steps": args.steps or steps}
        log(f"{name}: {json.dumps(summary)}")
        with open(os.path.join(args.output, f"learn_distill_{'_'.join(args.experiments)}.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
