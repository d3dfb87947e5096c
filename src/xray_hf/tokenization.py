"""The one way captions become tokens: every text tower's config (`tokenize`), the CLIP processor and through them
the trainers, the text cache, evaluation, the compress stage and curation call `tokenize_texts`. It imports nothing
from the package, so a processor pushed on its own carries it without any configuration or modeling code."""

from __future__ import annotations

from typing import Any


def tokenize_texts(tokenizer: Any, texts: Any, *, max_length: int, padding_side: str, return_tensors: str | None = "pt",
                   **overrides: Any):
    """Captions -> `input_ids`, `attention_mask`: padded to the longest, truncated at `max_length`, padded on
    `padding_side` (no `token_type_ids`: one segment, which encoders default to). The one tokenization of the
    package; text towers call it with their config's settings (`config.tokenize`)."""
    kwargs = {"padding": True, "truncation": True, "max_length": max_length, "padding_side": padding_side,
              "return_token_type_ids": False}
    kwargs.update(overrides)
    return tokenizer(list(texts) if not isinstance(texts, str) else texts, return_tensors=return_tensors, **kwargs)


__all__ = ["tokenize_texts"]
