"""The steps of a pipeline: every training stage (`TrainStep`), then semantic IDs (`SemanticIdsStep`), then the
evaluations (`EvalStep`); each returns its report entry. `build_steps` reads them off a pipeline config."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Protocol

from ..run_config import RunConfig
from ..trainers.resume import last_complete_checkpoint
from .config import digest, references, substitute
from .report import flatten, is_number, plot_loss_curves
from .state import Pipeline, Progress, read_json


class PipelineStep(Protocol):
    """One step of a pipeline: a name (its folder and report entry), the settings fingerprinted for reruns, the stages
    it reads, whether every process of a launch runs it, and `run`, which returns its report entry."""

    name: str
    kind: str
    every_rank: bool
    parents: list[str]

    def settings(self) -> Any: ...

    def run(self, pipeline: Pipeline, progress: Progress) -> dict[str, Any] | None: ...


class TrainStep:
    """One training stage (`xray-hf train <stage>`), resumed from its last complete checkpoint: `section` is the
    pipeline's section as written (fingerprinted and reported), `run_config` the same parsed at load (trained)."""

    kind = "train"
    every_rank = True  # a Trainer runs on every process of a distributed launch

    def __init__(self, name: str, section: dict[str, Any], run_config: RunConfig):
        self.name, self.section, self.run_config = name, section, run_config
        self.parents = references(section, name)

    def settings(self) -> Any:
        return self.section

    def run(self, pipeline: Pipeline, progress: Progress) -> dict[str, Any] | None:
        from ..trainers.run import run_stage

        config: RunConfig = substitute(self.run_config, pipeline.output)  # a copy, the run directory put in
        config.training.setdefault("disable_tqdm", False)
        resume = pipeline.ranks.on_main(lambda: last_complete_checkpoint(config.output_dir), f"{self.name} (resume)")
        if resume:
            progress.write(f"[pipeline] {self.name}: resuming from {os.path.relpath(resume, pipeline.output)}")
        results = run_stage(config.stage, config, resume_from_checkpoint=resume)
        return self.entry(pipeline, results) if pipeline.is_main else None

    def entry(self, pipeline: Pipeline, results: dict[str, Any]) -> dict[str, Any]:
        folder = pipeline.path(self.name)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        metrics = {key: value for key, value in results.items() if is_number(value)}
        evaluation = {key.removeprefix("eval_"): value for key, value in (results.get("eval") or {}).items()
                      if not key.endswith(("_runtime", "_per_second"))}
        metrics.update(flatten("eval", evaluation))
        metrics.update(flatten("retention", results.get("retention") or {}))
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
        parents = pipeline_parents(pipeline, self.name)
        return {
            "stage": self.section["stage"], "checkpoint": self.name, "parents": parents,
            "parent_stages": {parent: pipeline.config["stages"][parent]["stage"] for parent in parents},
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

    def run(self, pipeline: Pipeline, progress: Progress) -> dict[str, Any] | None:
        from ..eval.options import EmbedOptions
        from ..semantic_ids import run_semantic_ids

        spec = dict(self.spec)
        model = spec.pop("model")
        if spec.get("embed") is not None:  # how the items are embedded: EmbedOptions (batch_size there is the EMA's)
            spec["embed"] = EmbedOptions(**spec["embed"])
        report = run_semantic_ids(pipeline.path(model), spec.pop("dataset"), pipeline.path(self.name), **spec)
        metrics = {"reconstruction_cosine": report["reconstruction_cosine"], "num_items": report["num_items"]}
        for level, row in enumerate(report.get("levels", [])):
            metrics.update({f"level{level}/{key}": value for key, value in row.items() if is_number(value)})
        return {"stage": self.name, "checkpoint": self.name, "parents": [model, *pipeline_parents(pipeline, model)],
                "method": report["method"], "data": [{"name": report["dataset"], "split": report["split"]}],
                "metrics": metrics, "evaluation": [], "plots": []}


EVAL_KEYS = ("model", "task", "dataset", "split")  # what names an evaluation; every other key is an option


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
            described = "_".join(f"{key}-{value if isinstance(value, (str, int, float)) else digest(value)[:8]}"
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

    def run(self, pipeline: Pipeline, progress: Progress) -> dict[str, Any] | None:
        from ..eval.options import EmbedOptions
        from ..eval.results import describe_settings
        from ..eval.run import run_eval

        results = []
        for spec, name in zip(self.runs, self.names):
            output = pipeline.path("eval", f"{name}.json")
            options = {key: value for key, value in spec.items() if key not in EVAL_KEYS}
            result = read_json(output)  # kept from before an interruption; a half-written file is redone
            if result is None:
                described = f" ({describe_settings(options)})" if options else ""
                progress.write(f"[pipeline] eval: {spec['task']} of {spec['model']} on {spec['dataset']}{described}")
                embed, rest = EmbedOptions.split(options)
                result = run_eval(pipeline.path(spec["model"]), spec["task"], spec["dataset"],
                                  split=spec.get("split", "test"), output=output, model_name=spec["model"],
                                  embed=embed, **rest)
            plots = [os.path.join("eval", plot) for plot in (result.get("plots") or {}).values()]
            results.append({"name": name, "model": spec["model"], "task": spec["task"], "dataset": spec["dataset"],
                            "split": spec.get("split", "test"), "settings": options, "metrics": result["metrics"],
                            "plots": plots})
        return {"stage": self.name, "runs": results}


def pipeline_parents(pipeline: Pipeline, name: str) -> list[str]:
    """The stages a stage starts from, nearest first (`clip` -> `hashtag`, `mae`)."""
    section = pipeline.config["stages"].get(name)
    if section is None:
        return []
    parents: list[str] = []
    for parent in references(section, name):
        for ancestor in [parent, *pipeline_parents(pipeline, parent)]:
            if ancestor not in parents:
                parents.append(ancestor)
    return parents


def build_steps(config: dict[str, Any]) -> list[PipelineStep]:
    """The pipeline's steps in order: every stage, then semantic IDs, then the evaluations."""
    steps: list[PipelineStep] = [TrainStep(name, section, config["run_configs"][name])
                                 for name, section in config["stages"].items()]
    if config.get("semantic_ids"):
        steps.append(SemanticIdsStep(config["semantic_ids"]))
    if config.get("evaluation"):
        steps.append(EvalStep(config["evaluation"]))
    return steps


__all__ = [
    "EVAL_KEYS", "EvalStep", "PipelineStep", "SemanticIdsStep", "TrainStep", "build_steps", "evaluation_names", "path_component", "pipeline_parents",
]
