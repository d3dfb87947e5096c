"""Memory per GPU of the XrayVisual presets under DDP and FSDP2: a plan for scaling out, computed, not typed.

    python bench/memory_plan.py                    # vit-l16, vit-h14, evit-2b; DDP, FSDP2 on 8 and 64 GPUs
    python bench/memory_plan.py --markdown         # the tables and assumptions only, for the README
    python bench/memory_plan.py --quick            # smaller shapes, 4-frame clips (the test runs it: ~4.5 min on 2 cores)
    python bench/memory_plan.py --json plan.json   # every number, for tools and tests

Where each number comes from:

- Parameters: the real models built on the `meta` device (`XrayVisualConfig.from_preset(name)`), and, for the
  CLIP stage, `XrayCLIPModel` with the LLM2CLIP text tower on a LLaMA-3.2-1B-shaped config (frozen). FSDP units
  are the trainers' (`xray_hf.trainers.fsdp`): each `XrayVisualLayer` and LLM decoder layer, then the frozen LLM's
  remaining parameters (embeddings, norm) as one unit; the rest (patch embeddings, heads, adapter) is the root unit.
- Optimizer state: one step of the package's own optimizers (`xray_hf.trainers.optim.build_optimizer`: timm's
  Lion, torch's fused AdamW) on a small layer; the bytes of state per parameter element are read off the state.
- Activations: measured on this CPU. One real block of each kind the preset has (dense, EViT) at the real width
  runs forward and backward at small token counts and batches; a dispatch mode records every tensor storage the
  block allocates and which are still alive after the forward (what the backward keeps: activations, saved
  inputs, autocast copies) and at the peak of the backward. Bytes are fitted as c + B (a + b N) per block from
  three shapes, checked on a fourth, then summed over the preset's layers at their real token counts (taken
  from a `meta` forward of the full model, so EViT's shrinking sequence is the model's own) and scaled to the
  stated batch: linear extrapolation in depth, batch and tokens. The stem (patch embedding, position
  embeddings) and head (final norm, pooling) are measured at the real input size. `saved_tensors_hooks` count
  what autograd saves, as a cross-check of the dispatch-mode count. The forward runs under bf16 autocast with
  CUDA's autocast policy for layer_norm, softmax and sum (fp32; CPU autocast keeps them in bf16), fp32 weights for
  DDP and bf16 ones for FSDP2 (what its MixedPrecisionPolicy hands the forward); checkpointing is the model's own
  (`activation_checkpointing_enable(use_reentrant=False)`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import xray_hf  # noqa: F401  (registers the Auto classes)
from xray_hf import XrayVisualConfig, XrayVisualModel
from xray_hf.trainers.fsdp import frozen_subtrees, transformer_blocks
from xray_hf.trainers.optim import build_optimizer, param_groups

GIB = 2**30
BF16, FP32 = torch.bfloat16, torch.float32
PRESETS = ("vit-l16", "vit-h14", "evit-2b")
OPTIMIZERS = ("adamw", "lion")

# LLaMA-3.2-1B's architecture (the paper's LLaMA-1B text tower, 4.6.2): a shape, not weights.
LLAMA_1B_CONFIG: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}


def nbytes(dtype: torch.dtype) -> int:
    """Bytes of one element of `dtype`."""
    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------------ parameters
@dataclass
class ModelShape:
    """Parameter counts of one model and its FSDP units."""

    name: str
    trainable: int
    frozen: int
    units: list[int]  # parameters per FSDP unit (`_no_split_modules`), in model order
    trainable_units: list[int]  # trainable parameters of each unit
    root: int  # parameters outside every unit (the root unit)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP units the trainers shard (`xray_hf.trainers.fsdp.shard_model`): each transformer block (a
    `_no_split_modules` class in a `ModuleList`), then each wholly frozen submodel (the LLM's embeddings and norm);
    the rest is the root unit."""
    blocks = transformer_blocks(model)
    taken = {id(p) for block in blocks for p in block.parameters()}
    return blocks + frozen_subtrees(model, taken)


