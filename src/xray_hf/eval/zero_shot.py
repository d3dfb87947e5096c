"""Zero-shot classification: class embeddings from prompt templates, images (or videos) scored against them.

A class embedding is the L2-normalised mean of its templates' L2-normalised text embeddings (CLIP's prompt
ensembling; open_clip's `build_zero_shot_classifier`). Templates hold `{}` for the class name; an article
written before it ("a {}") is fixed to the name as `xray_hf.data.with_article` says ("an ankle boot").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.captions import fill_template
from .features import TextEncoder, embed_images, encode_texts
from .metrics import cosine_scores, zero_shot_metrics

# CLIP's 7-template ensemble for photos (Radford et al. 2021, "Prompt_Engineering_for_ImageNet.ipynb"),
# led by the plain prompt; articles before `{}` are fixed per class name.
PHOTO_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of the {}.",
    "an origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "itap of a {}.",
)
VIDEO_TEMPLATES = (
    "a video of a {}.",
    "a clip of a {}.",
    "a video showing a {}.",
    "footage of a {}.",
)
TEMPLATE_SETS = {"photo": PHOTO_TEMPLATES, "video": VIDEO_TEMPLATES, "name": ("{}",)}

def resolve_templates(templates: str | Sequence[str] | None, modality: str = "image") -> tuple[str, ...]:
    """Templates from a set name (`photo`, `video`, `name`), a list of templates, or the modality's default."""
    if templates is None:
        return VIDEO_TEMPLATES if modality == "video" else PHOTO_TEMPLATES
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates must not be empty")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(
                f"each template needs exactly one '{{}}' placeholder (or name a set: {sorted(TEMPLATE_SETS)}), "
                f"got {template!r}"
            )
    return templates


def build_zero_shot_classifier(
    model: nn.Module | None,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: str | Sequence[str] | None = None,
    *,
    encode_text: TextEncoder | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Class embeddings (C, D), one unit-norm row per class name: the normalised mean over `templates` of the
    normalised text embeddings. `encode_text` replaces `model` + `tokenizer` (e.g. LLM2CLIP's cached path)."""
    classnames = list(classnames)
    if not classnames:
        raise ValueError("classnames must not be empty")
    if len(set(classnames)) != len(classnames):
        duplicates = sorted({name for name in classnames if classnames.count(name) > 1})
        raise ValueError(f"duplicate class names {duplicates}: zero-shot could not tell those classes apart")
    templates = resolve_templates(templates)
    prompts = [fill_template(template, name) for name in classnames for template in templates]
    embeds = encode_texts(prompts, model, tokenizer, encode_text=encode_text, batch_size=batch_size)
    embeds = F.normalize(embeds, dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(embeds.mean(dim=1), dim=-1)


zero_shot_classifier = build_zero_shot_classifier  # the name STYLE.md section 3 item 11 uses


def zero_shot_eval(
    model: nn.Module,
    images: Any,
    labels: Sequence[int] | torch.Tensor | None,
    classnames: Sequence[str],
    templates: str | Sequence[str] | None = None,
    *,
    tokenizer: Any = None,
    encode_text: TextEncoder | None = None,
    classifier: torch.Tensor | None = None,
    label_column: str = "label",
    ks: Sequence[int] = (1, 5),
    batch_size: int = 64,
    num_workers: int = 0,
    video_mode: str = "native",
    return_logits: bool = False,
) -> dict[str, float] | tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Zero-shot `acc{k}` and `mean_per_class_recall` of `model` on `images` (a pixel tensor, a dataset of
    dicts with `pixel_values`, or a DataLoader; videos are (T, C, H, W) per sample).

    `labels`: class indices, or None to read `label_column` from the samples. `templates`: a set name, a list,
    or None for the modality's default set. A precomputed `classifier` (C, D) skips the text side.
    With `return_logits`, also returns the cosine logits (N, C) and labels (N,) (for a confusion matrix).
    """
    columns = (label_column,) if labels is None else ()
    image_embeds, gathered = embed_images(
        model, images, columns=columns, batch_size=batch_size, num_workers=num_workers, video_mode=video_mode
    )
    labels = torch.as_tensor(gathered[label_column] if labels is None else labels)
    if classifier is None:
        modality = "video" if is_video_input(images) else "image"
        classifier = build_zero_shot_classifier(
            model, tokenizer, classnames, resolve_templates(templates, modality), encode_text=encode_text
        )
    elif classifier.shape[0] != len(classnames):
        raise ValueError(f"classifier has {classifier.shape[0]} rows for {len(classnames)} class names")
    logits = cosine_scores(image_embeds, classifier).float()
    metrics = zero_shot_metrics(logits, labels, ks)
    return (metrics, logits, labels) if return_logits else metrics


def is_video_input(images: Any) -> bool:
    """Whether samples are (T, C, H, W) clips: from the tensor, the decoder's modality, or the first sample."""
    if isinstance(images, torch.Tensor):
        return images.ndim == 5
    if isinstance(images, torch.utils.data.DataLoader):
        images = images.dataset
    modality = getattr(getattr(images, "decoder", None), "modality", None)
    if modality is not None:
        return modality == "video"
    if hasattr(images, "__getitem__") and hasattr(images, "__len__") and len(images):
        first = images[0]
        pixels = first.get("pixel_values") if isinstance(first, dict) else None
        return isinstance(pixels, torch.Tensor) and pixels.ndim == 4
    return False


__all__ = [
    "PHOTO_TEMPLATES",
    "TEMPLATE_SETS",
    "VIDEO_TEMPLATES",
    "build_zero_shot_classifier",
    "fill_template",
    "is_video_input",
    "resolve_templates",
    "zero_shot_classifier",
    "zero_shot_eval",
]
