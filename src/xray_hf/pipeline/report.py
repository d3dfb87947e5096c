"""The pipeline's report: `report.json` (one entry per finished stage, evaluations attached to the stage they
evaluate), `report.md`, the loss-curve plots, and a model card in every checkpoint."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ..atomic_io import write_json_atomic, write_text_atomic
from .state import Pipeline


REPORT_JSON = "report.json"


REPORT_MD = "report.md"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """The numbers of a nested dict as `prefix/key/subkey` metrics."""
    if is_number(value):
        return {prefix: value}
    if not isinstance(value, dict):
        return {}
    flat: dict[str, float] = {}
    for key, item in value.items():
        flat.update(flatten(f"{prefix}/{key}", item))
    return flat


def plot_loss_curves(log_history: list[dict[str, Any]], path: str, title: str = "") -> str | None:
    """The training loss (and every logged loss term) against the step, as a PNG; None without logged losses."""
    rows = [row for row in log_history if "loss" in row and "step" in row]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss"] + sorted({key for row in rows for key in row
                              if key.endswith("loss") and key != "loss" and is_number(row[key])})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(row["step"], row[key]) for row in rows if is_number(row.get(key))]
        ax.plot(*zip(*points), label=key, linewidth=2 if key == "loss" else 1)
    evals = [(row["step"], row["eval_loss"]) for row in log_history if is_number(row.get("eval_loss"))]
    if evals:
        ax.plot(*zip(*evals), "o--", label="eval_loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build_report(pipeline: Pipeline) -> dict[str, Any]:
    """`report.json`: one entry per finished stage (and semantic IDs), evaluations attached to the stage evaluated."""
    steps = pipeline.state.get("steps", {})
    report: dict[str, Any] = {}
    for name, info in steps.items():
        if info.get("status") != "done" or "entry" not in info or info["entry"].get("stage") == "eval":
            continue
        report[name] = {**copy.deepcopy(info["entry"]), "status": "done", "seconds": round(info["seconds"], 1)}
    for run in (steps.get("eval", {}).get("entry") or {}).get("runs", []):
        if run["model"] in report:
            report[run["model"]]["evaluation"].append(
                {key: run[key] for key in ("name", "task", "dataset", "split", "settings", "metrics") if key in run})
            report[run["model"]]["plots"].extend(run["plots"])
    return report


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_report_md(report: dict[str, Any], total_seconds: float | None = None) -> str:
    """`report.md`: a summary table, then per stage its metrics, evaluations (with their options) and plots."""
    from ..eval.results import describe_settings

    lines = ["# Xray-Visual pipeline report", ""]
    if total_seconds is not None:
        lines += [f"Total time of the steps: {total_seconds / 60:.1f} min.", ""]
    lines += ["| stage | from | steps | train loss | time (s) |", "|---|---|---|---|---|"]
    for name, entry in report.items():
        metrics = entry.get("metrics", {})
        lines.append(f"| {name} | {', '.join(entry.get('parents', [])[:1]) or '-'} | "
                     f"{_format(metrics.get('global_step', '-'))} | {_format(metrics.get('train_loss', '-'))} | "
                     f"{_format(entry.get('seconds', '-'))} |")
    for name, entry in report.items():
        lines += ["", f"## {name}", ""]
        if entry.get("parents"):
            lines.append(f"Starts from: {' <- '.join(entry['parents'])}. ")
        if entry.get("data"):
            lines.append("Data: " + ", ".join(f"{d['name']} ({d['split']})" for d in entry["data"]) + ".")
        shown = {k: v for k, v in entry.get("metrics", {}).items() if k not in ("global_step",)}
        if shown:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {key} | {_format(value)} |" for key, value in shown.items()]
        for run in entry.get("evaluation", []):
            where = ", ".join(part for part in (run["split"], describe_settings(run.get("settings"))) if part)
            lines += ["", f"**{run['task']}** on {run['dataset']} ({where}): "
                      + ", ".join(f"{k} {_format(v)}" for k, v in run["metrics"].items())]
        for plot in entry.get("plots", []):
            lines += ["", f"![{name}: {Path(plot).stem}]({plot})"]
    return "\n".join(lines) + "\n"


def write_report(pipeline: Pipeline) -> dict[str, Any]:
    """Write `report.json` and `report.md` from the state (main process); returns the report."""
    report = build_report(pipeline)
    write_json_atomic(pipeline.path(REPORT_JSON), report, indent=1)
    total = sum(info.get("seconds", 0.0) for info in pipeline.state.get("steps", {}).values())
    write_text_atomic(pipeline.path(REPORT_MD), render_report_md(report, total))
    return report


def write_model_cards(pipeline: Pipeline, report: dict[str, Any]) -> None:
    """A model card (README.md) in every checkpoint directory the pipeline wrote."""
    from ..model_card import write_model_card

    for name, entry in report.items():
        if name in pipeline.config["stages"] and os.path.isfile(pipeline.path(name, "config.json")):
            write_model_card(pipeline.path(name), entry)


__all__ = [
    "REPORT_JSON", "REPORT_MD", "build_report", "flatten", "is_number", "plot_loss_curves", "render_report_md", "write_model_cards", "write_report",
]