def model_shape(name: str, model: nn.Module) -> ModelShape:
    """Count parameters (each shared tensor once) of a model built on the meta device."""
    params = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
    units, trainable_units, seen = [], [], set()
    for unit in fsdp_units(model):
        own = [p for p in unit.parameters() if id(p) not in seen]
        seen.update(id(p) for p in own)
        units.append(sum(p.numel() for p in own))
        trainable_units.append(sum(p.numel() for p in own if p.requires_grad))
    root = sum(p.numel() for i, p in params.items() if i not in seen)
    return ModelShape(name, trainable, frozen, units, trainable_units, root)


def meta_backbone(preset: str) -> XrayVisualModel:
    """The preset's backbone with meta tensors: shapes and a forward, no memory."""
    with torch.device("meta"):
        return XrayVisualModel(XrayVisualConfig.from_preset(preset))


def meta_clip(preset: str) -> nn.Module:
    """`XrayCLIPModel`: the preset's backbone and the LLM2CLIP text tower on a frozen LLaMA-1B-shaped LLM."""
    from xray_hf import XrayCLIPConfig, XrayCLIPModel

    vision = XrayVisualConfig.from_preset(preset).to_dict()
    config = XrayCLIPConfig(vision_config=vision, text_config={"llm_config": LLAMA_1B_CONFIG, "freeze_llm": True})
    with torch.device("meta"):
        return XrayCLIPModel(config)


def token_schedule(model: XrayVisualModel, pixel_shape: tuple[int, ...]) -> list[int]:
    """Input token count of every layer for one sample of `pixel_shape`, from a meta forward in training mode."""
    counts: list[int] = []
    handles = [layer.register_forward_hook(lambda mod, args, out: counts.append(args[0].shape[1]))
               for layer in model.encoder.layer]
    model.train()
    with torch.no_grad():
        model(torch.empty(1, *pixel_shape, device="meta"))
    for handle in handles:
        handle.remove()
    return counts


# ------------------------------------------------------------------------------------------- optimizer state
def optimizer_state_bytes(name: str) -> float:
    """Bytes of optimizer state per parameter element after one step of `build_optimizer(name)` (scalar state such
    as AdamW's step counter, one per tensor, is left out)."""
    layer = nn.Linear(16, 16)
    optimizer = build_optimizer(name, param_groups(layer, 1e-3, 0.05), 1e-3)
    layer(torch.randn(4, 16)).square().mean().backward()
    optimizer.step()
    state_bytes = sum(
        t.numel() * t.element_size()
        for p in layer.parameters() for t in optimizer.state[p].values()
        if isinstance(t, torch.Tensor) and t.numel() == p.numel()
    )
    return state_bytes / sum(p.numel() for p in layer.parameters())


# --------------------------------------------------------------------------------------------- model state
@dataclass
class Precision:
    """Dtypes on the GPU: fp32 master weights, grads and optimizer state; bf16 compute."""

    master: torch.dtype = FP32  # DDP's replicas and FSDP2's shards (what the optimizer updates)
    param: torch.dtype = BF16  # FSDP2 MixedPrecisionPolicy.param_dtype: the all-gathered, unsharded copy
    reduce: torch.dtype = BF16  # FSDP2 reduce_dtype (accelerate's default for mixed_precision: bf16)


def state_bytes(shape: ModelShape, strategy: str, world: int, opt_bytes: float, prec: Precision) -> dict[str, float]:
    """Bytes per GPU of weights, gradients, optimizer state and communication buffers.

    DDP: everything replicated; gradients fp32; the reducer's buckets hold another copy of the trainable
    gradients (`gradient_as_bucket_view=False`, DDP's and accelerate's default). FSDP2: weights, gradients and
    optimizer state sharded over `world`; plus the unsharded working set: the bf16 all-gather of the largest unit
    and of the next one (prefetched), one unit's unsharded gradients and its reduce-scatter input, and the root
    unit, which FSDP2 does not reshard after forward.
    """
    master, param, reduce = nbytes(prec.master), nbytes(prec.param), nbytes(prec.reduce)
    if strategy == "ddp":
        return {"weights": master * shape.total, "grads": master * shape.trainable,
                "optimizer": opt_bytes * shape.trainable, "comm": master * shape.trainable}
    largest = sorted(shape.units, reverse=True)[:2]
    working = (param * sum(largest) + (param + reduce) * max(shape.trainable_units, default=0)
               + param * shape.root)
    return {"weights": master * shape.total / world, "grads": master * shape.trainable / world,
            "optimizer": opt_bytes * shape.trainable / world, "comm": working}


