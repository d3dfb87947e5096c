"""CLIP train-step speed of XrayCLIPModel against peers measured in the same run (issue 10, "Speed").

A train step is forward, loss, backward, AdamW step (torch's fused AdamW when it runs, the same settings on both
sides) and the logit-scale clamp. Every comparison is timed in interleaved rounds (one step of each side per round,
median or min reported; bench/timing.py) on the same batch with the same torch threads, so load on the machine
hits both sides alike. Ratios are "peer seconds / our seconds": above 1 means ours is faster.

1. clip step, fp32 and bf16 autocast: XrayCLIPModel (vit-b16 without registers: width 768, 12 layers, 12 heads,
   MLP 3072, patch 16, 224 px, CLS pooling; text tower clip-512: 512 wide, 12 layers, 8 heads, vocab 49408, 77
   positions; projection 512; slip_weight = lambda_den = hashtag_loss_weight = 0, i.e. plain CLIP) with
   xray_hf.losses.ContrastiveLoss, against open_clip's ViT-B-16 (random init) with open_clip.loss.ClipLoss.
   Same random images; random token ids padded to 77 as open_clip's tokenizer pads (SOT ... EOT, zeros), with
   the attention mask for ours. Target >= 1.0x. Shapes match (checked); one difference is the text MLP's
   activation: ours is CLIP's QuickGELU, open_clip's ViT-B-16 exact GELU. An informational line gives our step
   with SLIP (two extra views through the backbone) and the denoiser on, against the plain step.
2. evit step: the same CLIP step @288 with EViT keep 0.7 at layers [3, 6, 9] against dense @288 (target >= 1.4x),
   plus forward-only image throughput of the two backbones for reference.
3. llm2clip text side: XrayLLM2CLIPTextModel on SmolLM2-135M (frozen), forward + backward + AdamW of the text
   side from tokens (the frozen LLM runs under no grad each step) against from cached pooled LLM outputs
   (TextEmbeddingCache, lookup timed); texts/s both ways (target >= 10x). Helpers shared with bench/text_cache.py.

The header gives torch, threads, CPU and the machine's fp32 / bf16 matmul rates: read bf16 ratios next to them.
`--quick`: tiny presets (and an open_clip CLIP of their shape) on 1 thread, seconds; a smoke run, not a claim (tiny
steps measure per-op overhead, not matmuls). On a shared 2-core machine 2-thread timings swing with other
processes (OpenMP barriers: 10-30x slower steps); check `uptime` first, or use --threads 1.

    python bench/clip_step.py                        # ViT-B/16, batch 8, 2 threads, 3 rounds
    python bench/clip_step.py --quick                # tiny shapes, seconds
    python bench/clip_step.py --only clip --rounds 5 --statistic min
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import tempfile
from typing import Callable

import datasets
import open_clip
import torch
import transformers
from open_clip.loss import ClipLoss
from text_cache import caption_dataset, text_step, token_batches  # bench/ (the script's folder is on sys.path)
from timing import machine_header, timed_rounds
from transformers import AutoTokenizer

from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayLLM2CLIPTextModel, XrayTextConfig, XrayVisualConfig
from xray_hf.configuration.visual import uniform_evit_layers
from xray_hf.convert import smollm2_checkpoint
from xray_hf.losses import ContrastiveLoss
from xray_hf.caches.text import TextEmbeddingCache
from xray_hf.modeling.token_reduction import evit_token_count

SOT, EOT = 49406, 49407  # CLIP BPE's start / end of text


def adamw(params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def random_tokens(batch: int, vocab: int, length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to `length` as open_clip's tokenizer pads (SOT, words, EOT, zeros) and their mask."""
    lengths = torch.randint(8, length + 1, (batch,))
    ids = torch.randint(1, min(vocab, SOT), (batch, length))
    positions = torch.arange(length)
    ids[:, 0] = SOT
    ids[positions == (lengths - 1)[:, None]] = EOT
    mask = (positions < lengths[:, None]).long()
    return ids * mask, mask


def xray_model(vision: XrayVisualConfig, text: XrayTextConfig, **objective) -> XrayCLIPModel:
    weights = dict(slip_weight=0, lambda_den=0, hashtag_loss_weight=0) | objective
    config = XrayCLIPConfig(vision_config=vision, text_config=text, projection_dim=text.projection_dim, **weights)
    return XrayCLIPModel(config).train()


