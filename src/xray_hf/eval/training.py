"""Evaluation during training: zero-shot and retrieval on the eval split in one pass, with stable metric names
for TensorBoard, for a `Trainer.evaluate` override to call:

```python
metrics = clip_eval_metrics(self.accelerator.unwrap_model(self.model), self.eval_dataset,
                            tokenizer=self.processing_class, classnames=names)
metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}  # eval_zeroshot_acc1, ...
self.log(metrics)
```

Names: `zeroshot_acc1`, `zeroshot_acc5`, `zeroshot_mean_per_class_recall` (CLIP_benchmark's names under a
`zeroshot_` prefix, so they cannot clash with a classification head's accuracy), `image_retrieval_recall@{1,5,10}`,
`text_retrieval_recall@{1,5,10}`, `{image,text}_retrieval_{mean,median}_rank`. The set of keys depends only on
the arguments, never on the data, so TensorBoard curves continue across evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .features import TextEncoder, embed_images, encode_texts
from .metrics import retrieval_metrics, zero_shot_metrics
from .retrieval import caption_targets
from .zero_shot import build_zero_shot_classifier, is_video_input, resolve_templates

ZERO_SHOT_PREFIX = "zeroshot_"


def clip_eval_metrics(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    encode_text: TextEncoder | None = None,
    classnames: Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    label_column: str = "label",
    caption_column: str | None = "caption",
    zero_shot_ks: Sequence[int] = (1, 5),
    retrieval_ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    num_workers: int = 0,
    video_mode: str = "native",
) -> dict[str, float]:
    """Zero-shot metrics (when `classnames` is given; labels from `label_column`) and retrieval metrics (when
    `caption_column` is not None) of `model` on `dataset` (dicts with `pixel_values`, e.g. a `DecodedDataset`),
    embedding every sample once. The model's training mode is restored afterwards.

    `templates`: a set name, a list, or None for the default set of the samples' modality.
    """
    if classnames is None and caption_column is None:
        raise ValueError("nothing to evaluate: pass classnames (zero-shot) and/or caption_column (retrieval)")
    columns = tuple(c for c, on in ((label_column, classnames is not None), (caption_column, caption_column)) if on)
    image_embeds, gathered = embed_images(
        model, dataset, columns=columns, batch_size=batch_size, num_workers=num_workers, video_mode=video_mode
    )
    metrics: dict[str, float] = {}
    if classnames is not None:
        modality = "video" if is_video_input(dataset) else "image"
        classifier = build_zero_shot_classifier(
            model, tokenizer, classnames, resolve_templates(templates, modality), encode_text=encode_text
        )
        scores = zero_shot_metrics(
            labels=gathered[label_column], ks=zero_shot_ks, image_embeds=image_embeds, classifier=classifier
        )
        metrics.update({ZERO_SHOT_PREFIX + key: value for key, value in scores.items()})
    if caption_column is not None:
        texts, text_to_image, kept = caption_targets(gathered[caption_column])
        text_embeds = encode_texts(texts, model, tokenizer, encode_text=encode_text)
        metrics.update(retrieval_metrics(image_embeds[kept], text_embeds, text_to_image, retrieval_ks))
    return metrics


__all__ = ["ZERO_SHOT_PREFIX", "clip_eval_metrics"]