# --------------------------------------------------------------------------------------- activation counting
class LiveStorages(TorchDispatchMode):
    """Every storage an op allocates (an output sharing no storage with the op's inputs), tracked by weak
    reference under a serial number (a freed storage's address is reused by later ones); `snapshot()` records
    which are alive. Storages made outside the mode (parameters, the block's input) are never counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, StorageWeakRef, int]] = {}  # address -> (serial, weak ref, bytes)
        self.serials = 0
        self.snapshots: list[tuple[str, dict[int, int]]] = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(t.untyped_storage()).cdata
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                known = self.live.get(ref.cdata)
                if ref.cdata not in inputs and (known is None or known[1].expired()):
                    self.serials += 1
                    self.live[ref.cdata] = (self.serials, ref, storage.nbytes())
        self.snapshot(self.phase)
        return out

    def alive(self) -> dict[int, int]:
        """{serial: bytes} of the tracked storages still alive."""
        self.live = {k: v for k, v in self.live.items() if not v[1].expired()}
        return {serial: n for serial, _, n in self.live.values()}

    def snapshot(self, phase: str) -> None:
        self.snapshots.append((phase, self.alive()))

    def key(self, tensor: torch.Tensor) -> int | None:
        """The serial of a tracked, alive storage of `tensor`, None for storages made outside the mode."""
        known = self.live.get(StorageWeakRef(tensor.untyped_storage()).cdata)
        return None if known is None or known[1].expired() else known[0]

    def total(self, phase: str, exclude: set[int | None] = frozenset()) -> list[int]:
        """Alive bytes at each snapshot of `phase`, without the storages in `exclude`."""
        return [sum(n for k, n in alive.items() if k not in exclude) for p, alive in self.snapshots if p == phase]


# CUDA autocast's fp32 policies (ATen autocast_mode.h, AT_FORALL_FP32 and AT_FORALL_FP32_SET_OPT_DTYPE) for the
# ops the backbone calls: layer_norm runs on fp32 casts of its inputs; softmax, log_softmax and sum of a
# lower-precision tensor compute in and return fp32. CPU autocast keeps them in bf16, so a CPU measurement
# without this would save less than a GPU step does.
_CUDA_FP32 = {F.layer_norm, torch.layer_norm}
_CUDA_FP32_OUTPUT = {F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, torch.log_softmax,
                     torch.Tensor.log_softmax, torch.sum, torch.Tensor.sum}


def _low_precision(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (BF16, torch.float16)


class CudaAutocastPolicy(TorchFunctionMode):
    """Under CPU autocast, give these ops CUDA autocast's fp32 policies, as they run in a GPU step."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu") and any(_low_precision(t) for t in tree_flatten((args, kwargs))[0]):
            if func in _CUDA_FP32:
                args, kwargs = tree_map(lambda t: t.float() if _low_precision(t) else t, (args, kwargs))
                with torch.autocast("cpu", enabled=False):
                    return func(*args, **kwargs)
            if func in _CUDA_FP32_OUTPUT and kwargs.get("dtype") is None:
                return func(*args, **{**kwargs, "dtype": FP32})
        return func(*args, **kwargs)


@dataclass
class Measured:
    """Bytes one run keeps alive: at the end of forward (inside autocast: with its cache of bf16 weight copies),
    after forward (what the backward will use), after each op of the backward (parameter gradients left out: they
    are counted as gradients); what autograd saved (hooks); the output."""

    forward_end: int
    retained: int
    backward: list[int]
    saved: int
    output: int
    output_dtype: torch.dtype


