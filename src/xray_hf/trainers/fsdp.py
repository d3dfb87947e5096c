"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the stage trainers: one path on CPU ranks (gloo) and GPUs (NCCL).

accelerate enables FSDP only for accelerator distributed types (on CPU processes it silently runs DDP), and its
wrapping puts whatever the transformer blocks leave over (a frozen LLM's embeddings beside a trainable adapter) into
one root unit. So the package shards the model itself, before the optimizer is created, and accelerate is told
nothing about FSDP (it would otherwise wrap the model again):

- units (`shard_model`): every transformer block (a module whose class the model names in `_no_split_modules`, held in
  an `nn.ModuleList`: `XrayVisualLayer`, the LLM's decoder layers, `CLIPEncoderLayer`), then every largest frozen
  submodel left (the LLM2CLIP tower's frozen LLM), then the root. Other no-split modules (the patch embeddings, whose
  `embed_patches` MAE calls outside their `forward`) stay in the root unit;
- 0-d parameters (CLIP's `logit_scale`), which `fully_shard` refuses, stay replicated as DDP keeps every parameter:
  equal on every rank and their gradient averaged over the ranks in backward;
- checkpoints hold full, unsharded tensors in the layout of an unsharded run (`full_model_state`,
  `full_optimizer_state`; `load_full_model_state`, `load_full_optimizer_state`), so a DDP checkpoint resumes under
  FSDP2 and the other way round, and the saved model is a plain `from_pretrained` directory. They go through
  `torch.distributed.checkpoint.state_dict` one tensor at a time: saving gathers each tensor (every rank briefly holds
  that one full tensor on its device) and keeps it on rank 0's CPU only (`cpu_offload`); resuming, rank 0 alone
  reads the files on its CPU (`optimizer.pt` memory-mapped) and broadcasts each tensor, of which every rank keeps
  its shard (`broadcast_from_rank0`). Parameter names map to an unsharded optimizer's indices (`param_groups` order).
- gradient accumulation: accelerate's `no_sync` does nothing for a model it did not shard, so the trainers call
  `set_requires_gradient_sync(False)` on all but the last micro-batch of an accumulation group: one reduce-scatter
  per unit and optimizer step, at the cost of unsharded fp32 gradients of the trainable parameters held between
  micro-batches (4 bytes per parameter on every rank: 7.6 GiB for evit-2b). A larger per-GPU batch with activation
  checkpointing, or `gradient_cache_chunk_size`, avoids both.

What the full-state path costs, for evit-2b (2.0B parameters, AdamW) on N GPUs: rank 0's host memory holds the
full model (7.6 GiB) and then the full optimizer state (15.1 GiB) while it writes a checkpoint, and the same while it
reads one; the devices never hold more than their shards plus one full tensor (at most a block's largest matrix,
under 0.16 GiB). After `train()` every rank gets the plain full fp32 model back (7.6 GiB per GPU for evit-2b, less
than training's peak): the code after training (evaluation on every rank, saving, merging LoRA) needs a plain model,
and the sharded model, its optimizer state and the accelerator's references are released first (the trainers do
not keep them; a stage that keeps its own reference to the model object keeps at most its 1/N parameter shards).

At larger scale (tens of billions of parameters, or host memory below the full optimizer state) one would save
sharded checkpoints with `torch.distributed.checkpoint` instead (DCP: `dcp.save(get_state_dict(model, optimizer))`,
every rank writing its own shards in parallel, no full tensor on any rank and no rank-0 host peak; `dcp.load`
reshards to another world size), convert to a `from_pretrained` directory offline
(`torch.distributed.checkpoint.format_utils.dcp_to_torch_save`), build the model on the `meta` device before
sharding (no full model on any rank at start) and keep it sharded after training (evaluation through the sharded
model on every rank). At the sizes of the XrayVisual presets full tensors on rank 0 are affordable and keep
checkpoints interchangeable between DDP, FSDP2 and one process.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# methods that run a model besides `forward` (FSDP2 hooks only `forward`: these must gather the root unit too)
FORWARD_METHODS = ("get_image_features", "get_video_features", "get_text_features", "generate")


@dataclass
class FSDPSettings:
    """What the user asked FSDP2 to do (from `TrainingArguments.fsdp_config` or `accelerate launch`'s config)."""

    reshard_after_forward: bool = True
    bf16: bool = False  # MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
    activation_checkpointing: bool = False


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y", "on")


def fsdp_settings(args: Any) -> FSDPSettings | None:
    """The FSDP2 request of a run, or None: `fsdp`/`fsdp_config` training arguments (as transformers parses them into
    `fsdp_plugin_args`) or the environment `accelerate launch --config_file configs/accelerate/fsdp2.yaml` sets
    (`ACCELERATE_USE_FSDP`, `FSDP_*`). FSDP1 is refused; bf16 comes from `bf16` or accelerate's `mixed_precision`."""
    plugin = getattr(args, "fsdp_plugin_args", None)
    if plugin is not None:
        version = int(plugin.get("fsdp_version", 2))
        reshard = _flag(plugin.get("reshard_after_forward", True))
        checkpointing = _flag(plugin.get("activation_checkpointing", False))
    elif _flag(os.environ.get("ACCELERATE_USE_FSDP", "false")):
        version = int(os.environ.get("FSDP_VERSION", "1"))
        reshard = _flag(os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true"))
        checkpointing = _flag(os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false"))
    else:
        return None
    if version != 2:
        raise ValueError(f"xray_hf shards with FSDP2 only (fully_shard); got fsdp_version {version}: set it to 2")
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if getattr(args, "fp16", False) or precision == "fp16":
        raise ValueError("FSDP2 here trains in fp32 or bf16 (mixed_precision: bf16), not fp16")
    bf16 = bool(getattr(args, "bf16", False)) or precision == "bf16"
    return FSDPSettings(reshard_after_forward=reshard, bf16=bf16, activation_checkpointing=checkpointing)


# ------------------------------------------------------------------------------------------------- sharding
def no_split_classes(model: nn.Module) -> set[str]:
    """Class names every (sub)model lists in `_no_split_modules` (instance or class attribute), e.g. a CLIP model's
    `XrayVisualLayer` and its LLM's `LlamaDecoderLayer`; also through wrappers such as a PEFT model."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules of a `_no_split_modules` class held in an `nn.ModuleList` (the repeated blocks), in model order."""
    names = no_split_classes(model)
    blocks = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            blocks.extend(child for child in module if type(child).__name__ in names)
    return blocks


def frozen_subtrees(model: nn.Module, taken: set[int]) -> list[nn.Module]:
    """The largest submodels (`PreTrainedModel`s below the root) whose parameters outside `taken` (ids) are all
    frozen, so that no unit mixes frozen and trainable parameters: a frozen LLM's embeddings and norm beside a
    trainable adapter. Only submodels: a unit gathers its parameters in its `forward`, and models call their
    submodels through `forward` (a PEFT wrapper skips its `LoraModel`'s; an LLM's tied head reads the embeddings'
    weight directly), while they may use other modules' parameters directly."""
    from transformers import PreTrainedModel

    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = [p for p in child.parameters() if id(p) not in taken and p.ndim > 0]
            if not params:
                continue
            if isinstance(child, PreTrainedModel) and not any(p.requires_grad for p in params):
                found.append(child)
                taken.update(id(p) for p in params)
            else:
                visit(child)

    visit(model)
    return found


def _average_gradient(param: torch.Tensor) -> None:
    """Post-accumulate-grad hook of a replicated parameter: its gradient becomes the mean over the ranks (the
    accumulated part is already equal everywhere, so averaging after every backward is exact)."""
    dist.all_reduce(param.grad)
    param.grad.div_(dist.get_world_size())


def shard_model(model: nn.Module, settings: FSDPSettings | None = None, device: torch.device | None = None) -> nn.Module:
    """Apply `fully_shard` in place: each transformer block, each largest frozen subtree, then the root; returns
    `model`. Parameters and buffers are first broadcast from rank 0 (as DDP does), so every rank shards the same
    weights. 0-d parameters stay replicated, their gradients averaged in backward; `FORWARD_METHODS` of the root
    gather it as `forward` does. Needs an initialised process group; `device` (default: the first parameter's)
    chooses the mesh (CPU: gloo, CUDA: NCCL)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    settings = settings or FSDPSettings()
    if not dist.is_initialized():
        raise ValueError("shard_model needs torch.distributed to be initialised (launch with torchrun or accelerate)")
    device = device or next(model.parameters()).device
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    scalars = {p for p in model.parameters() if p.ndim == 0}
    for param in scalars:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(_average_gradient)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if settings.bf16
              else MixedPrecisionPolicy())
    kwargs = {"mesh": mesh, "mp_policy": policy, "ignored_params": scalars}
    blocks = transformer_blocks(model)
    taken = {id(p) for block in blocks for p in block.parameters()}
    for module in [*blocks, *frozen_subtrees(model, taken)]:
        fully_shard(module, reshard_after_forward=settings.reshard_after_forward, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)  # the root is needed again right at backward
    for name in FORWARD_METHODS:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _reshard_all(model: nn.Module) -> None:
    """Put every unit back to its sharded parameters (a forward without backward leaves the root gathered)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


# ------------------------------------------------------------------------------------------- checkpoints
def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer behind accelerate's `AcceleratedOptimizer` (whose `step` may skip during accumulation)."""
    return getattr(optimizer, "optimizer", optimizer)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of every parameter of `optimizer`, in the order of its `param_groups`: position i is the parameter an
    unsharded run's `optimizer.state_dict()` calls i (a tied parameter under its first name, as torch's
    `torch.distributed.checkpoint.state_dict` names it)."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters():
        names.setdefault(id(param), name)
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded `state_dict` of a sharded model, on the CPU of rank 0 (empty elsewhere): torch's
    `get_model_state_dict(full_state_dict=True, cpu_offload=True)` gathers one tensor at a time, so no rank holds
    more than one full tensor on its device and only rank 0 the full state (on the CPU). Collective: every rank calls
    it. Tied entries share one tensor, as in the unsharded model, so `save_pretrained` sees the tie."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    _reshard_all(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return {}
    first: dict[int, str] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(value), key)
        if owner != key and owner in state:
            state[key] = state[owner]
    return state


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Load a full (unsharded) `state_dict` held by rank 0 only (on its CPU; `None` elsewhere) into a sharded model:
    torch's `set_model_state_dict(broadcast_from_rank0=True)` sends one tensor at a time and every rank keeps its
    shard. Entries the state lacks (a tied weight saved once) keep their values. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )

    set_model_state_dict(model, (state or {}) if dist.get_rank() == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state of a sharded model in the layout an unsharded run saves (`optimizer.state_dict()`:
    states keyed by parameter index, each tensor of the parameter's full shape), on the CPU of rank 0 (empty
    elsewhere). torch's `get_optimizer_state_dict(full_state_dict=True, cpu_offload=True)` gathers one tensor at a
    time and keeps the result on rank 0 only; its parameter names become indices again. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    optimizer = _inner(optimizer)
    state = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return {}
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    return {
        "state": {index[name]: dict(sorted(entry.items()))
                  for name, entry in sorted(state["state"].items(), key=lambda item: index[item[0]])},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                         for group in state["param_groups"]],
    }


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any] | None) -> None:
    """The inverse of `full_optimizer_state`: `state` (an unsharded run's `optimizer.state_dict()`, from DDP, FSDP2 or
    one process) is read by rank 0 only (on its CPU; `None` elsewhere); torch's
    `set_optimizer_state_dict(full_state_dict=True, broadcast_from_rank0=True)` sends it one tensor at a time and
    every rank keeps the shards of its parameters, so no device ever holds the full state. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    optimizer = _inner(optimizer)
    names = _parameter_names(model, optimizer)
    error, named = None, {}
    if dist.get_rank() == 0:
        saved = [index for group in state["param_groups"] for index in group["params"]]
        if len(saved) != len(names):
            error = f"the optimizer state holds {len(saved)} parameters, the optimizer {len(names)}"
        else:
            name = dict(zip(saved, names))
            named = {"state": {name[index]: entry for index, entry in state["state"].items()},
                     "param_groups": [{**group, "params": [name[index] for index in group["params"]]}
                                      for group in state["param_groups"]]}
    verdict = [error]
    dist.broadcast_object_list(verdict, src=0)  # every rank raises, none waits for a broadcast that never comes
    if verdict[0] is not None:
        raise ValueError(verdict[0])
    set_optimizer_state_dict(model, optimizer, named,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False))


# --------------------------------------------------------------------------------------- back to a plain model
def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are placeholders on the `meta` device (no memory): the frame
    `unshard_into` fills with trained weights. Configs stay shared with `model`."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, (nn.Module, torch.Tensor)):
            memo[id(config)] = config
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)


def unshard_into(sharded: nn.Module, frame: nn.Module) -> nn.Module:
    """Fill `frame` (a `meta_copy` of the model taken before sharding) with the full parameters of `sharded` and
    its buffers, on the device they trained on; ties are kept. Collective: every rank calls it and gets the whole
    model, a plain module again (no FSDP hooks)."""
    _reshard_all(sharded)
    done: dict[int, nn.Parameter] = {}
    for source, target in zip(sharded.modules(), frame.modules(), strict=True):
        for name, param in source._parameters.items():
            if param is None:
                continue
            if id(param) not in done:
                done[id(param)] = nn.Parameter(_full(param).detach().clone(), requires_grad=param.requires_grad)
            target._parameters[name] = done[id(param)]
        for name, buffer in source._buffers.items():
            target._buffers[name] = buffer
    frame.train(sharded.training)
    return frame


__all__ = [
    "FORWARD_METHODS", "FSDPSettings", "frozen_subtrees", "fsdp_settings", "full_model_state", "full_optimizer_state",
    "is_sharded", "load_full_model_state", "load_full_optimizer_state", "meta_copy", "no_split_classes", "shard_model",
    "transformer_blocks", "unshard_into",
]
