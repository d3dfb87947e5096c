"""`xray-hf pipeline`: the whole recipe from one YAML into one run directory, resumable at any point.

A pipeline config (`configs/pipeline_tiny.yaml`) has

- `stages:` an ordered mapping of stage name (an entry of `xray_hf.stages.STAGES`) to its run config, in exactly
  the schema `xray-hf train <stage> --config` reads. `base: <file>` layers the section over a stage config file
  (relative to the pipeline file), so the settings a pipeline changes are all that it holds. `{output}` in any
  string is the run directory: `from_pretrained: "{output}/hashtag"` chains a stage to the one before it, and
  `training.output_dir` is always `{output}/<stage>`;
- `semantic_ids:` (optional) the `xray-hf semantic-ids` settings, with `model:` a stage name;
- `evaluation:` (optional) a list of `xray-hf eval` runs, each with `model:` a stage name; each result is named
  by its settings (`evaluation_names`), so entries of one dataset that differ in options are all run and reported.

The run directory gets one checkpoint directory per stage (loadable with `AutoModel.from_pretrained`), `eval/`
(results JSON and plots), `plots/` (loss curves), `report.json` (one entry per stage with its metrics and
evaluations), `report.md`, a model card in every checkpoint, and `pipeline_state.json`, which is what makes a rerun
continue: finished steps are kept (their settings are fingerprinted; a changed step is refused unless restarted),
an interrupted training stage resumes from its last complete checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml

from .atomic_io import write_json_atomic, write_text_atomic
from .stages import STAGES, get_stage
from .trainers.resume import last_complete_checkpoint

logger = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PIPELINE_KEYS = ("seed", "stages", "semantic_ids", "evaluation")
OUTPUT = "{output}"


# ------------------------------------------------------------------------------------------------ config
def preset_path(preset: str) -> Path:
    """The shipped pipeline config of a preset (`configs/pipeline_<preset>.yaml` inside the package)."""
    path = Path(str(resources.files("xray_hf") / "configs" / f"pipeline_{preset}.yaml"))
    if not path.is_file():
        shipped = sorted(p.name[len("pipeline_"):-len(".yaml")]
                         for p in Path(str(resources.files("xray_hf") / "configs")).glob("pipeline_*.yaml"))
        raise ValueError(f"unknown pipeline preset {preset!r}; shipped presets: {shipped}")
    return path


def _merge(base: Any, update: Any) -> Any:
    """`update` over `base`, mappings merged key by key (lists and scalars replaced)."""
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for key, value in update.items():
            merged[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(update)


def _substitute(value: Any, output: str) -> Any:
    if isinstance(value, str):
        return value.replace(OUTPUT, output)
    if isinstance(value, dict):
        return {key: _substitute(item, output) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, output) for item in value]
    return value


def _references(value: Any, own: str | None = None) -> list[str]:
    """The stage names a section reads from the run directory (`{output}/<stage>`; not its own output)."""
    text = json.dumps(value)  # in the order of the config: a stage's first parent is the one it names first
    found = re.findall(re.escape(OUTPUT) + r"/([A-Za-z0-9_-]+)", text)
    return [name for name in dict.fromkeys(found) if name != own]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_pipeline_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a pipeline YAML, resolve each stage's `base:` file and check the stage sections; `{output}` is kept."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a pipeline config must be a YAML mapping")
    unknown = set(raw) - set(PIPELINE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown pipeline keys {sorted(unknown)}; known: {list(PIPELINE_KEYS)}")
    if not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise ValueError(f"{path}: 'stages:' must map stage names to run configs")
    stages: dict[str, dict] = {}
    for name, section in raw["stages"].items():
        get_stage(name)  # a clear error for an unknown stage
        section = dict(section or {})
        if "base" in section:
            base_path = path.parent / section.pop("base")
            with open(base_path, encoding="utf-8") as f:
                section = _merge(yaml.safe_load(f), section)
        section.setdefault("stage", name)
        if "seed" in raw:
            section.setdefault("seed", raw["seed"])
        section.setdefault("training", {})["output_dir"] = f"{OUTPUT}/{name}"
        for parent in _references(section, name):
            if parent not in stages:
                raise ValueError(f"stage {name!r} reads {OUTPUT}/{parent}, which no earlier stage writes")
        stages[name] = section
    evaluation = raw.get("evaluation") or []
    if not isinstance(evaluation, list):
        raise ValueError("'evaluation:' must be a list of xray-hf eval settings")
    for spec in [raw.get("semantic_ids") or {}, *evaluation]:
        if spec and spec.get("model") not in stages:
            raise ValueError(f"{spec} must name a stage of this pipeline as model: (one of {list(stages)})")
    for index, spec in enumerate(evaluation):
        missing = [key for key in ("task", "dataset") if not spec.get(key)]
        if missing:
            raise ValueError(f"evaluation entry {index + 1} ({spec}) needs {' and '.join(missing)}")
        for other in range(index):
            if _eval_settings(evaluation[other]) == _eval_settings(spec):
                raise ValueError(f"evaluation entries {other + 1} and {index + 1} are the same evaluation ({spec}); "
                                 "remove one")
    return {"seed": raw.get("seed", 0), "stages": stages, "semantic_ids": raw.get("semantic_ids"),
            "evaluation": evaluation, "path": str(path)}


# ------------------------------------------------------------------------------------------------- steps
class Ranks:
    """How the processes of a distributed launch (torchrun / accelerate launch) agree. The main process decides
    (which steps are done, where a stage resumes) and alone runs the steps that do not train; the others receive
    its answer or its failure over a gloo group with a long timeout, so a long evaluation does not trip NCCL's
    10-minute one. One process: every call runs directly."""

    def __init__(self, timeout_hours: float = 24.0):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.group = None
        if self.world_size > 1:
            import torch.distributed as dist
            from accelerate import PartialState

            PartialState()  # joins the process group of the launch (the Trainers use the same one)
            self.group = dist.new_group(backend="gloo", timeout=timedelta(hours=timeout_hours))

    def _share(self, value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def on_main(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()` on the main process; its result (or its failure, raised as a `RuntimeError`) on every process."""
        if self.group is None:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException as error:
                self._share(("error", f"{type(error).__name__}: {error}"))
                raise
            return self._share(("ok", result))[1]
        status, value = self._share(None)
        if status == "error":
            raise RuntimeError(f"the main process failed in {what}: {value}")
        return value


