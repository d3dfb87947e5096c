"""Evaluation results in CLIP_benchmark's JSON shape, so existing result tables and tooling read them as is.

```json
{"dataset": "mnist", "model": "runs/tiny/clip", "pretrained": "runs/tiny/clip", "task": "zeroshot_classification",
 "metrics": {"acc1": 0.71, "acc5": 0.97, "mean_per_class_recall": 0.70}, "language": "en"}
```

`task` uses CLIP_benchmark's names (`zeroshot_classification`, `zeroshot_retrieval`, `linear_probe`; ours:
`knn`); video results add `num_frames`. Like CLIP_benchmark (`json.dump` defaults), an undefined metric
(`acc5` with fewer than 5 classes) is written as `NaN`, which `json.load` and pandas read back.
"""

from __future__ import annotations

import json
import os
from typing import Any

TASKS = {
    "zero-shot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear-probe": "linear_probe",
    "knn": "knn",
    "caption-retrieval": "caption_retrieval",
}
REQUIRED_KEYS = ("dataset", "model", "task", "metrics", "language")


def describe_settings(settings: dict[str, Any] | None) -> str:
    """An evaluation's options beyond model, task, dataset and split as one line, sorted (`max_samples=12,
    num_frames=4`; lists and mappings as JSON), or "" without any: what tells two evaluations of one dataset apart."""
    return ", ".join(f"{key}={value if isinstance(value, str) else json.dumps(value, sort_keys=True)}"
                     for key, value in sorted((settings or {}).items()))


def benchmark_task(task: str) -> str:
    """CLIP_benchmark's task name for a CLI task (`zero-shot` -> `zeroshot_classification`); its names pass."""
    if task in TASKS:
        return TASKS[task]
    if task in TASKS.values():
        return task
    raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")


def make_result(
    dataset: str,
    model: str,
    task: str,
    metrics: dict[str, float],
    *,
    language: str = "en",
    pretrained: str | None = None,
    num_frames: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result record. `extra` keys (e.g. `split`, `templates`) go beside the required ones."""
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("metrics must be a non-empty dict of metric name -> number")
    for name, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"metric {name!r} must be a number, got {type(value).__name__}")
    result: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "pretrained": model if pretrained is None else pretrained,
        "task": benchmark_task(task),
        "metrics": {name: float(value) for name, value in metrics.items()},
        "language": language,
    }
    if num_frames is not None:
        result["num_frames"] = int(num_frames)
    result.update(extra)
    return result


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> str:
    """Write `result` (checked by `validate_result`) as JSON to `path`, creating its folder; returns the path."""
    validate_result(result)
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
        file.write("\n")
    return path


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result file written here or by CLIP_benchmark; refuses files missing the shape's keys."""
    with open(path, encoding="utf-8") as file:
        result = json.load(file)
    validate_result(result)
    return result


def validate_result(result: Any) -> None:
    """Raise `ValueError` if `result` lacks CLIP_benchmark's keys or its metrics are not numbers (or flags)."""
    if not isinstance(result, dict):
        raise ValueError(f"a result must be a JSON object, got {type(result).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ValueError(f"result is missing {missing}; CLIP_benchmark's shape has {list(REQUIRED_KEYS)}")
    metrics = result["metrics"]
    if not isinstance(metrics, dict):
        raise ValueError("result['metrics'] must be an object of metric name -> number")
    for name, value in metrics.items():  # CLIP_benchmark's linear probe also records flags (`normalized`)
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"metric {name!r} must be a number, got {value!r}")


__all__ = [
    "REQUIRED_KEYS", "TASKS", "benchmark_task", "describe_settings", "make_result", "read_result", "validate_result",
    "write_result",
]
