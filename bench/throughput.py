"""Inference throughput of XrayVisual against peers measured in the same run.

Prints images/s and ratios at the same batch size and thread count; the models are timed in
interleaved rounds (one pass of each per round) and the median is reported, so load changes on
the machine hit every model alike.

    python bench/throughput.py                 # everything, 2 threads, batch 8
    python bench/throughput.py --only dense    # one group: dense, evit, tome, bf16, tome-video

ToMe for serving (paper 4.7): one table to pick r from. Speed: ViT-B/16 on 16-frame clips at 224 px
(tubelet 2: 1,568 tokens), ToMe r per layer against dense (r=0) in the same interleaved rounds. Accuracy:
a CLIP checkpoint at the same merge rate: zero-shot acc1 on the embedded video test set (moving-shapes,
24 clips) and on an image test set (fashion-mnist, first 2,000; or --image-task retrieval, R@1/R@5, e.g.
on openmoji), with the change against r=0. A rate is the share of tokens merged away by the last layer;
each model and input (the checkpoint's clips and images have other token counts than ViT-B's clips) gets
the r closest to it, printed in the table.

    python bench/throughput.py --only tome-video                  # the full table (trains its CLIP once)
    python bench/throughput.py --only tome-video --clip-checkpoint DIR   # accuracy of your XrayCLIPModel
    python bench/throughput.py --only tome-video --quick          # tiny shapes, checks it runs (~30 s)

Without --clip-checkpoint the script first trains a small CLIP with the CLIP stage (`run_stage`): tiny
preset at 32 px with patch 4 (64 tokens an image, 256 an 8-frame clip, so merging has tokens to work on),
plain text tower, captions "a <class name>." on the train splits of the image and video sets, images:videos
75:25, 400 steps (about a minute on one thread; 30 with --quick). It goes to --work-dir (default
runs/bench/tome_clip) and is reused while the settings match. Seen here (loaded machine, not a claim): test
zero-shot about 0.5 on Fashion-MNIST (chance 0.1) and 0.3 on moving-shapes (chance 0.08). A checkpoint of
the tiny pipeline (runs/tiny/clip: 16 tokens an image) gives coarser rates. The full mode times batch 2
for 3 rounds (--video-batch, --video-rounds): ViT-B clips are slow on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

import torch
from timing import machine_header, timed_rounds  # bench/timing.py, on sys.path

import xray_hf  # noqa: F401  (registers the Auto classes)
from xray_hf import XrayVisualConfig, XrayVisualModel
from xray_hf.checkpoint import Checkpoint
from xray_hf.configuration.visual import uniform_evit_layers
from xray_hf.modeling.token_reduction import evit_token_count, tome_num_merged


def ours(preset: str = "vit-b16", dtype: torch.dtype = torch.float32, **overrides) -> XrayVisualModel:
    config = XrayVisualConfig.from_preset(preset, num_register_tokens=0, **overrides)
    return XrayVisualModel(config).eval().to(dtype)


def runner(model: torch.nn.Module, pixels: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(pixels)

    return run


def report(title: str, batch: int, seconds: dict[str, float], ratios: list[tuple[str, str, float | None]]) -> None:
    print(f"\n== {title}")
    for name, sec in seconds.items():
        print(f"  {name:<34s} {batch / sec:8.1f} img/s")
    for num, den, target in ratios:
        ratio = seconds[den] / seconds[num]
        verdict = "" if target is None else (f"  (target >= {target:.2f}x: {'met' if ratio >= target else 'MISSED'})")
        print(f"  {num} / {den}: {ratio:.2f}x{verdict}")


# ---------------------------------------------------------------------------------------- ToMe for serving
VIDEO_R = (0, 32, 64, 96)  # ViT-B/16 clip of 1,568 tokens: 0%, 24%, 49%, 73% merged away by layer 12
QUICK_VIDEO_R = (0, 8, 16, 24)  # the --quick model's 256 tokens over 4 layers: 0%, 12%, 25%, 38%
TRAIN_STEPS, QUICK_TRAIN_STEPS = 400, 30
TRAIN_TEMPLATES = ["a {}."]  # captions of the CLIP trained here: its text tower knows no other words


def tome_token_counts(num_tokens: int, r: int, num_layers: int) -> list[int]:
    """Mergeable tokens after each of `num_layers` ToMe layers of merge count `r` (at most half per layer)."""
    counts = []
    for _ in range(num_layers):
        num_tokens -= tome_num_merged(num_tokens, r)
        counts.append(num_tokens)
    return counts


def merged_share(num_tokens: int, r: int, num_layers: int) -> float:
    """Share of the tokens ToMe has merged away by the last layer."""
    return 1.0 - tome_token_counts(num_tokens, r, num_layers)[-1] / num_tokens


def matching_r(num_tokens: int, num_layers: int, share: float) -> int:
    """The r whose merged share on this model and input comes closest to `share` (the smaller r on ties)."""
    return min(range(num_tokens // 2 + 1), key=lambda r: (abs(merged_share(num_tokens, r, num_layers) - share), r))


def video_speed(quick: bool, rs: tuple[int, ...], batch: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Clips/s of one ViT (ViT-B/16, 16 x 224 x 224, tubelet 2; with `quick` a tiny one on 8 x 64 x 64) at
    each ToMe r, timed in the same interleaved rounds (r set on the config before each call)."""
    if quick:
        config = XrayVisualConfig.from_preset("tiny", image_size=64, patch_size=8, num_frames=8,
                                              num_register_tokens=0)
        name = "tiny ViT (64 wide, 4 layers), 8-frame clips @64, patch 8, tubelet 2"
    else:
        config = XrayVisualConfig.from_preset("vit-b16", num_frames=16, tubelet_size=2, num_register_tokens=0)
        name = "ViT-B/16, 16-frame clips @224, tubelet 2"
    model = XrayVisualModel(config).eval()
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    clips = torch.randn(batch, config.num_frames, 3, size, size)
    num_tokens = 1
    for extent in config.grid_size:
        num_tokens *= extent

    def run_at(r: int) -> Callable[[], object]:
        def run():
            model.config.tome_r = r
            with torch.inference_mode():
                return model(clips)

        return run

    seconds = timed_rounds({f"r={r}": run_at(r) for r in rs}, rounds, warmup)
    return {"name": name, "num_tokens": num_tokens, "num_layers": config.num_hidden_layers,
            "clips_per_second": {r: batch / seconds[f"r={r}"] for r in rs}}


