"""Evaluation: zero-shot classification, retrieval, linear probe and kNN, with CLIP_benchmark's metric names
and result shape, plus plots. One idea per module:

- `metrics`: pure functions on embeddings and scores (`zero_shot_metrics`, `retrieval_metrics`, ...).
- `features`: frozen, batched image/video/text embedding of CLIP-shaped models.
- `zero_shot`, `retrieval`, `linear_probe`: the tasks; `training.clip_eval_metrics` for a Trainer's evaluate.
- `data`: evaluation sets (embedded or local sources); `results`: JSON; `plots`: PNGs; `run`: `run_eval`.
"""

from .features import embed_images, encode_images, encode_texts, image_features, text_encoder
from .linear_probe import C_GRID, extract_features, knn_eval, linear_probe_eval
from .metrics import classification_metrics, recall_curve, retrieval_metrics, zero_shot_metrics
from .plots import plot_confusion_matrix, plot_recall_curve, plot_retrieval_grid
from .results import make_result, read_result, write_result
from .retrieval import embed_retrieval_set, flatten_captions, retrieval_eval
from .run import run_eval
from .training import clip_eval_metrics
from .zero_shot import (
    PHOTO_TEMPLATES,
    VIDEO_TEMPLATES,
    build_zero_shot_classifier,
    fill_template,
    zero_shot_classifier,
    zero_shot_eval,
)

__all__ = [
    "C_GRID",
    "PHOTO_TEMPLATES",
    "VIDEO_TEMPLATES",
    "build_zero_shot_classifier",
    "classification_metrics",
    "clip_eval_metrics",
    "embed_images",
    "embed_retrieval_set",
    "encode_images",
    "encode_texts",
    "extract_features",
    "fill_template",
    "flatten_captions",
    "image_features",
    "knn_eval",
    "linear_probe_eval",
    "make_result",
    "plot_confusion_matrix",
    "plot_recall_curve",
    "plot_retrieval_grid",
    "read_result",
    "recall_curve",
    "retrieval_eval",
    "retrieval_metrics",
    "run_eval",
    "text_encoder",
    "write_result",
    "zero_shot_classifier",
    "zero_shot_eval",
    "zero_shot_metrics",
]

