"""Non-reentrant activation checkpointing by default, for models with frozen parts (a frozen LLM under trainable
adapters): reentrant checkpointing loses the gradients of frozen inputs, and FSDP needs the non-reentrant kind."""

from __future__ import annotations

from transformers import PreTrainedModel


class NonReentrantCheckpointingMixin:
    """Put before `PreTrainedModel` in the bases. `use_reentrant=False` unless the caller says otherwise, also when
    other checkpoint options are passed; `every_n_layers` and `offload` (the Trainer's) pass through."""

    if hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers' current name (the Trainer's)

        def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kwargs):
            checkpoint_kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
            super().activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs, **kwargs)

    else:  # older transformers 5 releases

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs):
            checkpoint_kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
            super().gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs, **kwargs)


__all__ = ["NonReentrantCheckpointingMixin"]
