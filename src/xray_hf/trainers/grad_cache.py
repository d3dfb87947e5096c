"""Gradient caching (GradCache, Gao et al. 2021): contrastive batches larger than memory allows, with the loss and
gradients of the whole batch.

A contrastive loss couples every row of the batch, so it cannot be split into micro-batches whose gradients add up.
GradCache splits the *encoder* instead, in three steps:

1. encode every chunk without a graph, keeping each chunk's random state (RNG states and autocast settings);
2. compute the loss on the concatenated features, and backward it as far as the features;
3. re-encode each chunk with a graph, replaying its random state (same dropout, drop path and in-model
   augmentation draws), and backpropagate the cached feature gradients through it.

Only one chunk's activations are alive at a time. Steps 2 and 3 run inside the ordinary `loss.backward()`:
[`cached_encode`] returns features whose backward replays the chunks, so any loss can be computed on them, the
`Trainer`'s backward (gradient accumulation scaling, loss scalers) reaches every chunk, and parameters used directly
in the loss (such as `logit_scale`) get their gradients as usual. [`cached_backward`] runs all three steps at once.
sentence-transformers' `CachedMultipleNegativesRankingLoss` (its `RandContext`) is the model for the RNG replay;
this module also replays Python's and NumPy's generators and the autocast state, since step 3 runs during backward,
outside the caller's `autocast` block.

Under DDP pass `no_sync=model.no_sync`: every chunk but the last replays without the gradient all-reduce, and the
last one synchronises the accumulated gradients once (inside an outer `no_sync`, e.g. a gradient-accumulation
micro-step, none does). Every rank must split its batch into the same number of chunks: DDP's forward may run
collectives (buffer broadcast), and a distributed loss gathers once per call.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Features = dict[str, "torch.Tensor | None"]


@dataclass
class RandomState:
    """Everything that makes a forward pass random: the CPU and accelerator generators, Python's and NumPy's global
    generators, and the autocast settings (the replay runs during backward, outside the caller's autocast)."""

    cpu: torch.Tensor
    accelerator: tuple[str, list[int], list[torch.Tensor]] | None
    python: Any
    numpy: Any
    autocast: list[tuple[str, bool, torch.dtype]]
    autocast_cache: bool

    @classmethod
    def capture(cls) -> RandomState:
        accelerator = None
        device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if device is not None:
            module = torch.get_device_module(device.type)
            if getattr(module, "is_initialized", lambda: True)():  # never initialise a device just to read it
                devices = list(range(module.device_count()))
                accelerator = (device.type, devices, [module.get_rng_state(d) for d in devices])
        device_types = ["cpu"] + ([device.type] if device is not None else [])
        autocast = [(t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in device_types]
        return cls(
            torch.get_rng_state(), accelerator, random.getstate(), np.random.get_state(), autocast,
            torch.is_autocast_cache_enabled(),
        )

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.accelerator is not None:
            kind, devices, states = self.accelerator
            module = torch.get_device_module(kind)
            for d, state in zip(devices, states):
                module.set_rng_state(state, d)
        random.setstate(self.python)
        np.random.set_state(self.numpy)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with this state's random draws and autocast settings; the caller's generators are left as
        they were."""
        outside = RandomState.capture()
        self.restore()
        try:
            with contextlib.ExitStack() as stack:
                for device_type, enabled, dtype in self.autocast:
                    stack.enter_context(
                        torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=self.autocast_cache)
                    )
                yield
        finally:
            outside.restore()


def split_batch(batch: Mapping[str, Any], chunk_size: int) -> list[dict[str, Any]]:
    """Split a batch into chunks of `chunk_size` rows (the last may be smaller). Tensors with the batch's row count
    (that of the first tensor) and lists/tuples of that length are sliced; other values are shared by every chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if not tensors:
        raise ValueError("split_batch needs at least one tensor with a batch dimension")
    rows = tensors[0].shape[0]

    def piece(value: Any, start: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            return value[start:start + chunk_size]
        if isinstance(value, (list, tuple)) and len(value) == rows:
            return value[start:start + chunk_size]
        return value

    return [{k: piece(v, start) for k, v in batch.items()} for start in range(0, rows, chunk_size)]


def _features(output: Any, index: int) -> Features:
    if not isinstance(output, Mapping):
        raise ValueError(f"encode must return a mapping of features, got {type(output).__name__} (chunk {index})")
    for name, value in output.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise ValueError(f"encode returned {name!r} of type {type(value).__name__}: features must be tensors")
    return dict(output)


def _concatenate(outputs: Sequence[Features]) -> tuple[Features, dict[str, list[int] | None]]:
    """Per feature: the chunks' rows concatenated, and each chunk's row count. A feature must be None in every
    chunk or in none; a 0-d feature (a model-wide value such as `logit_scale`) must be equal in every chunk, is
    taken once and has no row counts (None)."""
    names = list(outputs[0])
    if any(list(o) != names for o in outputs):
        raise ValueError(f"every chunk must return the same features, got {[list(o) for o in outputs]}")
    features, rows = {}, {}
    for name in names:
        values = [o[name] for o in outputs]
        if all(v is None for v in values):
            features[name] = None
        elif any(v is None for v in values):
            raise ValueError(f"feature {name!r} is None in some chunks but not in others")
        elif all(v.dim() == 0 for v in values):
            if any(not torch.equal(v, values[0]) for v in values):
                raise ValueError(f"model-wide (0-d) feature {name!r} differs between chunks")
            features[name], rows[name] = values[0], None
        elif any(v.dim() == 0 for v in values):
            raise ValueError(f"feature {name!r} is 0-d in some chunks but not in others")
        else:
            features[name], rows[name] = torch.cat(values), [v.shape[0] for v in values]
    return features, rows


class _Replay(torch.autograd.Function):
    """Identity on the cached features whose backward re-encodes the chunks and backpropagates their gradients."""

    @staticmethod
    def forward(ctx, cache: _Cache, anchor: torch.Tensor, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.cache = cache
        ctx.set_materialize_grads(False)
        return tuple(f.view_as(f) for f in features)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[None, ...]:
        ctx.cache.replay(grads)
        return (None, None) + (None,) * len(grads)


@dataclass
class _Cache:
    encode: Callable[[Any], Mapping[str, torch.Tensor | None]]
    chunks: Sequence[Any]
    states: list[RandomState]
    names: list[str]  # the differentiable features, in _Replay's order
    rows: dict[str, list[int] | None]
    cached: dict[str, torch.Tensor]
    no_sync: Callable[[], contextlib.AbstractContextManager] | None

    def _piece(self, name: str, tensor: torch.Tensor, index: int, last: int) -> torch.Tensor | None:
        """Chunk `index`'s rows of a feature-shaped tensor; a model-wide value belongs to the last chunk only."""
        rows = self.rows[name]
        if rows is None:
            return tensor if index == last else None
        start = sum(rows[:index])
        return tensor[start:start + rows[index]]

    def replay(self, grads: Sequence[torch.Tensor | None]) -> None:
        grads = dict(zip(self.names, grads))
        if all(grad is None for grad in grads.values()):
            return
        last = len(self.chunks) - 1
        for index, (chunk, state) in enumerate(zip(self.chunks, self.states)):
            sync = contextlib.nullcontext() if self.no_sync is None or index == last else self.no_sync()
            with sync, state.replay(), torch.enable_grad():
                output = _features(self.encode(chunk), index)
                outputs, output_grads = [], []
                for name in self.names:
                    value, expected = output.get(name), self.cached[name]
                    if self.rows[name] is not None:
                        expected = self._piece(name, expected, index, last)
                    if value is None or value.shape != expected.shape or not torch.allclose(
                        value.detach(), expected, rtol=1e-3, atol=1e-5
                    ):
                        raise RuntimeError(
                            f"replaying chunk {index} gave a different {name!r} than its first pass: encode must "
                            "depend only on its chunk, the model and the torch/Python/NumPy random generators"
                        )
                    grad = None if grads[name] is None else self._piece(name, grads[name], index, last)
                    if grad is not None and value.requires_grad:
                        outputs.append(value)
                        output_grads.append(grad.to(value.dtype))
                if outputs:
                    torch.autograd.backward(outputs, output_grads)


def cached_encode(
    encode: Callable[[Any], Mapping[str, torch.Tensor | None]],
    chunks: Sequence[Any],
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Features:
    """Encode `chunks` without keeping their activations; returns each feature concatenated over the chunks.

    The float features take part in autograd: backpropagating a loss through them re-encodes each chunk with its
    first pass's random state and backpropagates its share of the gradient into the model (steps 2 and 3 of
    GradCache). `encode(chunk)` returns a mapping of features with a batch dimension, None, or 0-d model-wide values
    such as `logit_scale` (equal in every chunk; their gradient goes back through the last chunk's replay, so under
    DDP it is synchronised with the rest). Chunks may differ in kind (e.g. images and videos). Under
    `torch.no_grad()` this is plain chunked encoding.
    """
    if not chunks:
        raise ValueError("cached_encode needs at least one chunk")
    if not torch.is_grad_enabled():
        return _concatenate([_features(encode(chunk), i) for i, chunk in enumerate(chunks)])[0]
    states, outputs = [], []
    for index, chunk in enumerate(chunks):
        states.append(RandomState.capture())
        with torch.no_grad():
            outputs.append(_features(encode(chunk), index))
    features, rows = _concatenate(outputs)
    names = [n for n, f in features.items() if f is not None and f.is_floating_point()]
    if not names:
        return features
    cached = {n: features[n] for n in names}
    cache = _Cache(encode, list(chunks), states, names, rows, cached, no_sync)
    anchor = torch.empty(0, requires_grad=True)  # gives the outputs a grad_fn
    replayed = _Replay.apply(cache, anchor, *(features[n] for n in names))
    return {**features, **dict(zip(names, replayed))}


def cached_backward(
    encode: Callable[[Any], Mapping[str, torch.Tensor | None]],
    chunks: Sequence[Any],
    loss_fn: Callable[[Features], torch.Tensor],
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, Features]:
    """All of GradCache at once: encode `chunks` ([`cached_encode`]), compute `loss_fn(features)` on the
    concatenated features, and backpropagate it into the model chunk by chunk. Returns the detached loss and
    features; parameter gradients are accumulated as `loss_fn(encode(whole batch)).backward()` would."""
    features = cached_encode(encode, chunks, no_sync)
    loss = loss_fn(features)
    if loss.requires_grad:
        loss.backward()
    return loss.detach(), {n: None if f is None else f.detach() for n, f in features.items()}


__all__ = ["RandomState", "cached_backward", "cached_encode", "split_batch"]
