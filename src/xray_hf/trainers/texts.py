"""The training texts of the CLIP-style stages (`clip`, `distill`): the `captions:` and `text_cache:` blocks, the
caption sampler around each source's decoder, and how texts reach the text tower (tokens, or the frozen LLM's
pooled outputs from the text cache)."""

from __future__ import annotations

import os
from typing import Any

import datasets

from ..caches.common import load_or_build, text_sha256
from ..caches.text import TextEmbeddingCache
from ..data.captions import CaptionSampler
from ..data.inputs import open_stream_source, source_table
from ..modeling.clip import XrayCLIPModel
from ..modeling.llm2clip import XrayLLM2CLIPTextModel
from ..run_config.extras import CaptionSpec, TextCacheSpec
from .clip import CachedTexts, TokenizedTexts
from .run import RunContext


def label_column(captions: CaptionSpec) -> str:
    """The column whose class names fill `captions.templates` (`label` unless set)."""
    return captions.label_column or "label"


def caption_records(run: RunContext, captions: CaptionSpec) -> list[tuple[Any, list[dict]]]:
    """(source, records) of every training source: the caption (or label) and hashtag columns, no media decoded."""
    first = label_column(captions) if captions.templates is not None else captions.column
    columns = [c for c in (first, captions.hashtag_column) if c]
    records: list[tuple[Any, list[dict]]] = []
    for spec in (run.data.image, run.data.video):
        if spec is None:
            continue
        if spec.name is not None:
            table = source_table(spec)
        else:
            table, _ = open_stream_source(spec)
        missing = [c for c in columns if c not in (table.column_names or [])]
        if missing:
            raise ValueError(f"the training source {spec.name or spec.path!r} has no column {missing}")
        records.append((spec, list(table.select_columns(columns))))
    return records


def prepare_text_cache(run: RunContext, model: XrayCLIPModel, tokenizer: Any, texts: list[str],
                       spec: TextCacheSpec, main_process_first: Any) -> TextEmbeddingCache:
    """Open the text cache over `texts` for the model's frozen LLM, building it (once, on the main process first)
    when it is missing or stale."""
    path = spec.dir or os.path.join(run.output_dir, "text_cache")
    captions = datasets.Dataset.from_dict({"caption_id": [text_sha256(t) for t in texts], "caption": texts})
    tower = model.text_model
    with main_process_first(desc="text cache"):
        return load_or_build(
            lambda: TextEmbeddingCache.load(path, tower, tokenizer, captions=captions),
            lambda: TextEmbeddingCache.build(tower, tokenizer, captions, path, batch_size=spec.batch_size),
            path, "text cache",
        )


def caption_sampler(captions: CaptionSpec):
    """`wrap_decoder` for `build_train_loader`: a `CaptionSampler` around each source's decoder (template captions
    over a labelled source's class names when `captions.templates` is set)."""

    def wrap(decoder, spec):
        classnames = None
        if captions.templates is not None:
            features = (source_table(spec) if spec.name else open_stream_source(spec)[0]).features or {}
            label = features.get(label_column(captions))
            if not isinstance(label, datasets.ClassLabel):
                raise ValueError(f"captions.templates need a ClassLabel column {label_column(captions)!r} in {spec}")
            classnames = label.names
        return CaptionSampler(decoder, captions.column, captions.hashtag_column, captions.sentence_p,
                              captions.templates, classnames, label_column(captions))

    return wrap


def has_frozen_llm(model: XrayCLIPModel) -> bool:
    return isinstance(model.text_model, XrayLLM2CLIPTextModel) and model.config.text_config.freeze_llm


def text_inputs_for(run: RunContext, model: XrayCLIPModel, tokenizer: Any, captions: CaptionSpec,
                    cache_spec: TextCacheSpec, main_process_first: Any) -> TokenizedTexts | CachedTexts:
    """How training texts reach `model`'s text tower: cached pooled LLM outputs (frozen LLM, cache enabled; the
    cache covers every text the caption sampler can draw), else tokens."""
    if not (has_frozen_llm(model) and cache_spec.enabled):
        return TokenizedTexts.for_config(tokenizer, model.config.text_config)
    wrap = caption_sampler(captions)
    texts = list(dict.fromkeys(
        text for spec, records in caption_records(run, captions) for text in wrap(None, spec).candidate_texts(records)
    ))
    return CachedTexts(prepare_text_cache(run, model, tokenizer, texts, cache_spec, main_process_first))


__all__ = [
    "caption_records", "caption_sampler", "has_frozen_llm", "label_column", "prepare_text_cache", "text_inputs_for",
]