def peer_model(vision: XrayVisualConfig, text: XrayTextConfig, quick: bool) -> torch.nn.Module:
    """open_clip's ViT-B-16, checked to have our shapes; or (quick) an open_clip CLIP of the tiny shapes."""
    vision_cfg = dict(image_size=vision.image_size, layers=vision.num_hidden_layers, width=vision.hidden_size,
                      patch_size=vision.patch_size, head_width=vision.hidden_size // vision.num_attention_heads,
                      mlp_ratio=vision.intermediate_size / vision.hidden_size)
    text_cfg = dict(context_length=text.max_position_embeddings, vocab_size=text.vocab_size, width=text.hidden_size,
                    heads=text.num_attention_heads, layers=text.num_hidden_layers,
                    mlp_ratio=text.intermediate_size / text.hidden_size)
    if quick:
        return open_clip.model.CLIP(text.projection_dim, vision_cfg, text_cfg).train()
    ref = open_clip.get_model_config("ViT-B-16")  # open_clip's defaults: head_width 64, mlp_ratio 4
    theirs = ({"head_width": 64, "mlp_ratio": 4.0} | ref["vision_cfg"], {"mlp_ratio": 4.0} | ref["text_cfg"])
    if theirs != (vision_cfg, text_cfg) or ref["embed_dim"] != text.projection_dim:
        raise ValueError(f"open_clip ViT-B-16 {ref} is not our shape {vision_cfg}, {text_cfg}")
    return open_clip.create_model("ViT-B-16", pretrained=None).train()


