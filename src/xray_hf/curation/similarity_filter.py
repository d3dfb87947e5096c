"""Image-text similarity filtering (paper 2.1: pairs below 0.25 under its CLIP model are dropped), with any
`XrayCLIPModel` checkpoint, as a batched streaming step.

The paper's 0.25 is a cosine under its own CLIP; cosines of another model live on another scale (a small model's
matched and mismatched pairs may all score above 0.5), so the threshold is a setting: an absolute `threshold` for a
model whose scale you know, or `drop_fraction`, the share of the lowest-scoring pairs of a calibration sample to
drop (the quantile becomes the threshold and is reported). `score_pairs` adds a `clip_score` column (a `map`, so a
`datasets.IterableDataset` stays streaming and resumes from its `state_dict()`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..eval.features import frozen, image_features, text_encoder
from ..checkpoint import load_checkpoint


class SimilarityScorer:
    """Cosine between the projected image and caption embeddings of a CLIP checkpoint (its own processor and
    tokenizer)."""

    def __init__(self, model_dir: str | os.PathLike, device: str | None = None):
        pieces = load_checkpoint(model_dir)
        self.model = pieces.model.to(device or "cpu").eval()
        if not hasattr(self.model, "get_text_features"):
            raise ValueError(f"{model_dir} is not a CLIP checkpoint (no text tower): similarity needs one")
        self.image_processor = pieces.image_processor
        self.encode_text = text_encoder(self.model, pieces.tokenizer)

    def __call__(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} captions")
        pixels = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        device = next(self.model.parameters()).device
        with frozen(self.model):
            image = F.normalize(image_features(self.model, pixels["pixel_values"].to(device)), dim=-1)
            text = F.normalize(self.encode_text(list(texts)).float(), dim=-1)
        return (image * text).sum(-1).cpu()


def score_pairs(dataset: Any, scorer: SimilarityScorer, image_column: str = "image", caption_column: str = "caption",
                batch_size: int = 64) -> Any:
    """Add `clip_score`, the image-caption cosine, to every row (batched `map`; streaming-safe)."""

    def score(batch: dict[str, list]) -> dict[str, list]:
        return {"clip_score": scorer(batch[image_column], batch[caption_column]).tolist()}

    return dataset.map(score, batched=True, batch_size=batch_size)


def calibrate_threshold(scores: Sequence[float] | torch.Tensor, drop_fraction: float) -> float:
    """The score below which `drop_fraction` of a calibration sample's pairs fall."""
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    values = torch.as_tensor(scores, dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("no calibration scores")
    return float(torch.quantile(values, drop_fraction))


def filter_by_similarity(dataset: Any, threshold: float) -> Any:
    """Keep the rows of a scored dataset (`score_pairs`) whose `clip_score` is at least `threshold`."""
    return dataset.filter(lambda row: row["clip_score"] >= threshold)


__all__ = ["SimilarityScorer", "calibrate_threshold", "filter_by_similarity", "score_pairs"]