def measure(run: Callable[[], torch.Tensor], params: list[nn.Parameter]) -> Measured:
    """Forward under bf16 autocast (CUDA's fp32 ops emulated), then backward of a sum of the output."""
    tracker = LiveStorages()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        serial = tracker.key(t)
        if serial is not None:
            saved[serial] = t.untyped_storage().nbytes()
        return t

    with CudaAutocastPolicy(), tracker:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=BF16):
            out = run()
            tracker.snapshot("forward_end")
        tracker.snapshot("retained")
        tracker.phase = "backward"
        # the engine directly: `Tensor.backward` is itself a torch function, which the policy mode would run with
        # the mode off, and the recomputation of a checkpointed block must see the same policy as its forward
        torch.autograd.Variable._execution_engine.run_backward(
            (out,), (torch.ones_like(out),), False, False, (), allow_unreachable=True, accumulate_grad=True)
        tracker.phase = "done"
    grads = {tracker.key(p.grad) for p in params if p.grad is not None}
    for p in params:
        p.grad = None
    return Measured(
        forward_end=tracker.total("forward_end")[0], retained=tracker.total("retained")[0],
        backward=tracker.total("backward", exclude=grads), saved=sum(saved.values()),
        output=out.untyped_storage().nbytes(), output_dtype=out.dtype,
    )


@dataclass
class Fit:
    """bytes(B, N) = c + B (a + b N): c is batch-independent (autocast's bf16 weight copies), a per sample, b per
    token."""

    c: float
    a: float
    b: float

    def __call__(self, batch: int, tokens: int) -> float:
        return self.c + batch * (self.a + self.b * tokens)

    @classmethod
    def from_points(cls, q21: float, q22: float, q31: float, n1: int, n2: int) -> Fit:
        """From (B=2, N=n1), (B=2, N=n2), (B=3, N=n1). (At B=1 some backward ops differ: a batch of one needs
        no reduction over the batch.)"""
        per_sample = q31 - q21  # a + b n1
        b = (q22 - q21) / (2 * (n2 - n1))
        return cls(c=q21 - 2 * per_sample, a=per_sample - b * n1, b=b)

    @classmethod
    def from_batches(cls, q2: float, q3: float) -> Fit:
        """From B=2 and B=3 at the one token count that matters (the stem at the real input size; at B=1 its
        backward runs other ops: the CLS/register expand's gradient needs no reduction)."""
        return cls(c=3 * q2 - 2 * q3, a=q3 - q2, b=0.0)


SCALARS = ("forward_end", "retained", "saved")


@dataclass
class Fitted:
    """A block's (or the stem's) bytes as functions of batch and tokens. The backward's peak is the largest of the
    fitted bytes alive after each of its ops (the op sequence is the same at every shape), so the peak may move
    from a weight-sized temporary at small shapes to an activation-sized one at large shapes."""

    scalars: dict[str, Fit]
    backward: list[Fit]
    output_dtype: torch.dtype

    def at(self, batch: int, tokens: int) -> dict[str, float]:
        values = {q: f(batch, tokens) for q, f in self.scalars.items()}
        values["backward_peak"] = max(f(batch, tokens) for f in self.backward)
        return values

    @classmethod
    def from_runs(cls, runs: list[Measured], fit: Callable[..., Fit]) -> Fitted:
        scalars = {q: fit(*(getattr(r, q) for r in runs)) for q in SCALARS}
        if len({len(r.backward) for r in runs}) == 1:
            backward = [fit(*values) for values in zip(*(r.backward for r in runs))]
        else:  # the op sequences differ: fit the peaks themselves
            backward = [fit(*(max(r.backward) for r in runs))]
        return cls(scalars, backward, runs[0].output_dtype)


def check_error(fitted: Fitted, run: Measured, batch: int, tokens: int) -> dict[str, float]:
    """Relative error of the fit against a run it was not fitted on."""
    predicted = fitted.at(batch, tokens)
    measured = {q: getattr(run, q) for q in SCALARS} | {"backward_peak": max(run.backward)}
    return {q: abs(predicted[q] - measured[q]) / max(1, measured[q]) for q in measured}


