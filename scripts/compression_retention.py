"""How much of the full embedding's accuracy survives compression (paper 6.3: 100-d projection, about 4-5% drop;
6.4: int8, about 3% drop), measured on real data with bytes per embedding.

    python scripts/compression_retention.py --output runs/compression_retention            # trains two tiny CLIPs
    python scripts/compression_retention.py --output runs/cr --zero-shot-model DIR --retrieval-model DIR

Two CLIP checkpoints (given, or trained here briefly with the tiny preset and a plain text tower from scratch):
- zero-shot: Fashion-MNIST captioned with templates of its class names; top-1 on the test split (10,000 images);
- retrieval: OpenMoji images with their names; image->text and text->image R@1 on the test split (192 emoji
  whose names were never seen in training).

For each, the compression is trained on the checkpoint's own frozen embeddings of the *training* split (images and
texts; `fit_embedding_compression`: int8 calibrated on them, the projection fitted by similarity distillation with
Matryoshka sizes), then every setting is scored on the test split with both sides compressed alike
(`xray_hf.eval.compression`): float, the learned projection at each size, the same projection untrained (a random
orthonormal one: the baseline), int8, binary, binary with float re-scoring of the Hamming top-m.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from xray_hf.eval.compression import CompressionSetting, compression_retention
from learn_clip import PLAIN_TEXT, TRAIN_TEMPLATES, VISION_TINY  # scripts/ (the script's folder is on sys.path)

from xray_hf.checkpoint import load_checkpoint
from xray_hf.trainers.compression import fit_embedding_compression
from xray_hf.run_config.data import SourceSpec
from xray_hf.run_config.extras import TextsSpec
from xray_hf.trainers.compression_run import embed_source, retention_inputs
from xray_hf.trainers.run import run_stage

QUIET = {"disable_tqdm": True, "report_to": [], "save_strategy": "no", "eval_strategy": "no"}
TASKS = {
    "zero-shot": {"dataset": "fashion-mnist", "texts": {"templates": TRAIN_TEMPLATES}, "rescore": 3,
                  "captions": {"templates": TRAIN_TEMPLATES}, "batch_size": 128, "lr": 2e-3,
                  "augment": {"flip_p": 0.5, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0, "crop_scale": [0.7, 1.0]}},
    "retrieval": {"dataset": "openmoji", "texts": {"column": "caption"}, "rescore": 10,
                  "captions": {"column": "caption"}, "batch_size": 64, "lr": 1e-3,
                  "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.2, "saturation": 0.2, "crop_scale": [0.7, 1.0]}},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_clip(task: str, output: str, steps: int, projection_dim: int, seed: int) -> str:
    """A tiny CLIP (plain text tower from scratch) on the task's training split, as scripts/learn_clip.py does."""
    spec = TASKS[task]
    out = os.path.join(output, f"clip_{task}")
    config = {
        "stage": "clip", "seed": seed,
        "model": {"vision": VISION_TINY, "text": PLAIN_TEXT,
                  "config": {"projection_dim": projection_dim, "slip_weight": 0.0, "lambda_den": 0.0,
                             "hashtag_loss_weight": 0.0}},
        "captions": spec["captions"],
        "data": {"resolution": 32, "image": {"name": spec["dataset"], "split": "train", "batch_size": spec["batch_size"]},
                 "augment": spec["augment"]},
        "training": {"output_dir": out, "max_steps": steps, "learning_rate": spec["lr"], "optimizer": "adamw",
                     "weight_decay": 0.05, "warmup_steps": min(30, steps // 10), "logging_steps": 50,
                     "lr_scheduler_type": "cosine", **QUIET},
    }
    run_stage("clip", config)
    return out


def measure(task: str, model_dir: str, dims: list[int], steps: int, train_samples: int, seed: int) -> dict:
    """Train the compression on the training split's embeddings, score every setting on the test split."""
    spec = TASKS[task]
    pieces = load_checkpoint(model_dir)
    model = pieces.model.eval()
    texts = TextsSpec.from_dict(spec["texts"], "texts")
    start = time.time()
    train = embed_source(pieces, SourceSpec(name=spec["dataset"], split="train", max_samples=train_samples,
                                            batch_size=256), texts, need_text=True)
    test = embed_source(pieces, SourceSpec(name=spec["dataset"], split="test", batch_size=256), texts, need_text=False)
    log(f"{task}: embedded {len(train['image_embeds'])} training and {len(test['image_embeds'])} test items "
        f"({time.time() - start:.0f} s)")
    embedding_dim = model.config.projection_dim
    sizes = sorted({d for d in dims if d <= embedding_dim}, reverse=True)
    if not sizes:
        raise SystemExit(f"every --dims value exceeds the embedding size {embedding_dim}")
    torch.manual_seed(seed)
    module = model.add_embedding_compression({"compressed_dim": sizes[0], "matryoshka_dims": sizes[1:] or None})
    untrained = copy.deepcopy(module)
    text_embeds = train.get("text_embeds", train.get("text_embeds_templates"))
    start = time.time()
    fit = fit_embedding_compression(model, train["image_embeds"], text_embeds, max_steps=steps, seed=seed)
    log(f"{task}: compression trained {steps} steps in {time.time() - start:.0f} s (loss {fit['train_loss']:.4f})")
    inputs = retention_inputs(test)
    rescore = spec["rescore"]
    settings = [CompressionSetting(), *[CompressionSetting("projection", d) for d in sizes], CompressionSetting("int8"),
                CompressionSetting("binary"), CompressionSetting("binary", rescore=rescore)]
    with torch.no_grad():
        report = compression_retention(module, settings=settings, **inputs)
        baseline = compression_retention(untrained, settings=[CompressionSetting()] + [
            CompressionSetting("projection", d) for d in sizes], **inputs)
    for name, row in baseline.items():
        if name != "float":
            report[f"{name} (untrained)"] = row
    return {"model": model_dir, "embedding_dim": embedding_dim, "train_items": len(train["image_embeds"]),
            "test_items": len(test["image_embeds"]), "compression_steps": steps, "rescore": rescore,
            "train_loss": fit["train_loss"], "report": report}


def table(task: str, result: dict) -> str:
    keys = {"zero-shot": [("zeroshot_acc1", "acc1")],
            "retrieval": [("retrieval_text_retrieval_recall@1", "i2t R@1"),
                          ("retrieval_image_retrieval_recall@1", "t2i R@1"),
                          ("retrieval_text_retrieval_recall@5", "i2t R@5"),
                          ("retrieval_image_retrieval_recall@5", "t2i R@5")]}[task]
    header = f"{'setting':<30}{'bytes':>7}" + "".join(f"{label:>11}{'rel':>7}" for _, label in keys)
    lines = [f"{task} ({result['embedding_dim']}-d embedding, {result['test_items']} test items)", header]
    for name, row in result["report"].items():
        cells = ""
        for key, _ in keys:
            relative = row[f"relative_{key}"]
            cells += f"{row[key]:>11.4f}{'' if relative is None else f'{relative:.3f}':>7}"
        lines.append(f"{name:<30}{int(row['bytes_per_embedding']):>7}" + cells)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder for trained checkpoints and the JSON result")
    parser.add_argument("--model", default=None, help="one CLIP checkpoint for both tasks")
    parser.add_argument("--zero-shot-model", default=None, help="CLIP checkpoint for Fashion-MNIST zero-shot")
    parser.add_argument("--retrieval-model", default=None, help="CLIP checkpoint for OpenMoji retrieval")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--clip-steps", type=int, default=300, help="steps of each tiny CLIP trained here")
    parser.add_argument("--projection-dim", type=int, default=256, help="embedding size of the CLIPs trained here")
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 32, 16, 8],
                        help="projection sizes: the largest is compressed_dim, the rest Matryoshka (larger than the "
                             "embedding: skipped)")
    parser.add_argument("--compression-steps", type=int, default=300)
    parser.add_argument("--train-samples", type=int, default=5000, help="training items embedded per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    given = {"zero-shot": args.zero_shot_model or args.model, "retrieval": args.retrieval_model or args.model}
    results = {}
    for task in args.tasks:
        model_dir = given[task]
        if model_dir is None:
            start = time.time()
            model_dir = train_clip(task, args.output, args.clip_steps, args.projection_dim, args.seed)
            log(f"{task}: tiny CLIP trained {args.clip_steps} steps in {time.time() - start:.0f} s")
        results[task] = measure(task, model_dir, args.dims, args.compression_steps, args.train_samples, args.seed)
        print(table(task, results[task]), flush=True)
    path = os.path.join(args.output, "compression_retention.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
