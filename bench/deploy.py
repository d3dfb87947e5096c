"""Deployment speed (issue 23): ONNX fp32 / int8 against torch eager, torch.compile against eager with the bound a
profile gives, the MAE train step against a dense one, and ToMe and bf16 kept in the same run.

Every figure is a ratio against its peer or bound, taken in this run with interleaved rounds (bench/timing.py), under
the header with the machine's fp32 and bf16 matmul rates. On a machine other processes share, ratios hold better
than absolute times; the load average is printed too.

    python bench/deploy.py                       # everything: tiny and ViT-B/16, 2 threads
    python bench/deploy.py --only onnx compile   # some sections: onnx, compile, clip-step, mae, tome-bf16, retention
    python bench/deploy.py --retention-checkpoint runs/tiny/clip   # int8 retention of a trained CLIP
    python bench/deploy.py --quick               # tiny shapes only: checks the script runs (numbers mean little)

Sections:
- onnx: images/s of the exported image encoder in onnxruntime, fp32 and dynamic int8 (`xray-hf export --int8`),
  against torch eager fp32, for the tiny preset (@32, batch 64) and ViT-B/16 (@224, batch 8). Target: int8 >= 1.8x.
- compile: `compile_for_inference` (inductor, static shapes) against eager, ViT-B/16 inference in fp32 and bf16.
  The bound comes from a profile of the eager run: 1 / (share of time in matrix products and attention: linear layers,
  the patch-embedding convolution and SDPA, each with what it calls, e.g. addmm's bias copy), what fusing everything
  else could give at most. Target: compiled / eager >= 0.95 of that bound.
- clip-step: the same for a CLIP train step (forward, contrastive loss, backward, fused AdamW) with the model under
  `torch.compile`, as `torch_compile: true` does in the trainers.
- mae: the MAE train step against a dense step of the same ViT-B/16 (batch 4 @224, fused AdamW; bench/train_step.py),
  the token-count bound beside it, and the ops that take the MAE step's time. Target: >= 1.7x.
- tome-bf16: ToMe r=16 against dense (target >= 1.9x) and bf16 weights against fp32 as a share of the machine's bf16 /
  fp32 matmul ratio (target >= 80%), ViT-B/16 @224 batch 8.
- retention: zero-shot and retrieval of a CLIP checkpoint through its int8 ONNX export against PyTorch (target
  >= 0.98 of each metric), both towers int8 and the vision towers only (`--int8`'s default: fp32 text queries), and
  the cosine of the int8 embeddings to the float ones (images, and the test captions for text).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from throughput import ours, runner  # bench/ (the script's folder is on sys.path)
from timing import cpu_model, matmul_gflops, timed_rounds

import xray_hf  # noqa: F401  (registers the Auto classes)
from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayTextConfig, XrayVisualConfig
from xray_hf.export.compile import compile_for_inference
from xray_hf.export.onnx import export_onnx
from xray_hf.losses import ContrastiveLoss

SECTIONS = ("onnx", "compile", "clip-step", "mae", "tome-bf16", "retention")
# aten ops that are matrix products or attention (`linear` and `matmul` dispatch to these; the patch embedding is a
# strided convolution, i.e. a matrix product over patches). Inductor calls the same extern kernels for them, so their
# time, with what they call (addmm's copy of the bias into its output), is what compiling cannot remove.
DENSE_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
             "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_scaled_dot_product_attention_math",
             "aten::mkldnn_convolution", "aten::convolution_backward")


STATISTIC = {"value": "min"}  # set from --statistic; interference on a shared machine only ever adds time
# Below this bf16 / fp32 matmul ratio the CPU has no bf16 matrix units (AVX2 only: torch emulates, ~1 GFLOP/s) and
# a ViT-B/16 bf16 batch takes minutes; the bf16 timings are skipped with the ratio printed (their targets are shares
# of that ratio, measured where bf16 exists: AMX, AVX512-BF16, GPUs).
SLOW_BF16 = 0.25


def bf16_skipped(matmul_ratio: float, what: str) -> bool:
    if matmul_ratio >= SLOW_BF16:
        return False
    print(f"\n== {what}: skipped: bf16 matrix products run at {matmul_ratio:.3f}x fp32 here (emulated; no bf16 "
          f"units), so a bf16 run would measure the emulation")
    return True


def rounds_of(runners: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Seconds per call of each runner, interleaved rounds after two warm-up rounds (bench/timing.py)."""
    return timed_rounds(runners, rounds, warmup=2, statistic=STATISTIC["value"])


