"""Stage 2 of the recipe: hashtag classification on the pooled backbone (paper 4.2.2).

Every image or video carries a set of hashtags from a fixed vocabulary. The default loss is the one of
hashtag pretraining at scale (Mahajan et al. 2018): a softmax over the vocabulary against the multi-hot
target normalised to sum to one; per-label binary cross-entropy is the alternative. The vocabulary
(`HashtagVocabulary`) is built from a dataset's hashtag column with a minimum count, and lives in the
config as `id2label` / `label2id`, so a checkpoint carries it.

`AutoModelForImageClassification` gives the plain single-label classifier (`modeling/classification.py`), not
this model: load a hashtag checkpoint with `XrayVisualForHashtagClassification.from_pretrained(path)`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..configuration.visual import XrayVisualConfig
from ..losses import HASHTAG_LOSSES, hashtag_loss
from .classification import BackboneProbeMixin
from .outputs import XrayVisualHashtagOutput
from .visual import XrayVisualModel, XrayVisualPreTrainedModel


def normalize_hashtag(tag: str) -> str:
    """Canonical spelling of a tag: stripped, lower case, no leading '#'."""
    return tag.strip().lstrip("#").strip().lower()


class HashtagVocabulary:
    """An ordered hashtag vocabulary: ids are assigned by descending count, ties alphabetically.

    Build it with [`from_tag_lists`] (or [`from_dataset`] on a `datasets` column of tag lists) and a
    `min_count`; `encode` turns tag lists into multi-hot targets, and `id2label` / `label2id` go into the
    model config.
    """

    def __init__(self, labels: Sequence[str], counts: Mapping[str, int] | None = None):
        labels = [normalize_hashtag(t) for t in labels]
        if not labels:
            raise ValueError("a hashtag vocabulary needs at least one label")
        if len(set(labels)) != len(labels):
            dup = sorted(t for t, n in Counter(labels).items() if n > 1)
            raise ValueError(f"duplicate labels in the hashtag vocabulary: {dup[:10]}")
        self.labels = list(labels)
        self.label2id = {t: i for i, t in enumerate(self.labels)}
        self.counts = {t: int(counts[t]) for t in self.labels} if counts else None

    @classmethod
    def from_tag_lists(
        cls, tag_lists: Iterable[Iterable[str]], min_count: int = 1, max_size: int | None = None
    ) -> "HashtagVocabulary":
        """Every tag used by at least `min_count` samples (a tag counts once per sample), most frequent first."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter = Counter()
        for tags in tag_lists:
            if isinstance(tags, str):
                raise TypeError("each sample's hashtags must be a list of strings, got a single string")
            counts.update({normalize_hashtag(t) for t in tags if normalize_hashtag(t)})
        kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size]
        if not kept:
            raise ValueError(f"no hashtag occurs in at least min_count={min_count} samples")
        return cls(kept, counts)

    @classmethod
    def from_dataset(
        cls, dataset: Any, column: str = "hashtags", min_count: int = 1, max_size: int | None = None
    ) -> "HashtagVocabulary":
        """From a `datasets.Dataset` (or any iterable of dicts) whose `column` holds lists of tags."""
        names = getattr(dataset, "column_names", None)
        if names is not None and column not in names:
            raise ValueError(f"dataset has no column {column!r}; columns are {names}")
        tag_lists = dataset[column] if names is not None else (row[column] for row in dataset)
        return cls.from_tag_lists(tag_lists, min_count=min_count, max_size=max_size)

    @classmethod
    def from_config(cls, config: XrayVisualConfig) -> "HashtagVocabulary":
        """The vocabulary stored in a model config (`id2label`)."""
        return cls([config.id2label[i] for i in range(len(config.id2label))])

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, tag: str) -> bool:
        return normalize_hashtag(tag) in self.label2id

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def config_kwargs(self) -> dict[str, Any]:
        """`id2label` and `label2id` for `XrayVisualConfig(...)` or `from_pretrained(...)`."""
        return {"id2label": self.id2label, "label2id": dict(self.label2id)}

    def encode(self, tag_lists: Sequence[Iterable[str]]) -> torch.Tensor:
        """Multi-hot `(batch, len(self))` float targets; tags outside the vocabulary are ignored."""
        if isinstance(tag_lists, str):
            raise TypeError("encode takes a list of tag lists, got a single string")
        target = torch.zeros(len(tag_lists), len(self))
        for row, tags in enumerate(tag_lists):
            if isinstance(tags, str):
                raise TypeError("each sample's hashtags must be a list of strings, got a single string")
            ids = [self.label2id[t] for t in map(normalize_hashtag, tags) if t in self.label2id]
            target[row, ids] = 1.0
        return target

    def decode(self, scores: torch.Tensor, k: int = 5) -> list[list[str]]:
        """The `k` highest-scoring hashtags of each row."""
        top = scores.topk(min(k, len(self)), dim=-1).indices.tolist()
        return [[self.labels[i] for i in row] for row in top]

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"labels": self.labels, "counts": self.counts}, f, ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HashtagVocabulary":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(data["labels"], data.get("counts"))


class XrayVisualForHashtagClassification(BackboneProbeMixin, XrayVisualPreTrainedModel):
    """XrayVisual backbone with a linear head over the hashtag vocabulary (`config.id2label`), for images and
    videos. `from_pretrained(mae_checkpoint, **vocabulary.config_kwargs())` starts from the MAE encoder;
    `freeze_backbone()` makes it a linear probe (the backbone then stays in eval mode)."""

    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^head\."]  # MAE decoder, plain classifier head

    def __init__(self, config: XrayVisualConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.xray_visual = XrayVisualModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.xray_visual.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_type: str = "softmax",
        label_smoothing: float = 0.0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> XrayVisualHashtagOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor`):
            Images `(batch, channels, height, width)` or videos `(batch, frames, channels, height, width)`.
        labels (`torch.FloatTensor` of shape `(batch, num_labels)`, *optional*):
            Multi-hot hashtag targets ([`HashtagVocabulary.encode`]).
        loss_type (`str`, *optional*, defaults to `"softmax"`):
            `"softmax"` (normalised multi-hot, Mahajan et al. 2018) or `"bce"`.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            See [`hashtag_loss`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.xray_visual(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        pooled = outputs.pooler_output
        logits = self.classifier(pooled).float()
        loss = None if labels is None else hashtag_loss(logits, labels, loss_type, label_smoothing)
        output = XrayVisualHashtagOutput(
            loss=loss, logits=logits, pooler_output=pooled, hidden_states=outputs.hidden_states
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "HASHTAG_LOSSES", "XrayVisualForHashtagClassification", "HashtagVocabulary", "hashtag_loss", "normalize_hashtag",
]
