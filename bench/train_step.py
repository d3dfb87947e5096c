"""MAE train step vs dense train step of the same backbone on the same batch (paper 4.2.1: MAE's encoder sees 25%).

A train step is forward + backward + optimizer step. The dense step runs the backbone on every patch with a loss on
all output tokens; the MAE step is `XrayVisualForPreTraining` (75% of image patches masked, an 8-block 512-wide
decoder). Both share one backbone (same weights, same optimizer class) and are timed interleaved in this process,
so a machine-wide slowdown hits both alike; the ratio is median(dense) / median(MAE).

    python bench/train_step.py                         # tiny, vit-b16, vit-l16 at batch 4 @224, a few steps each
    python bench/train_step.py --presets vit-b16 --steps 5 --optim adamw

Token counting bounds the speed-up: dense runs 1 + R + N tokens through the encoder, MAE runs 1 + R + N/4 through
the encoder and 1 + R + N through the decoder (per-token cost ~ depth x width^2); the bound is printed next to the
measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xray_hf import XrayVisualConfig, XrayVisualForPreTraining


def token_bound(config: XrayVisualConfig, num_patches: int) -> float:
    """Dense / MAE cost counting tokens x layers x width^2 (linear layers dominate at these lengths)."""
    prefix = config.num_prefix_tokens
    visible = max(1, int(num_patches * (1 - config.mask_ratio)))
    enc = config.num_hidden_layers * (config.hidden_size**2 + config.hidden_size * config.intermediate_size / 2)
    dec = config.decoder_num_hidden_layers * (
        config.decoder_hidden_size**2 + config.decoder_hidden_size * config.decoder_intermediate_size / 2
    )
    dense = (prefix + num_patches) * enc
    return dense / ((prefix + visible) * enc + (prefix + num_patches) * dec)


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "lion":
        from timm.optim import Lion

        return Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.05)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)


def bench_preset(preset: str, batch: int, size: int, steps: int, optim: str, registers: int | None) -> dict:
    overrides = {"image_size": size}
    if registers is not None:
        overrides["num_register_tokens"] = registers
    if preset == "tiny":  # the 64-wide tiny backbone gets configs/mae_tiny.yaml's model, not a 8x512 decoder
        overrides.update(
            patch_size=4, decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4
        )
    config = XrayVisualConfig.from_preset(preset, **overrides)
    torch.manual_seed(0)
    model = XrayVisualForPreTraining(config).train()
    backbone = model.xray_visual
    pixel_values = torch.randn(batch, config.num_channels, size, size)
    opt_mae = make_optimizer(optim, model.parameters())
    opt_dense = make_optimizer(optim, backbone.parameters())

    def mae_step() -> None:
        loss = model(pixel_values).loss
        loss.backward()
        opt_mae.step()
        opt_mae.zero_grad(set_to_none=True)

    def dense_step() -> None:
        out = backbone(pixel_values)
        loss = out.last_hidden_state.float().pow(2).mean()
        loss.backward()
        opt_dense.step()
        opt_dense.zero_grad(set_to_none=True)

    mae_step(), dense_step()  # warm-up (allocator, optimizer state)
    times = {"mae": [], "dense": []}
    for _ in range(steps):
        for name, step in (("dense", dense_step), ("mae", mae_step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    num_patches = (size // config.patch_size) ** 2
    dense, mae = statistics.median(times["dense"]), statistics.median(times["mae"])
    return {
        "preset": preset, "registers": config.num_register_tokens, "dense_s": dense, "mae_s": mae,
        "ratio": dense / mae, "bound": token_bound(config, num_patches),
        "params_M": sum(p.numel() for p in backbone.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "vit-b16", "vit-l16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up each)")
    parser.add_argument("--optim", choices=["lion", "adamw"], default="adamw", help="fused AdamW or timm Lion")
    parser.add_argument("--registers", type=int, default=None, help="override num_register_tokens")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, optimizer {args.optim}, "
          f"batch {args.batch_size} @{args.image_size}, {args.steps} timed steps each (median)")
    for preset in args.presets:
        size = 32 if preset == "tiny" and args.image_size == 224 else args.image_size
        batch = 64 if preset == "tiny" else args.batch_size
        r = bench_preset(preset, batch, size, args.steps if preset != "tiny" else max(args.steps, 20), args.optim,
                         args.registers)
        print(f"{preset:8s} ({r['params_M']:.1f}M, {r['registers']} registers, batch {batch} @{size}): "
              f"dense {r['dense_s'] * 1e3:8.1f} ms  MAE {r['mae_s'] * 1e3:8.1f} ms  "
              f"speed-up {r['ratio']:.2f}x  (token-count bound {r['bound']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