def block_fits(layer: nn.Module, width: int, dtype: torch.dtype, num_prefix: int, patches: tuple[int, int, int],
               ) -> tuple[Fitted, dict[str, Any]]:
    """Measure a block at (B, N) = (2, n1), (2, n2), (3, n1), fit, and check the fit at (3, n3)."""
    n1, n2, n3 = (num_prefix + p for p in patches)
    params = list(layer.parameters())

    def at(batch: int, tokens: int) -> Measured:
        x = torch.randn(batch, tokens, width, dtype=dtype, requires_grad=True)
        return measure(lambda: layer(x, None, num_prefix_tokens=num_prefix)[0], params)

    runs = [at(2, n1), at(2, n2), at(3, n1)]
    fitted = Fitted.from_runs(runs, lambda q21, q22, q31: Fit.from_points(q21, q22, q31, n1, n2))
    check = at(3, n3)
    report = {
        "stream_dtype": str(dtype), "output_dtype": str(fitted.output_dtype),
        "fits": {q: asdict(f) for q, f in fitted.scalars.items()},
        "points": {f"{b}x{n}": {"retained": r.retained, "saved": r.saved, "output": r.output,
                                "backward_peak": max(r.backward)}
                   for (b, n), r in zip([(2, n1), (2, n2), (3, n1), (3, n3)], runs + [check])},
        "check_shape": [3, n3], "check_error": check_error(fitted, check, 3, n3),
        "backward_ops_aligned": len(fitted.backward) > 1,
    }
    return fitted, report


def reduced_model(preset: str) -> tuple[XrayVisualModel, list[float]]:
    """The preset at its real width with one layer of each kind it has (dense, then each EViT keep rate)."""
    config = XrayVisualConfig.from_preset(preset)
    kinds = list(dict.fromkeys(config.keep_rate_for_layer(i) for i in range(config.num_hidden_layers)))
    evit = [i for i, k in enumerate(kinds) if k < 1.0]
    small = XrayVisualConfig.from_preset(preset, num_hidden_layers=len(kinds), evit_layers=evit,
                                         keep_rate=[kinds[i] for i in evit] if evit else 1.0)
    return XrayVisualModel(small).train(), kinds


def stem_fits(model: XrayVisualModel, pixel_shape: tuple[int, ...]) -> tuple[Fitted, torch.dtype]:
    """The model without its blocks (patch and position embeddings, CLS/registers, final norm, pooling) at the
    real input size, batches 2 and 3; also the dtype of the token stream it hands the first block."""
    layers = model.encoder.layer
    model.encoder.layer = nn.ModuleList()
    stream: list[torch.dtype] = []
    handle = model.embeddings.register_forward_hook(lambda mod, args, out: stream.append(out[0].dtype))
    try:
        runs = [measure(lambda b=batch: model(torch.randn(b, *pixel_shape)).pooler_output, list(model.parameters()))
                for batch in (2, 3)]
    finally:
        handle.remove()
        model.encoder.layer = layers
    return Fitted.from_runs(runs, Fit.from_batches), stream[0]


# -------------------------------------------------------------------------------------------- the plan
MODES = {  # how each strategy runs a bf16 step on GPUs, and so what the measurement reproduces
    "ddp": "fp32 weights, torch.autocast(bf16) (accelerate mixed_precision: bf16)",
    "fsdp2": "bf16 unsharded params (MixedPrecisionPolicy param_dtype=bf16) + torch.autocast(bf16), as accelerate",
}


@dataclass
class Inputs:
    """The stated per-GPU batch: images at the preset's native size, and video clips."""

    image_batch: int
    video_batch: int
    frames: int
    video_size: int

    def shapes(self, config: XrayVisualConfig) -> dict[str, tuple[tuple[int, ...], int]]:
        h, w = config.image_size_hw
        return {f"{self.image_batch} images {h}px": ((config.num_channels, h, w), self.image_batch),
                f"{self.video_batch} clips {self.frames}x{self.video_size}px":
                    ((self.frames, config.num_channels, self.video_size, self.video_size), self.video_batch)}


