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
  `full_optimizer_state`, `shard_optimizer_state`), so a DDP checkpoint resumes under FSDP2 and the other way round,
  and the saved model is a plain `from_pretrained` directory.

At scale (tens of billions of parameters) one would save sharded checkpoints with `torch.distributed.checkpoint`
(DCP: every rank writes its shards, no full tensor on any rank) and build the model on the `meta` device before
sharding; at the sizes of the XrayVisual presets (evit-2b: 2B parameters, 8 GB in fp32) full tensors on rank 0 are
affordable and keep checkpoints interchangeable between DDP, FSDP2 and one process.
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
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

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
def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded `state_dict` of a sharded model, on the CPU, on rank 0 (empty elsewhere). Collective: every
    rank calls it. Tied entries share one tensor, as in the unsharded model, so `save_pretrained` sees the tie."""
    _reshard_all(model)
    keep = dist.get_rank() == 0
    full: dict[int, torch.Tensor] = {}
    state = {}
    for key, value in model.state_dict().items():
        if id(value) not in full:
            gathered = _full(value).detach()
            full[id(value)] = gathered.cpu() if keep else gathered.new_empty(0)
        if keep:
            state[key] = full[id(value)]
    return state


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with every sharded state tensor gathered: the layout an unsharded run saves (states
    keyed by parameter index, each the parameter's full shape). Collective: every rank calls it."""
    state = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: build new ones
    state["state"] = {index: {key: _full(value).detach().cpu() if torch.is_tensor(value) else value
                              for key, value in sorted(state["state"][index].items())}
                      for index in sorted(state["state"])}
    return state


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `full_optimizer_state` for `optimizer` over sharded parameters: every state tensor of a
    parameter's full shape becomes a DTensor laid out as the parameter (each rank keeps its own shard; no
    communication). A full state from DDP, FSDP2 or one process loads alike."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    saved = [index for group in state["param_groups"] for index in group["params"]]
    params = [param for group in optimizer.param_groups for param in group["params"]]
    if len(saved) != len(params):
        raise ValueError(f"the optimizer state holds {len(saved)} parameters, the optimizer {len(params)}")
    for index, param in zip(saved, params):
        entry = state["state"].get(index)
        if entry is None or not isinstance(param, DTensor):
            continue
        for key, value in entry.items():
            if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == param.shape:
                entry[key] = distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                               src_data_rank=None)
    return state


def _shard_loaded_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    return shard_optimizer_state(optimizer, state)


def prepare_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Let `optimizer` (over sharded parameters) load full states (`load_state_dict`, as the Trainer resumes)."""
    optimizer.register_load_state_dict_pre_hook(_shard_loaded_state)
    return optimizer


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
    "is_sharded", "meta_copy", "no_split_classes", "prepare_optimizer", "shard_model", "shard_optimizer_state",
    "transformer_blocks", "unshard_into",
]