def verdict(ratio: float, target: float) -> str:
    return f"(target >= {target:.2f}: {'met' if ratio >= target else 'MISSED'})"


def profile_shares(run: Callable[[], object], top: int = 0) -> tuple[float, list[tuple[str, float]]]:
    """Share of CPU time in matrix products and attention (`DENSE_OPS`, with what they call) over one call of
    `run`, and the `top` ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = prof.key_averages()
    times = {event.key: event.self_cpu_time_total for event in events}
    total = sum(times.values())
    dense = sum(event.cpu_time_total for event in events if event.key in DENSE_OPS)  # none calls another
    ranked = sorted(times.items(), key=lambda item: -item[1])[:top]
    return dense / total, [(name, value / total) for name, value in ranked]


# ---------------------------------------------------------------------------------------------------------- onnx
def onnx_section(threads: int, rounds: int, quick: bool) -> None:
    import onnxruntime as ort

    cases = [("tiny", 64, {})] if quick else [("tiny", 64, {}), ("vit-b16", 8, {})]
    for preset, batch, overrides in cases:
        model = ours(preset, **overrides)
        size = model.config.image_size_hw
        pixels = torch.randn(batch, 3, *size)
        with tempfile.TemporaryDirectory() as folder:
            export_onnx(model, folder, video=False, int8=True)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            sessions = {kind: ort.InferenceSession(os.path.join(folder, file), options,
                                                   providers=["CPUExecutionProvider"])
                        for kind, file in (("fp32", "image.onnx"), ("int8", "image.int8.onnx"))}
            feed = {"pixel_values": pixels.numpy()}
            runners = {"torch eager fp32": runner(model, pixels),
                       "onnxruntime fp32": lambda: sessions["fp32"].run(None, feed),
                       "onnxruntime int8": lambda: sessions["int8"].run(None, feed)}
            seconds = rounds_of(runners, rounds)
        print(f"\n== ONNX: {preset} @{size[0]}x{size[1]}, batch {batch}, {threads} threads (torch and onnxruntime)")
        for name, value in seconds.items():
            print(f"  {name:<20s} {batch / value:9.1f} img/s  {seconds['torch eager fp32'] / value:5.2f}x eager")
        ratio = seconds["torch eager fp32"] / seconds["onnxruntime int8"]
        print(f"  int8 / eager fp32: {ratio:.2f}x {verdict(ratio, 1.8)}; int8 / onnxruntime fp32: "
              f"{seconds['onnxruntime fp32'] / seconds['onnxruntime int8']:.2f}x")


# ------------------------------------------------------------------------------------------------------- compile
def compile_section(rounds: int, quick: bool, matmul_ratio: float) -> None:
    cases = [("tiny", 64, torch.float32)] + ([] if quick else [("vit-b16", 8, torch.float32)])
    if not quick and not bf16_skipped(matmul_ratio, "torch.compile, vit-b16 inference, bfloat16"):
        cases.append(("vit-b16", 8, torch.bfloat16))
    for preset, batch, dtype in cases:
        eager = ours(preset, dtype=dtype)
        compiled = compile_for_inference(ours(preset, dtype=dtype))
        compiled.load_state_dict(eager.state_dict())
        pixels = torch.randn(batch, 3, *eager.config.image_size_hw).to(dtype)
        share, _ = profile_shares(runner(eager, pixels))
        seconds = rounds_of({"eager": runner(eager, pixels), "compiled": runner(compiled, pixels)}, rounds)
        ratio, bound = seconds["eager"] / seconds["compiled"], 1.0 / share
        name = str(dtype).replace("torch.", "")
        print(f"\n== torch.compile (inductor, static shapes), {preset} inference, {name}, batch {batch}")
        print(f"  eager {batch / seconds['eager']:.1f} img/s, compiled {batch / seconds['compiled']:.1f} img/s: "
              f"{ratio:.2f}x; profile: {share:.0%} of eager time in matrix products + attention -> bound "
              f"{bound:.2f}x; compiled reaches {ratio / bound:.2f} of it {verdict(ratio / bound, 0.95)}")


def tiny_or_base_clip(quick: bool) -> XrayCLIPModel:
    if quick:
        vision = XrayVisualConfig.from_preset("tiny")
        text = XrayTextConfig.from_preset("tiny", vocab_size=1000, projection_dim=64, max_position_embeddings=32)
    else:  # ViT-B/16 vision, a 6-layer 512-wide text tower: a CLIP step whose compile fits a CPU bench
        vision = XrayVisualConfig.from_preset("vit-b16", num_register_tokens=0)
        text = XrayTextConfig.from_preset("tiny", vocab_size=49408, hidden_size=512, intermediate_size=2048,
                                          num_hidden_layers=6, num_attention_heads=8, projection_dim=512,
                                          max_position_embeddings=77)
    config = XrayCLIPConfig(vision_config=vision, text_config=text, projection_dim=text.projection_dim,
                            slip_weight=0.0, lambda_den=0.0, hashtag_loss_weight=0.0)
    return XrayCLIPModel(config).train()


def clip_step_section(rounds: int, quick: bool) -> None:
    batch = 32 if quick else 8
    torch.manual_seed(0)
    models = {"eager": tiny_or_base_clip(quick)}
    models["compiled"] = tiny_or_base_clip(quick)
    models["compiled"].load_state_dict(models["eager"].state_dict())
    size = models["eager"].config.vision_config.image_size_hw
    pixels = torch.randn(batch, 3, *size)
    length = 16 if quick else 77
    input_ids = torch.randint(1, models["eager"].config.text_config.vocab_size, (batch, length))
    attention_mask = torch.ones_like(input_ids)
    loss_fn = ContrastiveLoss()
    compiled_forward = torch.compile(models["compiled"])  # what torch_compile: true does in the trainers

    def step_of(model: XrayCLIPModel, forward: Callable) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

        def step() -> None:
            out = forward(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
            loss = loss_fn(out.image_embeds, out.text_embeds, out.logit_scale)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    steps = {"eager": step_of(models["eager"], models["eager"]),
             "compiled": step_of(models["compiled"], compiled_forward)}
    share, top = profile_shares(steps["eager"], top=6)
    seconds = rounds_of(steps, rounds)
    ratio, bound = seconds["eager"] / seconds["compiled"], 1.0 / share
    print(f"\n== torch.compile, CLIP train step ({'tiny' if quick else 'ViT-B/16 + 6x512 text'}, batch {batch}, "
          f"fused AdamW)")
    print(f"  eager {seconds['eager'] * 1e3:.0f} ms, compiled {seconds['compiled'] * 1e3:.0f} ms: {ratio:.2f}x; "
          f"profile: {share:.0%} in matrix products + attention -> bound {bound:.2f}x; compiled reaches "
          f"{ratio / bound:.2f} of it {verdict(ratio / bound, 0.95)}")
    print("  eager step's top ops (self time): " + ", ".join(f"{name} {value:.0%}" for name, value in top))
    progressive_recompiles(steps["compiled"], pixels, models["compiled"].config.vision_config.patch_size)


def progressive_recompiles(step: Callable[[], None], pixels: torch.Tensor, patch: int) -> None:
    """A progressive-resolution schedule on the compiled step: the first step at each new size compiles (graphs
    counted), a second visit does not."""
    import time

    from torch._dynamo.utils import counters

    size = pixels.shape[-1]
    sizes = [max(patch, (size * 3 // 4) // patch * patch), size]
    graphs_before, lines = counters["stats"]["unique_graphs"], []
    for new in sizes + sizes:
        pixels.resize_(pixels.shape[0], 3, new, new).normal_()
        graphs = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        step()
        lines.append(f"{new}px {time.perf_counter() - start:.1f} s (+{counters['stats']['unique_graphs'] - graphs} "
                     "graphs)")
    print(f"  progressive resolution on the compiled step, sizes {sizes} then again: " + ", ".join(lines)
          + f"; {counters['stats']['unique_graphs'] - graphs_before} new graphs in all")


# ----------------------------------------------------------------------------------------------------------- mae
def mae_section(rounds: int, quick: bool) -> None:
    from train_step import bench_preset, make_optimizer

    from xray_hf import XrayVisualForPreTraining

    preset, batch, size = ("tiny", 64, 32) if quick else ("vit-b16", 4, 224)
    result = bench_preset(preset, batch, size, rounds, "adamw", None, False, STATISTIC["value"])
    print(f"\n== MAE train step vs dense train step, {preset} @{size}, batch {batch}, fused AdamW ({STATISTIC['value']} of {rounds})")
    print(f"  dense {result['dense'] * 1e3:.0f} ms, MAE {result['mae'] * 1e3:.0f} ms: {result['ratio']:.2f}x "
          f"{verdict(result['ratio'], 1.7)}; token-count bound {result['bound']:.2f}x "
          f"({result['ratio'] / result['bound']:.0%} of it)")
    config = XrayVisualConfig.from_preset(preset, image_size=size, **(
        dict(patch_size=4, decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
             decoder_intermediate_size=128) if quick else {}))
    model = XrayVisualForPreTraining(config).train()
    optimizer = make_optimizer("adamw", model.parameters())
    pixels = torch.randn(batch, 3, size, size)

    def step() -> None:
        model(pixels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    share, top = profile_shares(step, top=8)
    print(f"  MAE step profile: {share:.0%} in matrix products + attention; top ops: "
          + ", ".join(f"{name} {value:.0%}" for name, value in top))


# ------------------------------------------------------------------------------------------------- ToMe and bf16
def tome_bf16_section(rounds: int, quick: bool, matmul_ratio: float) -> None:
    preset, batch = ("tiny", 64) if quick else ("vit-b16", 8)
    pixels = torch.randn(batch, 3, *ours(preset).config.image_size_hw)
    r = 2 if quick else 16
    runners = {"dense": runner(ours(preset), pixels), "tome": runner(ours(preset, tome_r=r), pixels)}
    with_bf16 = quick or not bf16_skipped(matmul_ratio, f"bf16 weights, {preset} inference")
    if with_bf16:
        runners["bf16"] = runner(ours(preset, dtype=torch.bfloat16), pixels.bfloat16())
    seconds = rounds_of(runners, rounds)
    tome = seconds["dense"] / seconds["tome"]
    print(f"\n== ToMe and bf16, {preset} inference, batch {batch}")
    print(f"  ToMe r={r} / dense: {tome:.2f}x {verdict(tome, 1.9)}")
    if with_bf16:
        bf16 = seconds["dense"] / seconds["bf16"]
        print(f"  bf16 / fp32: {bf16:.2f}x = {bf16 / matmul_ratio:.0%} of the matmul ratio {matmul_ratio:.1f}x "
              f"{verdict(bf16 / matmul_ratio, 0.8)}")


# ----------------------------------------------------------------------------------------------------- retention
def retention_section(checkpoint: str, max_samples: int) -> None:
    from xray_hf.checkpoint import load_checkpoint
    from xray_hf.data.embedded import load_embedded
    from xray_hf.eval.run import run_eval
    from xray_hf.export.runtime import XrayOnnxModel

    pieces = load_checkpoint(checkpoint, video=True)
    common = {"tokenizer": pieces.tokenizer, "image_processor": pieces.image_processor,
              "video_processor": pieces.video_processor, "plots": False, "max_samples": max_samples}
    tasks = [("retrieval", "openmoji", ("image_retrieval_recall@5", "image_retrieval_recall@10",
                                        "text_retrieval_recall@5", "text_retrieval_recall@10")),
             ("zero-shot", "moving-shapes", ("acc1", "acc5")), ("zero-shot", "fashion-mnist", ("acc1", "acc5"))]
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(checkpoint, folder, int8=("image", "video", "text"))
        models = {"torch": pieces.model.eval(), "onnx fp32": XrayOnnxModel(folder),
                  "onnx int8": XrayOnnxModel(folder, int8=True),  # all three encoders
                  "onnx int8 vision": XrayOnnxModel(folder, int8=("image", "video"))}  # --int8: fp32 text queries
        print(f"\n== int8 retention: {checkpoint} (test splits, at most {max_samples} samples)")
        for task, dataset, keys in tasks:
            metrics = {name: run_eval(model, task, dataset, "test", **common)["metrics"] for name, model in
                       models.items()}
            for key in keys:
                base = metrics["torch"][key]
                kept = ", ".join(f"{name} {metrics[name][key]:.4f} ({metrics[name][key] / base:.3f})"
                                 for name in ("onnx fp32", "onnx int8", "onnx int8 vision")) if base \
                    else "torch metric is 0"
                print(f"  {task} {dataset} {key}: torch {base:.4f}; {kept}")
        pixels = torch.randn(64, 3, *models["torch"].config.vision_config.image_size_hw)
        with torch.inference_mode():
            reference = models["torch"].get_image_features(pixels).pooler_output
        cosine = torch.nn.functional.cosine_similarity(
            models["onnx int8"].get_image_features(pixels).pooler_output, reference, dim=-1)
        print(f"  int8 image embeddings vs torch on noise images: cosine mean {cosine.mean():.4f}, min "
              f"{cosine.min():.4f}")
        captions = list(load_embedded("openmoji", split="test")["caption"])
        tokens = pieces.tokenizer(captions, padding=True, return_tensors="pt")
        with torch.inference_mode():
            reference = models["torch"].get_text_features(**tokens).pooler_output
        cosine = torch.nn.functional.cosine_similarity(models["onnx int8"].get_text_features(
            tokens["input_ids"], tokens["attention_mask"]).pooler_output, reference, dim=-1)
        worst = int(cosine.argmin())
        print(f"  int8 text embeddings vs torch on the {len(captions)} OpenMoji test names: cosine mean "
              f"{cosine.mean():.4f}, min {cosine.min():.4f} ({captions[worst]!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--statistic", choices=("min", "median"), default="min",
                        help="per-runner time over the rounds (default min: steadier on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the script runs")
    parser.add_argument("--retention-checkpoint", default=None, help="an XrayCLIPModel directory (section retention)")
    parser.add_argument("--max-samples", type=int, default=2000, help="retention: test samples per set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    STATISTIC["value"] = args.statistic
    sections = args.only or [s for s in SECTIONS if s != "retention" or args.retention_checkpoint]
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_model()}; matmul 1024^2: "
          f"fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s ({bf16 / fp32:.1f}x)")
    print(f"load average {os.getloadavg()[0]:.1f} over {os.cpu_count()} cores at start (a shared machine: read ratios)")
    if "onnx" in sections:
        onnx_section(args.threads, args.rounds, args.quick)
    if "compile" in sections:
        compile_section(args.rounds, args.quick, bf16 / fp32)
    if "clip-step" in sections:
        clip_step_section(args.rounds, args.quick)
    if "mae" in sections:
        mae_section(args.rounds, args.quick)
    if "tome-bf16" in sections:
        tome_bf16_section(args.rounds, args.quick, bf16 / fp32)
    if "retention" in sections:
        if args.retention_checkpoint is None:
            raise SystemExit("--only retention needs --retention-checkpoint DIR")
        retention_section(args.retention_checkpoint, args.max_samples)
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; matmul again: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} "
          f"GFLOP/s ({bf16 / fp32:.1f}x)")


if __name__ == "__main__":
    main()