def activation_plan(preset: str, inputs: Inputs, patches: tuple[int, int, int]) -> dict[str, Any]:
    """Measured activation bytes per GPU for the preset at the stated inputs, per mode and checkpointing."""
    config = XrayVisualConfig.from_preset(preset)
    meta = meta_backbone(preset)
    model, kinds = reduced_model(preset)
    kind_of_layer = [kinds.index(config.keep_rate_for_layer(i)) for i in range(config.num_hidden_layers)]
    result: dict[str, Any] = {"kinds": kinds, "inputs": {}, "fits": {}}
    schedules = {label: token_schedule(meta, shape) for label, (shape, _) in inputs.shapes(config).items()}
    for mode in MODES:
        model.to(FP32 if mode == "ddp" else BF16)
        stems = {label: stem_fits(model, shape) for label, (shape, _) in inputs.shapes(config).items()}
        for ckpt in (False, True):
            if ckpt:
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
            key = f"{mode}/{'ckpt' if ckpt else 'full'}"
            # fits per block kind and stream dtype: EViT's fused token is a sum, which CUDA autocast runs in fp32,
            # and `cat` promotes, so after an EViT layer the stream is fp32
            cache: dict[tuple[int, torch.dtype], tuple[Fitted, dict[str, Any]]] = {}
            for label, (_, batch) in inputs.shapes(config).items():
                stem_fit, stream = stems[label]
                stem = stem_fit.at(batch, 0)
                layers = []
                for i, tokens in enumerate(schedules[label]):
                    kind = kind_of_layer[i]
                    if (kind, stream) not in cache:
                        cache[(kind, stream)] = block_fits(model.encoder.layer[kind], config.hidden_size, stream,
                                                           config.num_prefix_tokens, patches)
                    block = cache[(kind, stream)][0]
                    layers.append(block.at(batch, tokens) | {"dtype": str(stream)})
                    stream = block.output_dtype
                forward_peak = stem["forward_end"] + sum(lay["forward_end"] for lay in layers)
                retained = stem["retained"] + sum(lay["retained"] for lay in layers)
                transient = max(lay["backward_peak"] - lay["retained"] for lay in layers + [stem])
                entry = result["inputs"].setdefault(label, {"tokens": schedules[label]})
                entry[key] = {
                    "retained": retained, "forward_peak": forward_peak, "backward_peak": retained + transient,
                    "peak": max(forward_peak, retained + transient),
                    "saved_by_autograd": stem["saved"] + sum(lay["saved"] for lay in layers),
                    "stream_dtypes": sorted({lay["dtype"] for lay in layers}),
                }
            result["fits"][key] = [{"keep_rate": kinds[k]} | report for (k, _), (_, report) in cache.items()]
    model.activation_checkpointing_disable()
    return result


def plan(presets: list[str], worlds: list[int], inputs: Inputs, patches: tuple[int, int, int],
         clip: bool) -> dict[str, Any]:
    """Everything: parameters, model state per strategy, measured activations, totals."""
    prec = Precision()
    opt_bytes = {name: optimizer_state_bytes(name) for name in OPTIMIZERS}
    strategies = ["ddp"] + [f"fsdp2/{n}" for n in worlds]
    out: dict[str, Any] = {
        "strategies": strategies, "torch": torch.__version__, "python": platform.python_version(),
        "optimizer_state_bytes": opt_bytes, "precision": {k: str(v) for k, v in asdict(prec).items()},
        "modes": MODES, "inputs": asdict(inputs), "measure_patches": patches, "models": {},
    }
    for preset in presets:
        shape = model_shape(preset, meta_backbone(preset))
        acts = activation_plan(preset, inputs, patches)
        entry = {"shape": asdict(shape), "activations": acts, "state": {}, "total": {}}
        for strategy in strategies:
            kind, world = (strategy, 1) if strategy == "ddp" else ("fsdp2", int(strategy.split("/")[1]))
            for opt in OPTIMIZERS:
                state = state_bytes(shape, kind, world, opt_bytes[opt], prec)
                entry["state"][f"{strategy}/{opt}"] = state
                for ckpt in ("full", "ckpt"):
                    peak = max(v[f"{kind}/{ckpt}"]["peak"] for v in acts["inputs"].values())
                    entry["total"][f"{strategy}/{opt}/{ckpt}"] = sum(state.values()) + peak
        out["models"][preset] = entry
    if clip:
        preset = presets[-1]
        shape = model_shape(f"{preset} + LLM2CLIP (LLaMA-1B, frozen)", meta_clip(preset))
        out["clip"] = {"shape": asdict(shape), "state": {
            f"{s}/{opt}": state_bytes(shape, "ddp" if s == "ddp" else "fsdp2",
                                      1 if s == "ddp" else int(s.split("/")[1]), opt_bytes[opt], prec)
            for s in strategies for opt in OPTIMIZERS}}
    return out