@dataclass
class Pipeline:
    """The run directory and its state; what each step reads and writes."""

    output: str
    config: dict[str, Any]
    ranks: Ranks
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    def path(self, *parts: str) -> str:
        return os.path.join(self.output, *parts)

    def resolve(self, value: Any) -> Any:
        return _substitute(value, self.output)

    def save_state(self) -> None:
        if self.is_main:
            write_json_atomic(self.path(STATE_FILE), self.state, indent=1, default=str)


class PipelineStep(Protocol):
    """One step of a pipeline: a name (its folder and report entry), the settings fingerprinted for reruns, the stages
    it reads, whether every process of a launch runs it, and `run`, which returns its report entry."""

    name: str
    kind: str
    every_rank: bool
    parents: list[str]

    def settings(self) -> Any: ...

    def run(self, pipeline: Pipeline, progress: _Progress) -> dict[str, Any] | None: ...


class TrainStep:
    """One training stage (`xray-hf train <stage>`), resumed from its last complete checkpoint."""

    kind = "train"
    every_rank = True  # a Trainer runs on every process of a distributed launch

    def __init__(self, name: str, section: dict[str, Any]):
        self.name, self.section = name, section
        self.parents = _references(section, name)

    def settings(self) -> Any:
        return self.section

    def run(self, pipeline: Pipeline, progress: _Progress) -> dict[str, Any] | None:
        from .trainers.run import run_stage

        config = pipeline.resolve(self.section)
        output_dir = config["training"]["output_dir"]
        config["training"].setdefault("disable_tqdm", False)
        resume = pipeline.ranks.on_main(lambda: last_complete_checkpoint(output_dir), f"{self.name} (resume)")
        if resume:
            progress.write(f"[pipeline] {self.name}: resuming from {os.path.relpath(resume, pipeline.output)}")
        results = run_stage(self.name, config, resume_from_checkpoint=resume)
        return self.entry(pipeline, results) if pipeline.is_main else None

    def entry(self, pipeline: Pipeline, results: dict[str, Any]) -> dict[str, Any]:
        folder = pipeline.path(self.name)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        metrics = {key: value for key, value in results.items() if _is_number(value)}
        evaluation = {key.removeprefix("eval_"): value for key, value in (results.get("eval") or {}).items()
                      if not key.endswith(("_runtime", "_per_second"))}
        metrics.update(_flatten("eval", evaluation))
        metrics.update(_flatten("retention", results.get("retention") or {}))
        data = self.section.get("data", {})
        sources = [{"name": spec.get("name") or spec.get("path"), "split": spec.get("split", "train")}
                   for spec in (data.get("image"), data.get("video"), *data.get("sources", []))
                   if isinstance(spec, dict)]
        plots = [os.path.relpath(os.path.join(folder, name), pipeline.output)
                 for name in sorted(os.listdir(folder)) if name.endswith(".png")]
        loss_plot = plot_loss_curves(results.get("log_history") or [], pipeline.path("plots", f"{self.name}_loss.png"),
                                     title=f"{self.name} training")
        if loss_plot:
            plots.insert(0, os.path.relpath(loss_plot, pipeline.output))
        return {
            "stage": self.name, "checkpoint": self.name, "parents": pipeline_parents(pipeline, self.name),
            "model_type": config.get("model_type"), "architectures": config.get("architectures", []),
            "data": sources, "metrics": metrics, "evaluation": [], "plots": plots,
        }