def train_tiny_clip(work_dir: str, steps: int, image_dataset: str, video_dataset: str) -> str:
    """A small CLIP trained by the CLIP stage on `image_dataset` and `video_dataset` (train splits captioned
    "a <class name>.", images:videos 75:25; 32 px, patch 4: 64 tokens an image, 256 a clip of 8 frames), saved
    with its processor in `work_dir`; reused while `bench_settings.json` there matches."""
    settings = {"steps": steps, "image_dataset": image_dataset, "video_dataset": video_dataset, "version": 1}
    record = os.path.join(work_dir, "bench_settings.json")
    if os.path.isfile(record) and os.path.isfile(os.path.join(work_dir, "config.json")):
        with open(record) as handle:
            if json.load(handle) == settings:
                print(f"  reusing the CLIP checkpoint in {work_dir} (trained with {settings})")
                return work_dir
    from xray_hf.trainers.run import run_stage

    print(f"  training a small CLIP for {steps} steps into {work_dir} (no --clip-checkpoint given)")
    vision = {"image_size": 32, "patch_size": 4, "num_frames": 8, "num_register_tokens": 0}
    text = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32}
    augment = {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.1, "saturation": 0.1, "crop_scale": [0.8, 1.0]}
    run_stage("clip", {
        "stage": "clip", "seed": 0,
        "model": {"vision": {"preset": "tiny", "config": vision},
                  "text": {"preset": "tiny", "tokenizer": "smollm2", "config": text},
                  "config": {"projection_dim": 64, "slip_weight": 0.0, "lambda_den": 0.0,
                             "hashtag_loss_weight": 0.0}},
        "captions": {"templates": TRAIN_TEMPLATES},
        "data": {"resolution": 32,
                 "image": {"name": image_dataset, "split": "train", "batch_size": 32},
                 "video": {"name": video_dataset, "split": "train", "batch_size": 16, "num_frames": 8, "stride": 2},
                 "video_fraction": 0.25,  # images:videos 75:25 (paper 4.11); by row counts clips get under 1%
                 "augment": augment},
        "training": {"output_dir": work_dir, "max_steps": steps, "learning_rate": 2e-3, "optimizer": "adamw",
                     "warmup_steps": max(1, steps // 20), "per_device_train_batch_size": 32,
                     "logging_steps": max(1, steps // 4), "save_strategy": "no", "report_to": [],
                     "disable_tqdm": True},
    })
    with open(record, "w") as handle:
        json.dump(settings, handle)
    return work_dir


def _token_count(model: torch.nn.Module, pieces: Checkpoint, dataset: str, num_frames: int) -> int:
    """Patch tokens the checkpoint's vision tower makes of one preprocessed test sample of `dataset`."""
    from xray_hf.eval.data import ProcessorTransform, decoded, load_eval_set

    sample = decoded(load_eval_set(dataset, "test", max_samples=1),
                     ProcessorTransform(pieces.image_processor, pieces.video_processor), num_frames=num_frames)[0]
    _, grid = model.xray_visual.embeddings.patch_embeddings(sample["pixel_values"][None].float())
    return grid[0] * grid[1] * grid[2]


def clip_accuracy(checkpoint: str, shares: list[float], video_dataset: str, image_dataset: str, image_task: str,
                  max_samples: int | None, templates: list[str] | None = None) -> dict[str, Any]:
    """Video zero-shot and image retrieval (or zero-shot) of a CLIP checkpoint with ToMe at each merged share."""
    from xray_hf.checkpoint import load_checkpoint
    from xray_hf.eval.options import EmbedOptions
    from xray_hf.eval.run import run_eval

    pieces = load_checkpoint(checkpoint, video=True)
    model = pieces.model.eval()
    tower = getattr(model, "xray_visual", None)
    if tower is None:
        raise ValueError(f"{checkpoint!r} is not an XrayCLIPModel (no xray_visual tower with a tome_r setting)")
    if tower.config.evit_layers:
        print(f"  note: EViT layers {tower.config.evit_layers} do not merge; r is matched as if every layer did")
    num_frames = EmbedOptions().frames(pieces.video_processor)
    layers = tower.config.num_hidden_layers
    tokens = {"video": _token_count(model, pieces, video_dataset, num_frames),
              "image": _token_count(model, pieces, image_dataset, num_frames)}
    common = {"tokenizer": pieces.tokenizer, "image_processor": pieces.image_processor,
              "video_processor": pieces.video_processor, "plots": False, "max_samples": max_samples,
              "templates": templates}
    rows = []
    for share in shares:
        row: dict[str, Any] = {}
        for kind, dataset, task in (("video", video_dataset, "zero-shot"), ("image", image_dataset, image_task)):
            r = matching_r(tokens[kind], layers, share)
            tower.config.tome_r = r
            metrics = run_eval(model, task, dataset, "test", **common)["metrics"]
            row[kind] = {"r": r, "metrics": metrics}
        rows.append(row)
    tower.config.tome_r = 0
    return {"tokens": tokens, "layers": layers, "num_frames": num_frames, "rows": rows}


def report_tome_video(speed: dict[str, Any], rs: tuple[int, ...], accuracy: dict[str, Any] | None,
                      image_task: str, batch: int) -> None:
    print(f"\n== ToMe at inference for serving: {speed['name']}, fp32, batch {batch}")
    print(f"  {speed['num_tokens']} tokens a clip, {speed['num_layers']} layers; speed-up against r=0 in the same rounds")
    header = f"  {'r':>4s} {'merged':>7s} {'clips/s':>8s} {'speed-up':>9s}"
    image_keys = (("image_retrieval_recall@1", "R@1"), ("image_retrieval_recall@5", "R@5")) \
        if image_task == "retrieval" else (("acc1", "acc1"),)
    if accuracy is not None:
        header += f" | {'video r':>7s} {'zero-shot acc1':>16s} | {'image r':>7s}"
        header += "".join(f" {label + ' (change)':>17s}" for _, label in image_keys)
        print(f"  accuracy: {accuracy['tokens']['video']} tokens a clip ({accuracy['num_frames']} frames), "
              f"{accuracy['tokens']['image']} an image, {accuracy['layers']} layers; image task: {image_task}")
    print(header)
    dense = speed["clips_per_second"][rs[0]]
    for index, r in enumerate(rs):
        rate = speed["clips_per_second"][r]
        share = merged_share(speed["num_tokens"], r, speed["num_layers"])
        line = f"  {r:>4d} {share:>7.0%} {rate:>8.2f} {rate / dense:>8.2f}x"
        if accuracy is not None:
            row, base = accuracy["rows"][index], accuracy["rows"][0]
            video, base_video = row["video"]["metrics"]["acc1"], base["video"]["metrics"]["acc1"]
            line += f" | {row['video']['r']:>7d} {video:>7.3f} ({video - base_video:+.3f}) | {row['image']['r']:>7d}"
            for key, _ in image_keys:
                value, base_value = row["image"]["metrics"][key], base["image"]["metrics"][key]
                line += f" {value:>8.3f} ({value - base_value:+.3f})"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=["dense", "evit", "tome", "bf16", "tome-video"], default=None)
    group = parser.add_argument_group("tome-video (ToMe for serving: speed and accuracy by r)")
    group.add_argument("--quick", action="store_true",
                       help="tiny shapes and a 30-step CLIP: checks the table runs (numbers mean nothing)")
    group.add_argument("--tome-r", type=int, nargs="+", default=None,
                       help=f"r per layer of the timed model (default {VIDEO_R}; --quick {QUICK_VIDEO_R}); 0 first")
    group.add_argument("--video-batch", type=int, default=2)
    group.add_argument("--video-rounds", type=int, default=3)
    group.add_argument("--clip-checkpoint", default=None, help="an XrayCLIPModel directory for the accuracy columns")
    group.add_argument("--work-dir", default="runs/bench/tome_clip",
                       help="where the CLIP trained without --clip-checkpoint goes (and is reused from)")
    group.add_argument("--video-dataset", default="moving-shapes", help="video zero-shot set (embedded, test split)")
    group.add_argument("--image-dataset", default="fashion-mnist", help="image set (embedded, test split)")
    group.add_argument("--image-task", default="zero-shot", choices=("zero-shot", "retrieval"))
    group.add_argument("--templates", nargs="+", default=None,
                       help="zero-shot templates (default: the eval defaults; the CLIP trained here: its own)")
    group.add_argument("--max-samples", type=int, default=None,
                       help="evaluate at most this many test samples (default 2000; --quick 48)")
    group.add_argument("--no-accuracy", action="store_true", help="time only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch
    print(machine_header())
    px224 = torch.randn(b, 3, 224, 224)
    px288 = torch.randn(b, 3, 288, 288)
    groups = [args.only] if args.only else (["tome-video"] if args.quick else ["dense", "evit", "tome", "bf16",
                                                                                "tome-video"])
    if set(groups) - {"tome-video"}:
        print(f"images: batch {b}, {args.rounds} rounds (median)")

    timm_vit = None
    if {"dense", "evit"} & set(groups):
        import timm

        timm_vit = timm.create_model("vit_base_patch16_224", pretrained=False).eval()

    if "dense" in groups:
        from transformers import ViTConfig, ViTModel

        hf_config = ViTConfig()
        hf_config._attn_implementation = "sdpa"
        hf_vit = ViTModel(hf_config, add_pooling_layer=False).eval()
        seconds = timed_rounds(
            {"timm vit_base_patch16_224": runner(timm_vit, px224), "transformers ViTModel (sdpa)": runner(hf_vit, px224),
             "xray vit-b16 dense @224": runner(ours(), px224)},
            args.rounds, args.warmup,
        )
        report("dense ViT-B/16 @224, fp32", b, seconds, [
            ("xray vit-b16 dense @224", "timm vit_base_patch16_224", 1.0),
            ("xray vit-b16 dense @224", "transformers ViTModel (sdpa)", None),
            ("transformers ViTModel (sdpa)", "timm vit_base_patch16_224", None),
        ])

    if "evit" in groups:
        evit = ours(image_size=288, evit_layers=uniform_evit_layers(12), keep_rate=0.7)
        seconds = timed_rounds(
            {"xray evit keep0.7 @288": runner(evit, px288), "xray dense @288": runner(ours(image_size=288), px288),
             "timm vit_base_patch16_224 @224": runner(timm_vit, px224)},
            args.rounds, args.warmup,
        )
        report(f"EViT keep 0.7 at layers {uniform_evit_layers(12)}, fp32", b, seconds, [
            ("xray evit keep0.7 @288", "xray dense @288", 1.5),
            ("xray evit keep0.7 @288", "timm vit_base_patch16_224 @224", 0.95),
        ])
        tokens, counts = 18 * 18, []
        for layer in range(12):
            tokens = evit_token_count(tokens, evit.config.keep_rate_for_layer(layer))
            counts.append(tokens)
        print("  patch tokens after each layer:", counts)

    if "tome" in groups:
        tome = ours(tome_r=16)
        seconds = timed_rounds(
            {"xray tome r=16 @224": runner(tome, px224), "xray dense @224": runner(ours(), px224)},
            args.rounds, args.warmup,
        )
        report("ToMe r=16 at inference, ViT-B/16 @224, fp32", b, seconds, [("xray tome r=16 @224", "xray dense @224", 2.0)])
        tokens, counts = 14 * 14, []
        for _ in range(12):
            tokens -= tome_num_merged(tokens, 16)
            counts.append(tokens)
        print("  patch tokens after each layer:", counts)

    if "bf16" in groups:
        seconds = timed_rounds(
            {"xray vit-b16 bf16 weights": runner(ours(dtype=torch.bfloat16), px224.bfloat16()),
             "xray vit-b16 fp32": runner(ours(), px224)},
            args.rounds, args.warmup,
        )
        report("bf16 vs fp32, ViT-B/16 @224", b, seconds, [("xray vit-b16 bf16 weights", "xray vit-b16 fp32", 2.0)])

    if "tome-video" in groups:
        rs = tuple(args.tome_r) if args.tome_r else (QUICK_VIDEO_R if args.quick else VIDEO_R)
        if rs[0] != 0 or min(rs) < 0:
            raise SystemExit("--tome-r: the first value must be 0 (dense, the reference), all >= 0")
        speed = video_speed(args.quick, rs, args.video_batch, args.video_rounds, 1)
        accuracy = None
        if not args.no_accuracy:
            checkpoint = args.clip_checkpoint or train_tiny_clip(
                args.work_dir, QUICK_TRAIN_STEPS if args.quick else TRAIN_STEPS, args.image_dataset,
                args.video_dataset)
            templates = args.templates or (None if args.clip_checkpoint else TRAIN_TEMPLATES)
            shares = [merged_share(speed["num_tokens"], r, speed["num_layers"]) for r in rs]
            limit = args.max_samples if args.max_samples is not None else (48 if args.quick else 2000)
            accuracy = clip_accuracy(checkpoint, shares, args.video_dataset, args.image_dataset, args.image_task,
                                     limit, templates)
        report_tome_video(speed, rs, accuracy, args.image_task, args.video_batch)


if __name__ == "__main__":
    main()