# ------------------------------------------------------------------------------------------------ report
def gib(value: float, digits: int = 1) -> str:
    return f"{value / GIB:.{digits}f}"


def short(dtype: str) -> str:
    return {"torch.bfloat16": "bf16", "torch.float32": "fp32", "torch.float16": "fp16"}.get(dtype, dtype)


def assumptions(result: dict[str, Any]) -> list[str]:
    """The header: command, torch, and what every number assumes."""
    inputs, prec, opt = result["inputs"], result["precision"], result["optimizer_state_bytes"]
    state = (f"- Weights, gradients and optimizer state in {short(prec['master'])}; optimizer state per parameter, "
             f"read from one step of the package's optimizers: AdamW {opt['adamw']:g} B (2 moments), Lion "
             f"{opt['lion']:g} B (timm's Lion: 1 momentum).")
    ddp = (f"- DDP: {result['modes']['ddp']}; all replicated, plus the reducer's gradient buckets "
           "(`gradient_as_bucket_view=False`, the default; `True` removes that column).")
    fsdp = (f"- FSDP2: {result['modes']['fsdp2']}; weights (the fp32 shards are the master copy), gradients and "
            f"optimizer state sharded over N; plus the unsharded working set: {short(prec['param'])} all-gathers of "
            f"the two largest units (current + prefetched), one unit's gradients and {short(prec['reduce'])} "
            "reduce-scatter input, and the root unit (not resharded). Units as the trainers shard: each "
            "`XrayVisualLayer` (and each LLaMA decoder layer plus the frozen LLM's embeddings in the CLIP row); "
            "patch embeddings and heads in the root.")
    acts = (f"- Activations of the backbone (dense training: hashtag, CLIP, distillation; MAE's encoder sees 25% / "
            f"10% of the tokens) for {inputs['image_batch']} images at the preset's size or {inputs['video_batch']} "
            f"clips of {inputs['frames']} frames at {inputs['video_size']} px per GPU (totals take the larger): "
            "measured on CPU block by block under bf16 autocast with CUDA's fp32 ops, extrapolated linearly in "
            "batch, tokens and depth. Peak = what the forward leaves for the backward + the largest one-block "
            "backward transient (with checkpointing: the block inputs + one block recomputed), or the end of the "
            "forward if higher (autocast caches a bf16 copy of every fp32 weight until the forward returns).")
    left_out = ("- Not counted: CUDA context and allocator slack, the stage's heads (MAE decoder, hashtag "
                "classifier), the text tower's activations, optimizer-step temporaries, the input batch.")
    return [f"GiB per GPU from `{result['command']}` (torch {result['torch']}):", "", state, ddp, fsdp, acts,
            left_out]