class SemanticIdsStep:
    """RQ/PQ semantic IDs of a dataset's embeddings under one stage's checkpoint (`xray-hf semantic-ids`)."""

    kind = "semantic_ids"
    name = "semantic_ids"
    every_rank = False

    def __init__(self, settings: dict[str, Any]):
        self.spec = dict(settings)
        self.parents = [self.spec["model"]]

    def settings(self) -> Any:
        return self.spec

    def run(self, pipeline: Pipeline, progress: _Progress) -> dict[str, Any] | None:
        from .semantic_ids import run_semantic_ids

        spec = dict(self.spec)
        model = spec.pop("model")
        report = run_semantic_ids(pipeline.path(model), spec.pop("dataset"), pipeline.path(self.name), **spec)
        metrics = {"reconstruction_cosine": report["reconstruction_cosine"], "num_items": report["num_items"]}
        for level, row in enumerate(report.get("levels", [])):
            metrics.update({f"level{level}/{key}": value for key, value in row.items() if _is_number(value)})
        return {"stage": self.name, "checkpoint": self.name, "parents": [model, *pipeline_parents(pipeline, model)],
                "method": report["method"], "data": [{"name": report["dataset"], "split": report["split"]}],
                "metrics": metrics, "evaluation": [], "plots": []}


EVAL_KEYS = ("model", "task", "dataset", "split")  # what names an evaluation; every other key is an option


def _eval_settings(run: dict[str, Any]) -> dict[str, Any]:
    """Everything an evaluation entry sets, with the default split filled in (two entries are one evaluation when
    these are equal)."""
    return {"split": "test", **run}


