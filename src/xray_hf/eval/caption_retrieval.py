"""Caption retrieval accuracy (LLM2CLIP's CRA): does a text model's embedding of one text of an item find another
text of the same item among all items' texts? It tells, before any CLIP run, whether a text model is worth
freezing in the LLM2CLIP slot: LLM2CLIP reports 18 for a raw Llama-3-8B and 74 for a contrastive sentence embedder.

Here the two texts are a caption column and a second text column of the same rows; on OpenMoji, the emoji's name
(`caption`) against its tag list (`hashtags`, joined by ", "). The score is top-1 accuracy both ways (cosine
similarity over all items) and their mean (`cra`).

What is embedded is what the CLIP stage would freeze:
- `XrayLLM2CLIPTextModel`: the pooled output of its frozen text model (`get_llm_pooled_output`); the adapter and
  projection are not used (they are what CLIP trains);
- `XrayTextModel` (a plain tower, e.g. trained in a CLIP run): its projected embedding;
- a packaged name (`minilm`, `smollm2`), a text-model folder or a sentence-transformers folder: wrapped by
  `XrayLLM2CLIPTextModel.from_llm` (its pooling and normalisation as configured) and embedded as above;
- an `XrayCLIPModel` checkpoint: its text tower, as above.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TextEmbedder = Callable[[list[str]], torch.Tensor]


def caption_retrieval_accuracy(queries: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy of row i of `queries` finding row i of `targets` by cosine similarity, both ways."""
    if queries.shape != targets.shape or queries.ndim != 2:
        raise ValueError(f"queries {tuple(queries.shape)} and targets {tuple(targets.shape)} must be equal (N, D)")
    similarity = F.normalize(queries.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).T
    truth = torch.arange(similarity.shape[0])
    forward = (similarity.argmax(dim=1) == truth).float().mean().item()
    backward = (similarity.argmax(dim=0) == truth).float().mean().item()
    return {"cra_caption_to_text": forward, "cra_text_to_caption": backward, "cra": (forward + backward) / 2}


def text_tower_embedder(tower: nn.Module, tokenizer: Any, batch_size: int = 128) -> TextEmbedder:
    """What a text tower would contribute frozen: see the module docstring."""
    from ..modeling.llm2clip import XrayLLM2CLIPTextModel

    tower = getattr(tower, "text_model", tower)  # a CLIP model: its text tower
    if not hasattr(tower, "tokenize"):
        raise ValueError(f"{type(tower).__name__} is not an xray_hf text tower (XrayLLM2CLIPTextModel, XrayTextModel)")
    device = next(tower.parameters()).device

    def embed(texts: list[str]) -> torch.Tensor:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = tower.tokenize(tokenizer, texts[start : start + batch_size])
                ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
                if isinstance(tower, XrayLLM2CLIPTextModel):
                    chunks.append(tower.get_llm_pooled_output(ids, mask).float().cpu())
                else:
                    chunks.append(tower.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.cpu())
        return torch.cat(chunks)

    return embed


def load_text_tower(model: str | os.PathLike) -> tuple[nn.Module, Any]:
    """(text tower, tokenizer) from a checkpoint directory (a text tower or a CLIP model), a text-model or
    sentence-transformers folder, or a packaged name (`minilm`, `smollm2`)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ..convert import PACKAGED_TEXT_MODELS, resolve_text_model
    from ..modeling.llm2clip import XrayLLM2CLIPTextModel

    path = resolve_text_model(model)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"text model {os.fspath(model)!r} is neither a folder nor one of "
                                f"{sorted(PACKAGED_TEXT_MODELS)}")
    ours = AutoConfig.from_pretrained(path).model_type in ("xray_clip", "xray_llm2clip_text", "xray_text")
    if ours:  # (a CLIP checkpoint also carries sentence-transformers files: it is still ours)
        tower = AutoModel.from_pretrained(path)
    else:
        tower = XrayLLM2CLIPTextModel.from_llm(path)
    return tower.eval(), AutoTokenizer.from_pretrained(path)


def run_caption_retrieval(
    model: str | os.PathLike | nn.Module,
    dataset: str = "openmoji",
    split: str = "test",
    *,
    tokenizer: Any = None,
    caption_column: str = "caption",
    text_column: str = "hashtags",
    max_samples: int | None = None,
) -> dict[str, Any]:
    """CRA of `model` on `dataset`/`split`: `caption_column` against `text_column` (a list column is joined with
    ", "); returns `{"metrics": ..., "num_items": N}`."""
    from .data import load_eval_set

    if isinstance(model, (str, os.PathLike)):
        model, tokenizer = load_text_tower(model)
    elif tokenizer is None:
        raise ValueError("a loaded text tower needs its tokenizer")
    table = load_eval_set(dataset, split, max_samples=max_samples, caption_column=caption_column,
                          need=("captions",)).dataset
    if text_column not in table.column_names:
        raise ValueError(f"{dataset!r} has no column {text_column!r} to retrieve (columns: {table.column_names})")
    rows = table.select_columns([caption_column, text_column]).to_list()
    pairs = [(row[caption_column], _text(row[text_column])) for row in rows]
    pairs = [(caption, text) for caption, text in pairs if caption and text]
    if len(pairs) < 2:
        raise ValueError(f"{dataset!r}/{split} has fewer than 2 items with both {caption_column!r} and {text_column!r}")
    embed = text_tower_embedder(model, tokenizer)
    metrics = caption_retrieval_accuracy(embed([c for c, _ in pairs]), embed([t for _, t in pairs]))
    return {"metrics": metrics, "num_items": len(pairs)}


def _text(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


__all__ = ["caption_retrieval_accuracy", "load_text_tower", "run_caption_retrieval", "text_tower_embedder"]
