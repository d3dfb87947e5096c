"""MAE train step vs dense train step of the same backbone on the same batch (paper 4.2.1: MAE's encoder sees 25%).

A train step is forward + backward + optimizer step. The dense step runs the backbone on every patch with a loss on
all output tokens; the MAE step is `XrayVisualForPreTraining` (75% of image patches masked, an 8-block 512-wide
decoder). Both share one backbone (same weights, same optimizer class) and are timed interleaved in this process,
so a machine-wide slowdown hits both alike; the ratio is median(dense) / median(MAE) (or min, `--statistic min`).
`--peer` adds transformers' `ViTMAEForPreTraining` vs `ViTModel` of the same shape, measured the same way in the
same process.

    python bench/train_step.py                                  # tiny, vit-b16, vit-l16 at batch 4 @224
    python bench/train_step.py --presets vit-b16 --steps 8 --threads 1 --peer --registers 0 --statistic min

Token counting bounds the speed-up: dense runs 1 + R + N tokens through the encoder, MAE runs 1 + R + N/4 through
the encoder and 1 + R + N through the decoder (per-token cost ~ depth x width^2); the bound is printed next to the
measurement (R = 4 registers lower it: 2.84x instead of 2.97x for ViT-L/16, 1.77x instead of 1.83x for ViT-B/16).
On a shared 2-core machine, 2-thread timings swing with other processes (OpenMP barriers); `--threads 1` is steadier.
Single steps also swing by up to 30% with the allocator's state (the same GELU took 26 ms or 196 ms in two profiled
steps: freshly mapped pages fault in), so take several rounds and prefer `--statistic min` there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timing import timed_rounds  # bench/timing.py (the script's folder is on sys.path)

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


def train_step(model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        loss_fn(model).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours(config: XrayVisualConfig, pixel_values: torch.Tensor, optim: str) -> dict[str, Callable[[], None]]:
    model = XrayVisualForPreTraining(config).train()
    backbone = model.xray_visual
    return {
        "dense": train_step(backbone, lambda m: m(pixel_values).last_hidden_state.float().pow(2).mean(),
                            make_optimizer(optim, backbone.parameters())),
        "mae": train_step(model, lambda m: m(pixel_values).loss, make_optimizer(optim, model.parameters())),
    }


def peer(config: XrayVisualConfig, pixel_values: torch.Tensor, optim: str) -> dict[str, Callable[[], None]]:
    """transformers' ViTMAEForPreTraining and a ViTModel of the same shape (no registers, SDPA attention)."""
    from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

    shape = dict(hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                 num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
                 image_size=pixel_values.shape[-1], patch_size=config.patch_size, qkv_bias=True)
    mae = ViTMAEForPreTraining(ViTMAEConfig(
        **shape, decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        decoder_intermediate_size=config.decoder_intermediate_size, mask_ratio=config.mask_ratio, norm_pix_loss=True,
        attn_implementation="sdpa")).train()
    dense = ViTModel(ViTConfig(**shape, attn_implementation="sdpa"), add_pooling_layer=False).train()
    return {
        "peer_dense": train_step(dense, lambda m: m(pixel_values).last_hidden_state.float().pow(2).mean(),
                                 make_optimizer(optim, dense.parameters())),
        "peer_mae": train_step(mae, lambda m: m(pixel_values).loss, make_optimizer(optim, mae.parameters())),
    }


def bench_preset(preset: str, batch: int, size: int, steps: int, optim: str, registers: int | None,
                 with_peer: bool, statistic: str = "median") -> dict:
    overrides = {"image_size": size}
    if registers is not None:
        overrides["num_register_tokens"] = registers
    if preset == "tiny":  # the 64-wide tiny backbone gets configs/mae_tiny.yaml's model, not a 8x512 decoder
        overrides.update(
            patch_size=4, decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=128,
        )
    config = XrayVisualConfig.from_preset(preset, **overrides)
    torch.manual_seed(0)
    pixel_values = torch.randn(batch, config.num_channels, size, size)
    steps_fns = ours(config, pixel_values, optim)
    if with_peer:
        steps_fns.update(peer(config, pixel_values, optim))
    t = timed_rounds(steps_fns, rounds=steps, warmup=1, statistic=statistic)
    num_patches = (size // config.patch_size) ** 2
    result = {"preset": preset, "registers": config.num_register_tokens, "batch": batch, "size": size,
              "bound": token_bound(config, num_patches), **t, "ratio": t["dense"] / t["mae"]}
    if with_peer:
        result["peer_ratio"] = t["peer_dense"] / t["peer_mae"]
        no_registers = XrayVisualConfig.from_preset(preset, **{**overrides, "num_register_tokens": 0})
        result["peer_bound"] = token_bound(no_registers, num_patches)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "vit-b16", "vit-l16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up each)")
    parser.add_argument("--optim", choices=["lion", "adamw"], default="adamw", help="fused AdamW or timm Lion")
    parser.add_argument("--registers", type=int, default=None, help="override num_register_tokens")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peer", action="store_true", help="also time transformers' ViTMAE vs ViT")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="per-mode step time over the rounds (min is steadier on a machine with interference)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, optimizer {args.optim}, "
          f"{args.steps} timed steps each, interleaved ({args.statistic})")
    for preset in args.presets:
        tiny = preset == "tiny"
        size = 32 if tiny and args.image_size == 224 else args.image_size
        r = bench_preset(preset, 64 if tiny else args.batch_size, size, max(args.steps, 20) if tiny else args.steps,
                         args.optim, args.registers, args.peer and not tiny, args.statistic)
        line = (f"{preset:8s} ({r['registers']} registers, batch {r['batch']} @{size}): "
                f"dense {r['dense'] * 1e3:8.1f} ms  MAE {r['mae'] * 1e3:8.1f} ms  "
                f"speed-up {r['ratio']:.2f}x (token-count bound {r['bound']:.2f}x)")
        if "peer_ratio" in r:
            line += (f" | transformers ViT {r['peer_dense'] * 1e3:8.1f} ms  ViTMAE {r['peer_mae'] * 1e3:8.1f} ms  "
                     f"speed-up {r['peer_ratio']:.2f}x (bound {r['peer_bound']:.2f}x)")
        print(line, flush=True)


if __name__ == "__main__":
    main()