def xray_step(model: XrayCLIPModel, pixels, ids, mask, bf16: bool = False, slip: bool = False) -> Callable[[], None]:
    loss_fn, optimizer = ContrastiveLoss(rank=0, world_size=1), adamw(model.parameters())
    views = dict(simclr_view_1=torch.randn_like(pixels), simclr_view_2=torch.randn_like(pixels)) if slip else {}

    def run():
        with autocast(bf16):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=slip, **views)
            loss = out.loss if slip else loss_fn(out.image_embeds, out.text_embeds, out.logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scale()

    return run


def peer_step(model: torch.nn.Module, pixels, ids, bf16: bool = False) -> Callable[[], None]:
    loss_fn, optimizer = ClipLoss(), adamw(model.parameters())

    def run():
        with autocast(bf16):
            image_features, text_features, logit_scale = model(pixels, ids)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return run


def line(title: str, times: dict[str, float], ours: str, peer: str, target: float | None, unit: str = "s",
         per: int | None = None) -> None:
    def show(name):
        return f"{name} {times[name] * (1e3 if unit == 'ms' else 1):.3g} {unit}" + (
            f" ({per / times[name]:.1f}/s)" if per else "")

    ratio = times[peer] / times[ours]
    verdict = "" if target is None else f" (target >= {target:.1f}x: {'met' if ratio >= target else 'MISSED'})"
    print(f"{title}: {show(ours)}, {show(peer)}, ratio {ratio:.2f}x{verdict}", flush=True)


def params(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"


def clip_group(args, vision, text, pixels, ids, mask) -> None:
    ours, peer = xray_model(vision, text), peer_model(vision, text, args.quick)
    print(f"shapes: vision {vision.hidden_size} wide, {vision.num_hidden_layers} layers, "
          f"{vision.num_attention_heads} heads, MLP {vision.intermediate_size}, patch {vision.patch_size}, "
          f"{vision.image_size} px, {vision.pooling} pooling, {vision.num_register_tokens} registers; text "
          f"{text.hidden_size} wide, {text.num_hidden_layers} layers, {text.num_attention_heads} heads, vocab "
          f"{text.vocab_size}, {text.max_position_embeddings} positions; xray {params(ours)} params, "
          f"open_clip {params(peer)}")
    for bf16 in (False, True):
        times = timed_rounds({"xray": xray_step(ours, pixels, ids, mask, bf16), "open_clip": peer_step(
            peer, pixels, ids, bf16)}, args.rounds, args.warmup, args.statistic)
        line(f"clip step {'bf16 autocast' if bf16 else 'fp32'}", times, "xray", "open_clip", 1.0)
    if args.no_slip:
        return
    del peer
    gc.collect()
    slip = xray_model(vision, text, slip_weight=1.0, lambda_den=1.0)
    times = timed_rounds({"xray+slip+denoise": xray_step(slip, pixels, ids, mask, slip=True),
                          "xray": xray_step(ours, pixels, ids, mask)}, args.rounds, args.warmup, args.statistic)
    slip_s, plain_s = times["xray+slip+denoise"], times["xray"]
    print(f"clip step fp32 with SLIP + denoise on (informational): {slip_s:.3g} s, {slip_s / plain_s:.2f}x the "
          f"plain step's {plain_s:.3g} s (SLIP runs 2 more views through the backbone)", flush=True)


def evit_bound(config: XrayVisualConfig, num_patches: int) -> float:
    """Dense / EViT backbone cost counting tokens x the linear layers' weights (attention on a layer's tokens before
    EViT reorganises them, the MLP on those after); the text tower and optimizer dilute it in a whole step."""
    attention, mlp = 4 * config.hidden_size**2, 2 * config.hidden_size * config.intermediate_size
    prefix, tokens, cost = config.num_prefix_tokens, num_patches, 0.0
    for layer in range(config.num_hidden_layers):
        after = evit_token_count(tokens, config.keep_rate_for_layer(layer))
        cost, tokens = cost + (prefix + tokens) * attention + (prefix + after) * mlp, after
    return (prefix + num_patches) * (attention + mlp) * config.num_hidden_layers / cost


def evit_group(args, vision, text, ids, mask) -> None:
    size = round(vision.image_size / vision.patch_size * 9 / 7) * vision.patch_size  # 288 for 224
    shape = dict(image_size=size, num_register_tokens=0)
    evit_config = XrayVisualConfig.from_preset(
        args.preset, **shape, evit_layers=uniform_evit_layers(vision.num_hidden_layers), keep_rate=0.7)
    evit, dense = xray_model(evit_config, text), xray_model(XrayVisualConfig.from_preset(args.preset, **shape), text)
    pixels = torch.randn(args.batch_size, 3, size, size)
    times = timed_rounds({"evit": xray_step(evit, pixels, ids, mask), "dense": xray_step(dense, pixels, ids, mask)},
                         args.rounds, args.warmup, args.statistic)
    bound = evit_bound(evit_config, (size // vision.patch_size) ** 2)
    line(f"evit step fp32 @{size} (keep 0.7 at {evit_config.evit_layers}; backbone token bound {bound:.2f}x)",
         times, "evit", "dense", 1.4)

    forward = {name: torch.inference_mode()(lambda m=model: m.get_image_features(pixels))
               for name, model in (("evit", evit), ("dense", dense))}
    times = timed_rounds(forward, args.rounds, args.warmup, args.statistic)
    line(f"evit image forward fp32 @{size} (reference)", times, "evit", "dense", None, per=args.batch_size)


def llm2clip_group(args) -> None:
    llm_dir = str(smollm2_checkpoint())  # converted once from the GGUF, cached
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    text_model = XrayLLM2CLIPTextModel.from_llm(llm_dir, projection_dim=512).train()  # LLM frozen (config)
    dataset = caption_dataset()
    batches = token_batches(text_model, tokenizer, dataset, args.batch_size)
    optimizer = adamw(text_model.parameters())
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = TextEmbeddingCache.build(text_model, tokenizer, dataset, cache_dir, batch_size=64)
        times = timed_rounds({"cached": text_step(text_model, cache, batches, optimizer),
                              "frozen LLM": text_step(text_model, None, batches, optimizer)},
                             max(args.rounds, 10), args.warmup, args.statistic)
    line(f"llm2clip text side fp32 (SmolLM2-135M, {params(text_model.llm)} frozen; texts/s)", times, "cached",
         "frozen LLM", 10.0, unit="ms", per=args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; 1 with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--statistic", choices=["median", "min"], default="median")
    parser.add_argument("--only", choices=["clip", "evit", "llm2clip"], default=None)
    parser.add_argument("--no-slip", action="store_true", help="skip the SLIP + denoise informational line")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on 1 thread: a smoke run in seconds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or (1 if args.quick else 2))
    torch.manual_seed(0)
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    args.preset = "tiny" if args.quick else "vit-b16"
    vision = XrayVisualConfig.from_preset(args.preset, num_register_tokens=0)
    text = XrayTextConfig.from_preset("tiny" if args.quick else "clip-512", projection_dim=64 if args.quick else 512)
    print(machine_header())
    print(f"batch {args.batch_size}, {'quick (tiny shapes), ' if args.quick else ''}{args.rounds} interleaved "
          f"rounds after {args.warmup} warm-up ({args.statistic}); ratio = peer time / our time")
    pixels = torch.randn(args.batch_size, 3, vision.image_size, vision.image_size)
    ids, mask = random_tokens(args.batch_size, text.vocab_size, text.max_position_embeddings)
    groups = {"clip": lambda: clip_group(args, vision, text, pixels, ids, mask),
              "evit": lambda: evit_group(args, vision, text, ids, mask), "llm2clip": lambda: llm2clip_group(args)}
    for name, group in groups.items():
        if args.only in (None, name):
            group()
            gc.collect()  # one group's models and optimizer states at a time


if __name__ == "__main__":
    main()