def path_component(text: str, limit: int = 80) -> str:
    """`text` as one safe file-name component: runs of characters other than letters, digits, `.`, `_` and `-`
    become `-` (a dataset path's `/` too); a long one is cut and ends with a digest of the whole."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"
    if len(safe) > limit:
        safe = f"{safe[: limit - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def evaluation_names(runs: list[dict[str, Any]]) -> list[str]:
    """A file name (without `.json`) per evaluation entry: `<model>_<task>_<dataset>_<split>`, the dataset as one
    safe path component; entries sharing those four are told apart by their options (`..._max_samples-12`)."""
    bases = [path_component(f"{run['model']}_{run['task']}_{run['dataset']}_{run.get('split', 'test')}", 120)
             for run in runs]
    names = []
    for base, run in zip(bases, runs):
        options = {key: value for key, value in run.items() if key not in EVAL_KEYS}
        if bases.count(base) > 1 and options:
            described = "_".join(f"{key}-{value if isinstance(value, (str, int, float)) else _digest(value)[:8]}"
                                 for key, value in sorted(options.items()))
            base = f"{base}_{path_component(described)}"
        names.append(base)
    if len(set(names)) != len(names):  # only entries that repeat each other (refused when the config is read)
        raise ValueError(f"two evaluation entries have the same settings: {runs}")
    return names


class EvalStep:
    """Every `evaluation:` run (`xray-hf eval`), each result attached to the entry of the stage it evaluates,
    under its own name (`evaluation_names`): entries of one dataset that differ in options all run and are
    reported apart. Results already written are kept on a rerun."""

    kind = "eval"
    name = "eval"
    every_rank = False

    def __init__(self, runs: list[dict[str, Any]]):
        self.runs = [dict(run) for run in runs]
        self.names = evaluation_names(self.runs)
        self.parents = list(dict.fromkeys(run["model"] for run in self.runs))

    def settings(self) -> Any:
        return self.runs

    def run(self, pipeline: Pipeline, progress: _Progress) -> dict[str, Any] | None:
        from .eval.results import describe_settings
        from .eval.run import run_eval

        results = []
        for spec, name in zip(self.runs, self.names):
            output = pipeline.path("eval", f"{name}.json")
            options = {key: value for key, value in spec.items() if key not in EVAL_KEYS}
            result = _read_json(output)  # kept from before an interruption; a half-written file is redone
            if result is None:
                described = f" ({describe_settings(options)})" if options else ""
                progress.write(f"[pipeline] eval: {spec['task']} of {spec['model']} on {spec['dataset']}{described}")
                result = run_eval(pipeline.path(spec["model"]), spec["task"], spec["dataset"],
                                  split=spec.get("split", "test"), output=output, model_name=spec["model"], **options)
            plots = [os.path.join("eval", plot) for plot in (result.get("plots") or {}).values()]
            results.append({"name": name, "model": spec["model"], "task": spec["task"], "dataset": spec["dataset"],
                            "split": spec.get("split", "test"), "settings": options, "metrics": result["metrics"],
                            "plots": plots})
        return {"stage": self.name, "runs": results}


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(prefix: str, value: Any) -> dict[str, float]:
    """The numbers of a nested dict as `prefix/key/subkey` metrics."""
    if _is_number(value):
        return {prefix: value}
    if not isinstance(value, dict):
        return {}
    flat: dict[str, float] = {}
    for key, item in value.items():
        flat.update(_flatten(f"{prefix}/{key}", item))
    return flat


def pipeline_parents(pipeline: Pipeline, name: str) -> list[str]:
    """The stages a stage starts from, nearest first (`clip` -> `hashtag`, `mae`)."""
    section = pipeline.config["stages"].get(name)
    if section is None:
        return []
    parents: list[str] = []
    for parent in _references(section, name):
        for ancestor in [parent, *pipeline_parents(pipeline, parent)]:
            if ancestor not in parents:
                parents.append(ancestor)
    return parents


def build_steps(config: dict[str, Any]) -> list[PipelineStep]:
    """The pipeline's steps in order: every stage, then semantic IDs, then the evaluations."""
    steps: list[PipelineStep] = [TrainStep(name, section) for name, section in config["stages"].items()]
    if config.get("semantic_ids"):
        steps.append(SemanticIdsStep(config["semantic_ids"]))
    if config.get("evaluation"):
        steps.append(EvalStep(config["evaluation"]))
    return steps


# ------------------------------------------------------------------------------------------------ report
def plot_loss_curves(log_history: list[dict[str, Any]], path: str, title: str = "") -> str | None:
    """The training loss (and every logged loss term) against the step, as a PNG; None without logged losses."""
    rows = [row for row in log_history if "loss" in row and "step" in row]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss"] + sorted({key for row in rows for key in row
                              if key.endswith("loss") and key != "loss" and _is_number(row[key])})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        points = [(row["step"], row[key]) for row in rows if _is_number(row.get(key))]
        ax.plot(*zip(*points), label=key, linewidth=2 if key == "loss" else 1)
    evals = [(row["step"], row["eval_loss"]) for row in log_history if _is_number(row.get("eval_loss"))]
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
    from .eval.results import describe_settings

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
    from .model_card import write_model_card

    for name, entry in report.items():
        if name in pipeline.config["stages"] and os.path.isfile(pipeline.path(name, "config.json")):
            write_model_card(pipeline.path(name), entry)


