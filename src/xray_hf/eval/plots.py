"""Plots a person would rather look at than numbers: a zero-shot confusion matrix, recall@k curves, and a
retrieval grid (text queries and their top images). PNGs of an exact pixel size, drawn with matplotlib's Agg
canvas on a private `Figure` (no pyplot state, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

DPI = 100
HIT_COLOUR = "#1a9850"  # green: a correct item
MISS_COLOUR = "#bdbdbd"


def _figure(size: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    if width < 64 or height < 64:
        raise ValueError(f"size must be at least 64 x 64 pixels, got {size}")
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix (true class x predicted class); a class without samples is a zero row."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-D of equal length, got {labels.shape}, {predictions.shape}")
    both = np.concatenate([labels, predictions])
    if both.size and (both.min() < 0 or both.max() >= num_classes):
        raise ValueError(f"labels and predictions must lie in [0, {num_classes})")
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (labels, predictions), 1)
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_confusion_matrix(
    labels: Sequence[int],
    predictions: Sequence[int],
    classnames: Sequence[str],
    path: str | os.PathLike,
    *,
    size: tuple[int, int] = (900, 800),
    title: str = "Zero-shot confusion matrix (rows: true class, normalised)",
) -> str:
    """Confusion-matrix PNG with class names on both axes and each row normalised to 1 (per-class recall on the
    diagonal). Cells are annotated up to 20 classes; names are left off beyond 60."""
    classnames = list(classnames)
    matrix = confusion_matrix(labels, predictions, len(classnames))
    figure = _figure(size)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    count = len(classnames)
    if count <= 60:
        font = 9 if count <= 20 else 6
        axes.set_xticks(range(count), [str(name) for name in classnames], rotation=60, ha="right", fontsize=font)
        axes.set_yticks(range(count), [str(name) for name in classnames], fontsize=font)
    if count <= 20:
        for row in range(count):
            for column in range(count):
                value = matrix[row, column]
                if value > 0:
                    axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                              color="white" if value > 0.5 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_recall_curve(
    curve: dict[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    size: tuple[int, int] = (800, 600),
    title: str = "Retrieval recall@k",
) -> str:
    """Recall@k against k for both directions, from `metrics.recall_curve` (`ks`, `image_retrieval`,
    `text_retrieval`, optional `num_items` for the chance line); R@1, R@5 and R@10 are marked and listed."""
    ks = list(curve.get("ks", []))
    if not ks:
        raise ValueError("curve needs a non-empty 'ks' list")
    labels = {"image_retrieval": "text → image", "text_retrieval": "image → text"}
    figure = _figure(size)
    axes = figure.add_subplot()
    for key, label in labels.items():
        if key not in curve:
            continue
        values = list(curve[key])
        if len(values) != len(ks):
            raise ValueError(f"curve[{key!r}] has {len(values)} values for {len(ks)} ks")
        marked = [(k, v) for k, v in zip(ks, values) if k in (1, 5, 10)]
        summary = ", ".join(f"R@{k} {v:.2f}" for k, v in marked)
        (line,) = axes.plot(ks, values, label=f"{label} ({key})" + (f": {summary}" if summary else ""), linewidth=2)
        if marked:
            axes.scatter(*zip(*marked), color=line.get_color(), zorder=3)
    if curve.get("num_items"):
        chance = [min(1.0, k / curve["num_items"]) for k in ks]
        axes.plot(ks, chance, linestyle=":", color="grey", label="chance, text → image (k / items)")
    axes.set_xlim(min(ks), max(ks))
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("k")
    axes.set_ylabel("recall@k")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def _as_image(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):  # (C, H, W)
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"an image must be (H, W), (H, W, C) or (C, H, W), got shape {array.shape}")
    return array


def plot_retrieval_grid(
    queries: Sequence[str],
    images: Sequence[Sequence[Any]],
    hits: Sequence[Sequence[bool]],
    path: str | os.PathLike,
    *,
    cell: int = 128,
    text_width: int = 320,
) -> str:
    """One row per text query: the query, then its retrieved images best first (5 per row in the CLI), each
    framed green when it is a correct item for the query and grey otherwise.

    The PNG is `text_width + cell * max_images` wide and `cell * len(queries)` high. Images are arrays or PIL
    images (uint8 or floats in [0, 1]); for a video pass one frame.
    """
    if not queries:
        raise ValueError("no queries to plot")
    if len(images) != len(queries) or len(hits) != len(queries):
        raise ValueError(f"{len(queries)} queries need as many image rows and hit rows, got {len(images)}, {len(hits)}")
    columns = max(len(row) for row in images)
    if columns == 0:
        raise ValueError("no retrieved images to plot")
    width, height = text_width + cell * columns, cell * len(queries)
    figure = _figure((width, height))
    text_fraction = text_width / width
    for row, (query, row_images, row_hits) in enumerate(zip(queries, images, hits)):
        if len(row_hits) != len(row_images):
            raise ValueError(f"query {row}: {len(row_images)} images but {len(row_hits)} hit flags")
        bottom = 1 - (row + 1) / len(queries)
        text_axes = figure.add_axes((0, bottom, text_fraction, 1 / len(queries)))
        text_axes.axis("off")
        text_axes.text(0.04, 0.5, _wrap(query, max(10, text_width // 8)), va="center", ha="left", fontsize=9,
                       transform=text_axes.transAxes)
        for column, (image, hit) in enumerate(zip(row_images, row_hits)):
            pad = 4  # pixels of white between cells
            left = (text_width + column * cell + pad) / width
            axes = figure.add_axes(
                (left, (height - (row + 1) * cell + pad) / height, (cell - 2 * pad) / width, (cell - 2 * pad) / height)
            )
            array = _as_image(image)
            if array.dtype != np.uint8:
                array = np.clip(array.astype(np.float64), 0.0, 1.0)
            top = 255 if array.dtype == np.uint8 else 1.0
            axes.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=top, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            colour = HIT_COLOUR if hit else MISS_COLOUR
            for spine in axes.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4 if hit else 1)
    return _save(figure, path)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:6]) + ("…" if len(lines) > 6 else "")


__all__ = ["confusion_matrix", "plot_confusion_matrix", "plot_recall_curve", "plot_retrieval_grid"]
