"""Image/video <-> text retrieval over a captioned dataset, one or several captions per item.

Each item's caption column holds a string or a list of strings; every caption is a text query (text -> image)
and every item an image query whose hits are any of its captions (image -> text). Metric definitions are in
`metrics.retrieval_metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .features import TextEncoder, embed_images, encode_texts
from .metrics import retrieval_metrics

logger = logging.getLogger(__name__)


def flatten_captions(captions: Sequence[str | Sequence[str] | None]) -> tuple[list[str], torch.Tensor]:
    """All captions as one list, and for each the index of its item: `(["a", "b", "c"], [0, 0, 1])` for
    `[["a", "b"], "c"]`. Empty strings are dropped; an item may end up with no caption."""
    texts: list[str] = []
    owners: list[int] = []
    for index, value in enumerate(captions):
        if value is None:
            continue
        items = [value] if isinstance(value, str) else list(value)
        for caption in items:
            if not isinstance(caption, str):
                raise ValueError(f"item {index}: captions must be strings or lists of strings, got {type(caption)}")
            if caption.strip():
                texts.append(caption)
                owners.append(index)
    return texts, torch.tensor(owners, dtype=torch.long)


def caption_targets(captions: Sequence[str | Sequence[str] | None]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """`(texts, text_to_image, kept)`: all captions, for each the index of its item among the items that have
    captions, and those items' positions in `captions` (items without a caption are left out: text cannot find
    them, and scoring them would count a sure miss)."""
    texts, owners = flatten_captions(captions)
    if not texts:
        raise ValueError("no captions to retrieve with")
    kept = owners.unique()  # sorted
    if kept.numel() < len(captions):
        logger.warning("retrieval: %d of %d items have no caption and are left out", len(captions) - kept.numel(),
                       len(captions))
    remap = torch.full((len(captions),), -1, dtype=torch.long)
    remap[kept] = torch.arange(kept.numel())
    return texts, remap[owners], kept


@dataclass
class RetrievalEmbeddings:
    """What `embed_retrieval_set` computed: item and caption embeddings, and which item owns each caption
    (indices into the kept items; `item_indices` maps kept items back to the dataset's rows)."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    texts: list[str]
    text_to_image: torch.Tensor
    item_indices: torch.Tensor


def embed_retrieval_set(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    encode_text: TextEncoder | None = None,
    caption_column: str = "caption",
    captions: Sequence[str | Sequence[str]] | None = None,
    batch_size: int = 64,
    text_batch_size: int = 256,
    num_workers: int = 0,
    video_mode: str = "native",
) -> RetrievalEmbeddings:
    """Embed the items of `dataset` and their captions (from `caption_column`, or `captions` given per item).
    Items without any caption are dropped (logged): they cannot be found by text."""
    columns = (caption_column,) if captions is None else ()
    image_embeds, gathered = embed_images(
        model, dataset, columns=columns, batch_size=batch_size, num_workers=num_workers, video_mode=video_mode
    )
    captions = gathered[caption_column] if captions is None else list(captions)
    if len(captions) != image_embeds.shape[0]:
        raise ValueError(f"{len(captions)} caption entries for {image_embeds.shape[0]} items")
    texts, text_to_image, kept = caption_targets(captions)
    text_embeds = encode_texts(texts, model, tokenizer, encode_text=encode_text, batch_size=text_batch_size)
    return RetrievalEmbeddings(image_embeds[kept], text_embeds, texts, text_to_image, kept)


def retrieval_eval(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    encode_text: TextEncoder | None = None,
    caption_column: str = "caption",
    captions: Sequence[str | Sequence[str]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    ranks: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
    video_mode: str = "native",
) -> dict[str, float]:
    """`image_retrieval_recall@k` (text -> image), `text_retrieval_recall@k` (image -> text) and, with `ranks`,
    mean/median ranks, for `model` on `dataset` (dicts with `pixel_values` and `caption_column`)."""
    embeds = embed_retrieval_set(
        model, dataset, tokenizer=tokenizer, encode_text=encode_text, caption_column=caption_column,
        captions=captions, batch_size=batch_size, num_workers=num_workers, video_mode=video_mode,
    )
    return retrieval_metrics(embeds.image_embeds, embeds.text_embeds, embeds.text_to_image, ks, ranks=ranks)


__all__ = ["RetrievalEmbeddings", "caption_targets", "embed_retrieval_set", "flatten_captions", "retrieval_eval"]
