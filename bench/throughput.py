"""Inference throughput of XrayVisual against peers measured in the same run.

Prints images/s and ratios at the same batch size and thread count; the models are timed in
interleaved rounds (one pass of each per round) and the median is reported, so load changes on
the machine hit every model alike.

    python bench/throughput.py                 # everything, 2 threads, batch 8
    python bench/throughput.py --only dense    # one group: dense, evit, tome, bf16
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from timing import timed_rounds  # bench/timing.py (the script's folder is on sys.path)

import xray_hf  # noqa: F401  (registers the Auto classes)
from xray_hf import XrayVisualConfig, XrayVisualModel
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
        verdict = "" if target is None else ("  (target >= %.2fx: %s)" % (target, "met" if ratio >= target else "MISSED"))
        print(f"  {num} / {den}: {ratio:.2f}x{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=["dense", "evit", "tome", "bf16"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch
    print(f"torch {torch.__version__}, {args.threads} threads, batch {b}, {args.rounds} rounds (median)")
    px224 = torch.randn(b, 3, 224, 224)
    px288 = torch.randn(b, 3, 288, 288)
    groups = [args.only] if args.only else ["dense", "evit", "tome", "bf16"]

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
        report("EViT keep 0.7 at layers %s, fp32" % uniform_evit_layers(12), b, seconds, [
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


if __name__ == "__main__":
    main()