def table(header: list[str], align: str) -> list[str]:
    """A Markdown table's header and rule; `align` has one letter per column, l(eft) or r(ight)."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]


def render(result: dict[str, Any], details: bool) -> str:
    """Markdown: assumptions, model state, activations, totals (and, with `details`, the block measurements)."""
    models = result["models"]
    strategies = result["strategies"]
    label = {s: "DDP" if s == "ddp" else f"FSDP2 N={s.split('/')[1]}" for s in strategies}
    lines = [*assumptions(result), ""]
    lines += table(["model", "params", "largest unit", "strategy", "weights", "grads", "buckets / unsharded",
                    "AdamW state", "Lion state"], "lrrlrrrrr")
    rows = list(models.values()) + ([result["clip"]] if "clip" in result else [])
    for entry in rows:
        shape = entry["shape"]
        title, unit = shape["name"], f"{max(shape['units']) / 1e6:.1f}M"
        params = f"{(shape['trainable'] + shape['frozen']) / 1e6:,.0f}M"
        params += f" ({shape['frozen'] / 1e6:,.0f}M frozen)" if shape["frozen"] else ""
        for s in strategies:
            adam, lion = entry["state"][f"{s}/adamw"], entry["state"][f"{s}/lion"]
            cells = [gib(adam[k], 2) for k in ("weights", "grads", "comm", "optimizer")] + [gib(lion["optimizer"], 2)]
            lines.append(f"| {title} | {params} | {unit} | {label[s]} | " + " | ".join(cells) + " |")
            title = params = unit = ""
    lines += ["", ("Activations, peak GiB per GPU (measured; `ckpt`: non-reentrant activation checkpointing of "
                   "every block):"), ""]
    lines += table(["preset", "batch per GPU", "tokens (first / last block)", "DDP", "DDP, ckpt", "FSDP2",
                    "FSDP2, ckpt"], "llrrrrr")
    for name, entry in models.items():
        title = name
        for batch, act in entry["activations"]["inputs"].items():
            tokens = act["tokens"]
            cells = " | ".join(gib(act[key]["peak"]) for key in ("ddp/full", "ddp/ckpt", "fsdp2/full", "fsdp2/ckpt"))
            lines.append(f"| {title} | {batch} | {tokens[0]} / {tokens[-1]} | {cells} |")
            title = ""
    lines += ["", "Total GiB per GPU (model state + the larger activation peak):", ""]
    lines += table(["preset", "strategy", "AdamW", "AdamW, ckpt", "Lion", "Lion, ckpt"], "llrrrr")
    for name, entry in models.items():
        title = name
        for s in strategies:
            cells = " | ".join(gib(entry["total"][f"{s}/{o}/{c}"]) for o in OPTIMIZERS for c in ("full", "ckpt"))
            lines.append(f"| {title} | {label[s]} | {cells} |")
            title = ""
    if details:
        lines += ["", (f"Block measurements (bytes; fit c + B (a + b N) from B x N = 2 x n1, 2 x n2, 3 x n1, "
                       f"checked at 3 x n3; N = {result['measure_patches']} patches + the prefix; kept = autograd's "
                       "saved tensors + the block output at every point, `kept - saved - output` shows it):"), ""]
        lines += table(["preset", "mode", "keep rate", "stream", "kept after forward: c / a / b", "saved: b",
                        "kept - saved - output", "fit error at 3 x n3 (kept, backward peak)"], "llrllrrl")
        for name, entry in models.items():
            for mode, kinds in entry["activations"]["fits"].items():
                for kind in kinds:
                    kept, saved, err = kind["fits"]["retained"], kind["fits"]["saved"], kind["check_error"]
                    gap = max(abs(p["retained"] - p["saved"] - p["output"]) for p in kind["points"].values())
                    lines.append(
                        f"| {name} | {mode} | {kind['keep_rate']} | {short(kind['stream_dtype'])} | {kept['c']:,.0f} / "
                        f"{kept['a']:,.0f} / {kept['b']:,.0f} | {saved['b']:,.0f} | {gap:,} | {err['retained']:.2%}, "
                        f"{err['backward_peak']:.2%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64], help="FSDP2 world sizes")
    parser.add_argument("--image-batch", type=int, default=32, help="images per GPU (at the preset's size)")
    parser.add_argument("--video-batch", type=int, default=8, help="clips per GPU")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (16; 4 with --quick)")
    parser.add_argument("--video-size", type=int, default=224)
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP + LLM2CLIP (LLaMA-1B) row")
    parser.add_argument("--quick", action="store_true",
                        help="blocks measured at 4-12 patches instead of 16-48, 4-frame clips: checks it runs")
    parser.add_argument("--markdown", action="store_true", help="the README block only, without the fits")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patches = (4, 8, 12) if args.quick else (16, 32, 48)  # the fits are exact (see the check column)
    frames = args.frames or (4 if args.quick else 16)
    inputs = Inputs(args.image_batch, args.video_batch, frames, args.video_size)
    result = plan(args.presets, args.gpus, inputs, patches, clip=not args.no_clip)
    result["quick"] = args.quick
    argv, shown = sys.argv[1:], []
    while argv:  # the command that made these numbers, without the output options
        arg = argv.pop(0)
        if arg == "--json":
            argv.pop(0)
        elif arg != "--markdown" and not arg.startswith("--json="):
            shown.append(arg)
    result["command"] = " ".join(["python bench/memory_plan.py", *shown])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(render(result, details=not args.markdown))


if __name__ == "__main__":
    main()
