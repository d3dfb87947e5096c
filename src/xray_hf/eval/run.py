"""`run_eval`: one evaluation task on one dataset, for a checkpoint directory or a loaded model; what
`xray-hf eval` runs. Writes CLIP_benchmark-shaped JSON and, next to it, the task's plots.

A checkpoint directory is loaded with `xray_hf.checkpoint.load_checkpoint` (any CLIP-shaped checkpoint with its
processor files); samples are preprocessed by the checkpoint's own processors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..modeling.adapters import adapter_path
from ..modeling.adapters import save_adapter as save_adapter_to
from .adapters import adapter_from_fit
from .data import EvalSet, ProcessorTransform, decoded, load_eval_set
from .features import TextEncoder
from .linear_probe import extract_features, knn_eval, linear_probe_eval
from .options import EmbedOptions
from .metrics import recall_curve, retrieval_metrics, top_k_indices
from .plots import plot_confusion_matrix, plot_recall_curve, plot_retrieval_grid
from .caption_retrieval import run_caption_retrieval
from .results import TASKS, make_result, write_result
from .retrieval import embed_retrieval_set
from .zero_shot import resolve_templates, zero_shot_eval

GRID_TOP_K = 5


def _stem(output: str | None) -> str | None:
    return None if output is None else os.path.splitext(os.fspath(output))[0]


def _grid(eval_set: EvalSet, embeds: Any, path: str, num_queries: int) -> str:
    """Retrieval grid of `num_queries` captions spread evenly over the set, each with its top-5 items."""
    count = len(embeds.texts)
    picks = torch.linspace(0, count - 1, min(num_queries, count)).round().long().unique()
    top = top_k_indices(embeds.text_embeds[picks], embeds.image_embeds, GRID_TOP_K)
    images, hits = [], []
    for query, row in zip(picks.tolist(), top.tolist()):
        images.append([eval_set.display_image(embeds.item_indices[item]) for item in row])
        hits.append([item == embeds.text_to_image[query].item() for item in row])
    return plot_retrieval_grid([embeds.texts[q] for q in picks.tolist()], images, hits, path)


def run_eval(
    model: str | os.PathLike | nn.Module,
    task: str,
    dataset: str,
    split: str = "test",
    output: str | os.PathLike | None = None,
    *,
    tokenizer: Any = None,
    image_processor: Any = None,
    video_processor: Any = None,
    encode_text: TextEncoder | None = None,
    model_name: str | None = None,
    templates: str | Sequence[str] | None = None,
    classnames: Sequence[str] | None = None,
    label_column: str | None = None,
    caption_column: str | None = None,
    media_column: str | None = None,
    max_samples: int | None = None,
    train_dataset: str | None = None,
    train_split: str = "train",
    val_split: str | None = "validation",
    max_train_samples: int | None = None,
    feature: str = "pooled",
    video_mode: str = "native",
    embed: EmbedOptions | None = None,
    plots: bool = True,
    grid_queries: int = 8,
    language: str = "en",
    seed: int = 0,
    save_adapter: str | None = None,
    **embed_options: Any,
) -> dict[str, Any]:
    """Run `task` (`zero-shot`, `retrieval`, `linear-probe`, `knn`, `caption-retrieval`) of `model` (a checkpoint
    directory or a loaded model plus `tokenizer` / `image_processor` / `video_processor`) on `dataset` / `split`.
    `caption-retrieval` takes a text model alone (see `eval.caption_retrieval`).

    Returns the CLIP_benchmark-shaped result; with `output`, also writes it there and, with `plots`, writes
    `<output stem>_confusion.png` (zero-shot), `_recall_at_k.png` and `_retrieval_grid.png` (retrieval).
    `linear-probe` trains on `train_split` of `train_dataset` (default: `dataset`), chooses C on `val_split`
    (embedded sets; otherwise a held-out part of train) and also reports kNN; with `save_adapter=NAME` its
    probe is saved as a linear adapter in `<model>/adapters/NAME` (`modeling.adapters`). See the module
    docstrings of `zero_shot`, `retrieval` and `linear_probe` for the definitions. `embed` says how items are
    embedded (batch size, frames per clip, device, a compiled vision tower: `EmbedOptions`); its fields are also
    taken as keywords (`num_frames=4, stride=2, batch_size=32, device=..., compile=True`), as before it existed.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    embed = EmbedOptions.merged(embed, embed_options)  # a misspelled option fails before any loading
    if task == "caption-retrieval":  # a text model alone: no images, no processors
        found = run_caption_retrieval(model, dataset, split, tokenizer=tokenizer, caption_column=caption_column or
                                      "caption", max_samples=max_samples)
        name = model_name or (os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__)
        result = make_result(dataset, name, task, found["metrics"], language=language, split=split,
                             num_items=found["num_items"], num_samples=found["num_items"])
        if output is not None:
            write_result(output, result)
        return result
    if save_adapter is not None and (task != "linear-probe" or not isinstance(model, (str, os.PathLike))):
        raise ValueError("save_adapter needs task 'linear-probe' and a checkpoint directory to save it beside")
    model_dir = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if save_adapter is not None:
        adapter_path(model_dir, save_adapter)  # a bad name fails before any work
    needs_text = task in ("zero-shot", "retrieval") and encode_text is None
    if isinstance(model, (str, os.PathLike)):
        name = model_name or os.fspath(model)
        probe = load_eval_set(dataset, split, max_samples=1, media_column=media_column)
        checkpoint = load_checkpoint(model, need_text=needs_text and tokenizer is None,
                                     video=probe.modality == "video")
        model = checkpoint.model
        tokenizer = tokenizer or checkpoint.tokenizer
        image_processor = image_processor or checkpoint.image_processor
        video_processor = video_processor or checkpoint.video_processor
    else:
        name = model_name or getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    if needs_text and tokenizer is None:
        raise ValueError(f"task {task!r} needs a tokenizer (or encode_text=)")
    model = embed.place(model)
    transform = ProcessorTransform(image_processor, video_processor)
    num_frames = embed.frames(video_processor)
    common = dict(batch_size=embed.batch_size, num_workers=embed.num_workers, video_mode=video_mode)
    columns = dict(media_column=media_column, label_column=label_column, caption_column=caption_column)

    def open_set(source: str, which: str, limit: int | None, need: tuple[str, ...]) -> tuple[EvalSet, Any]:
        eval_set = load_eval_set(source, which, max_samples=limit, classnames=classnames, need=need, **columns)
        return eval_set, decoded(eval_set, transform, num_frames=num_frames, stride=embed.stride, seed=seed)

    stem = _stem(output) if plots else None
    written: dict[str, str] = {}
    extra: dict[str, Any] = {"split": split}
    if task == "zero-shot":
        eval_set, data = open_set(dataset, split, max_samples, ("labels", "classnames"))
        chosen = resolve_templates(templates, eval_set.modality)
        metrics, logits, labels = zero_shot_eval(
            model, data, None, eval_set.classnames, chosen, tokenizer=tokenizer, encode_text=encode_text,
            label_column=eval_set.label_column, return_logits=True, **common,
        )
        extra.update(templates=list(chosen), classnames=eval_set.classnames)
        if stem is not None:
            written["confusion_matrix"] = plot_confusion_matrix(
                labels.tolist(), logits.argmax(1).tolist(), eval_set.classnames, f"{stem}_confusion.png"
            )
    elif task == "retrieval":
        eval_set, data = open_set(dataset, split, max_samples, ("captions",))
        embeds = embed_retrieval_set(
            model, data, tokenizer=tokenizer, encode_text=encode_text, caption_column=eval_set.caption_column,
            **common,
        )
        metrics = retrieval_metrics(embeds.image_embeds, embeds.text_embeds, embeds.text_to_image)
        extra.update(num_items=int(embeds.image_embeds.shape[0]), num_captions=len(embeds.texts))
        if stem is not None:
            max_k = min(50, embeds.image_embeds.shape[0], embeds.text_embeds.shape[0])
            curve = recall_curve(embeds.image_embeds, embeds.text_embeds, embeds.text_to_image, max_k)
            written["recall_at_k"] = plot_recall_curve(curve, f"{stem}_recall_at_k.png")
            written["retrieval_grid"] = _grid(eval_set, embeds, f"{stem}_retrieval_grid.png", grid_queries)
    else:
        if train_dataset is None and not _has_split(dataset, train_split):
            raise ValueError(f"{dataset!r} is a single split: pass train_dataset= (the probe's training data)")
        eval_set, test_data = open_set(dataset, split, max_samples, ("labels",))
        source = train_dataset or dataset
        _, train_data = open_set(source, train_split, max_train_samples, ("labels",))
        options = dict(feature=feature, label_column=eval_set.label_column, **common)
        x_train, y_train = extract_features(model, train_data, **options)
        x_test, y_test = extract_features(model, test_data, **options)
        metrics = {}
        if task == "linear-probe":
            x_val = y_val = None
            if val_split is not None and _has_split(source, val_split):
                _, val_data = open_set(source, val_split, max_train_samples, ("labels",))
                x_val, y_val = extract_features(model, val_data, **options)
            probe_metrics, fit = linear_probe_eval(x_train, y_train, x_test, y_test, x_val, y_val, seed=seed,
                                                   return_fit=True)
            metrics.update(probe_metrics)
            if save_adapter is not None:
                info = {"dataset": source, "train_split": train_split, "val_split": val_split,
                        "test_dataset": eval_set.name, "test_split": split, "test_lp_acc1": probe_metrics["lp_acc1"]}
                adapter = adapter_from_fit(fit, classnames=eval_set.classnames, feature=feature, video_mode=video_mode,
                                           base_model_type=getattr(model.config, "model_type", None), fit_info=info)
                extra["adapter"] = save_adapter_to(adapter, model_dir, save_adapter)
        metrics.update(knn_eval(x_train, y_train, x_test, y_test))
        extra.update(feature=feature, train_split=train_split, num_train=int(x_train.shape[0]))
    extra["num_samples"] = len(eval_set.dataset)
    if written:
        extra["plots"] = {key: os.path.basename(path) for key, path in written.items()}
    result = make_result(
        eval_set.name, name, task, metrics, language=language,
        num_frames=num_frames if eval_set.modality == "video" else None, **extra,
    )
    if output is not None:
        write_result(output, result)
    return result


def _has_split(source: str, split: str) -> bool:
    """Embedded sets have train/validation/test; a local source is a single split."""
    from ..data.embedded import NAMES, SPLITS

    return source in NAMES and split in SPLITS


__all__ = ["load_checkpoint", "run_eval"]