# --------------------------------------------------------------------------------------------------- run
class _Progress:
    """The whole run's progress display (one tick per step); each Trainer shows its own below it."""

    def __init__(self, total: int, done: int, show: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc="pipeline", unit="step", position=0, leave=True,
                        disable=not show)

    def write(self, message: str) -> None:
        if not self.bar.disable:
            self.bar.write(message)

    def step(self, name: str) -> None:
        self.bar.set_postfix_str(name)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_pipeline(output: str | os.PathLike, preset: str | None = None, config: str | os.PathLike | None = None,
                 restart: list[str] | None = None) -> dict[str, Any]:
    """
    Run (or continue) a pipeline in the run directory `output`.

    Args:
        output: the run directory (created if needed); rerunning with the same one continues the run.
        preset: a shipped pipeline config (`configs/pipeline_<preset>.yaml`), `tiny` by default.
        config: a pipeline YAML instead of a preset.
        restart: steps to redo, with every step after the first of them (their stage folders are moved aside).

    Returns:
        The report (also written as `report.json` / `report.md`): one entry per stage with its metrics.

    Under torchrun / accelerate launch every process runs this; the training stages use all of them, the main
    process alone writes the state and runs the other steps. The run directory must be on a filesystem every node
    sees.
    """
    path = Path(config) if config is not None else preset_path(preset or "tiny")
    settings = load_pipeline_config(path)
    output = os.path.abspath(os.fspath(output))
    ranks = Ranks()
    pipeline = Pipeline(output, settings, ranks)
    steps = build_steps(settings)

    def decide() -> set[str]:
        os.makedirs(output, exist_ok=True)
        state_file = pipeline.path(STATE_FILE)
        state = _read_json(state_file)
        if os.path.exists(state_file) and not isinstance(state, dict):
            raise ValueError(f"{state_file} is not readable JSON, so which steps finished is unknown; move it aside "
                             "to start this run directory over (finished stages then resume from their checkpoints)")
        pipeline.state = state or {}
        pipeline.state.setdefault("steps", {})
        pipeline.state["config"] = str(path)
        _apply_restart(pipeline, [step.name for step in steps], restart or [])
        return _check_finished(pipeline, steps)

    done_steps = ranks.on_main(decide, "reading the pipeline state")
    progress = _Progress(len(steps), len(done_steps), show=ranks.is_main)
    try:
        for index, step in enumerate(steps):
            if step.name in done_steps:
                continue
            progress.step(step.name)
            progress.write(f"[pipeline] step {index + 1}/{len(steps)}: {step.name}")
            record = pipeline.state["steps"].setdefault(step.name, {}) if ranks.is_main else {}
            record.update(status="running", digest=_digest(step.settings()), kind=step.kind)
            record.setdefault("seconds", 0.0)
            pipeline.save_state()
            start = time.time()
            try:
                if step.every_rank:
                    entry = step.run(pipeline, progress)
                else:
                    entry = ranks.on_main(lambda step=step: step.run(pipeline, progress), f"step {step.name}")
            finally:
                record["seconds"] = record.get("seconds", 0.0) + time.time() - start
                pipeline.save_state()
            record.update(status="done", entry=entry)
            pipeline.save_state()
            if ranks.is_main:
                write_report(pipeline)
            progress.advance()
    except KeyboardInterrupt:
        progress.write(f"[pipeline] interrupted; rerun the same command to continue from {output}")
        raise
    finally:
        progress.close()

    def finish() -> dict[str, Any]:
        report = write_report(pipeline)
        write_model_cards(pipeline, report)
        return report

    return ranks.on_main(finish, "writing the report and model cards")


def _apply_restart(pipeline: Pipeline, names: list[str], restart: list[str]) -> None:
    """Forget `restart` steps and every step after the first of them; their stage folders are moved aside."""
    unknown = [name for name in restart if name not in names]
    if unknown:
        raise ValueError(f"--restart {unknown}: not steps of this pipeline ({names})")
    if not restart:
        return
    first = min(names.index(name) for name in restart)
    for name in names[first:]:
        pipeline.state["steps"].pop(name, None)
        folder = pipeline.path(name)
        if pipeline.is_main and os.path.isdir(folder) and name in STAGES:
            aside = folder + ".previous"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(folder, aside)
            logger.info("restart: moved %s aside to %s", folder, aside)
    if pipeline.is_main and os.path.isdir(pipeline.path("eval")) and "eval" in names[first:]:
        shutil.rmtree(pipeline.path("eval"))
    pipeline.save_state()


def _check_finished(pipeline: Pipeline, steps: list[PipelineStep]) -> set[str]:
    """The steps a rerun keeps; a finished step whose settings changed since is an error naming it."""
    done: set[str] = set()
    for step in steps:
        record = pipeline.state["steps"].get(step.name)
        if not record:
            continue
        if record.get("digest") != _digest(step.settings()):
            raise ValueError(f"the settings of step {step.name!r} changed since it ran in {pipeline.output}; "
                             f"rerun with --restart {step.name} to redo it (and the steps after it), or use a new "
                             "--output")
        if record.get("status") == "done":
            done.add(step.name)
    return done


__all__ = [
    "PipelineStep", "build_report", "build_steps", "evaluation_names", "load_pipeline_config", "path_component",
    "plot_loss_curves", "preset_path", "render_report_md", "run_pipeline",
]
