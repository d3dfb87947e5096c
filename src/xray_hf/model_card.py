"""Model cards (`README.md`) for checkpoints of the recipe, rendered with `huggingface_hub.ModelCard`.

`build_model_card(checkpoint_dir, entry, repo_id)` reads what the checkpoint directory says about itself
(`config.json`: model type and architecture; `results.json`: stage and training numbers; `eval/*.json`: results
written by `xray-hf eval`) and, when given, one entry of the pipeline's `report.json`, which adds the training
data, the parents and the evaluation. The card has Hub metadata (`library_name`, `pipeline_tag`, `license`,
tags and the evaluation as `model-index`) and a body from `model_cards/model_card.md`.

Everything that differs between checkpoints is a table in `xray_hf.model_cards` (beside the templates), keyed
by stage, architecture, data source, evaluation task or metric name; nothing here branches on a stage's name.

Checks that need no network: `check_model_card(card)` (the Hub's `/api/validate-yaml` is not called here).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import (
    eval_results_to_model_index,
    model_index_to_eval_results,
)

from .eval.results import TASKS as BENCHMARK_TASKS
from .eval.results import describe_settings
from .model_cards import (
    ARCHITECTURE_FAMILIES,
    DATA_SOURCES,
    EVAL_TASKS,
    FAMILIES,
    GENERAL_LIMITATIONS,
    METRIC_NAMES,
    PROTOCOL_NAMES,
    SETTING_METRICS,
    SMOLLM2_SHAPE,
    STAGE_CARDS,
    UNKNOWN_LICENCE,
)
from .stages import STAGES, get_stage

TEMPLATE_DIR = Path(__file__).parent / "model_cards"
CARD_TEMPLATE = TEMPLATE_DIR / "model_card.md"
LICENSE = "apache-2.0"
# `transformers`, not `xray_hf`: the Hub then shows the transformers snippet (AutoModel / pipeline, with
# `trust_remote_code=True` since config.json carries `auto_map`) and counts downloads through config.json; an
# unknown library name gets no snippet at all.
LIBRARY_NAME = "transformers"
BASE_TAGS = ("xray-visual", "vision", "video")
_CLI_TASKS = {benchmark: task for task, benchmark in BENCHMARK_TASKS.items()}  # zeroshot_retrieval -> retrieval


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _section(help_text: str) -> str | None:
    """The paper section a stage's help string cites: '(paper 4.2.1)' -> '4.2.1'."""
    match = re.search(r"\((?:paper )?(\d[\d.\-, ]*)\)\s*$", help_text)
    return match.group(1).strip() if match else None


def _is_smollm2(config: dict[str, Any]) -> bool:
    llm = config.get("llm_config") or {}
    return config.get("model_type") == "xray_llm2clip_text" and all(llm.get(k) == v for k, v in SMOLLM2_SHAPE.items())


def _architecture(config: dict[str, Any]) -> str:
    """'XrayCLIPModel (vision: hidden 64, 4 layers, patch 8 = the tiny preset; text: xray_text)'."""
    from .configuration.visual import PRESETS

    vision = config.get("vision_config", config)
    shape = {k: vision.get(k) for k in ("hidden_size", "num_hidden_layers", "patch_size")}
    parts = []
    if shape["hidden_size"] is not None:
        preset = next((name for name, preset in PRESETS.items()
                       if all(preset.get(k) == v for k, v in shape.items())), None)
        parts.append(f"vision: hidden size {shape['hidden_size']}, {shape['num_hidden_layers']} layers, patch "
                     f"{shape['patch_size']}" + (f", the `{preset}` preset's shape" if preset else ""))
    if isinstance(config.get("text_config"), dict):
        parts.append(f"text: `{config['text_config'].get('model_type')}`")
    name = ", ".join(config.get("architectures") or []) or config.get("model_type") or "unknown"
    return f"`{name}`" + (f" ({'; '.join(parts)})" if parts else "")


def _eval_results_beside(checkpoint_dir: str) -> list[dict[str, Any]]:
    """`xray-hf eval` results for this checkpoint: every JSON in `<checkpoint>/eval/`, and those in the sibling
    `eval/` folder (the pipeline's output layout) whose `model` is this checkpoint."""
    from .eval.results import validate_result

    here = os.path.realpath(checkpoint_dir)
    parent = os.path.dirname(here)
    found = []
    candidates = [(p, True) for p in sorted(glob.glob(os.path.join(here, "eval", "*.json")))]
    candidates += [(p, False) for p in sorted(glob.glob(os.path.join(parent, "eval", "*.json")))]
    for path, inside in candidates:
        try:
            result = _read_json(path)
            validate_result(result)
        except ValueError:
            continue  # not an evaluation result (or not JSON)
        models = {os.path.realpath(os.path.join(root, str(result.get(key, ""))))
                  for key in ("model", "pretrained") for root in (os.getcwd(), parent)}
        if inside or here in models:
            found.append(result)
    return [{"task": _CLI_TASKS.get(r["task"], r["task"]), "dataset": r["dataset"], "split": r.get("split", "test"),
             "metrics": r["metrics"]} for r in found]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numbers and strings of a nested dict (`results.json`: `eval`, the compression `retention`), keyed by
    their path: {"retention": {"openmoji": {"int8": {"relative_acc1": 0.98}}}} -> {"retention/openmoji/int8/..."}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def _metric_name(key: str) -> str:
    for pattern, name in METRIC_NAMES:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            return name.format(**groups) + PROTOCOL_NAMES.get(groups.get("protocol"), "")
    return key


def _evaluation(items: list[Any]) -> tuple[list[EvalResult], list[dict], list[str]]:
    """EvalResults, body rows and notes for the evaluation list of a report entry (checked)."""
    if not isinstance(items, list):
        raise ValueError(f"entry['evaluation'] must be a list, got {type(items).__name__}")
    prepared, notes = [], []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"evaluation {index} must be an object, got {type(item).__name__}")
        task = _CLI_TASKS.get(item.get("task"), item.get("task"))  # CLIP_benchmark's names too
        if task not in EVAL_TASKS:
            raise ValueError(f"evaluation {index}: unknown task {item.get('task')!r}; choose one of {sorted(EVAL_TASKS)}")
        if not item.get("dataset"):
            raise ValueError(f"evaluation {index} ({task}) names no dataset")
        metrics = item.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise ValueError(f"evaluation {index} ({task} on {item['dataset']}) has no metrics: a non-empty "
                             "dict of metric name -> number is needed")
        for key, value in metrics.items():
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"evaluation {index} ({task} on {item['dataset']}): metric {key!r} must be a "
                                 f"number, got {value!r}")
        settings = item.get("settings") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"evaluation {index} ({task} on {item['dataset']}): settings must be a mapping of its "
                             f"options, got {settings!r}")
        source = DATA_SOURCES.get(item["dataset"])
        hub_type = EVAL_TASKS[task].hub_types[source.modality if source else "image"]
        prepared.append((task, str(item["dataset"]), str(item.get("split") or "test"), hub_type, metrics, source,
                         describe_settings(settings)))
    # The Hub groups results by (task type, dataset, split): protocols that share one get one joint task name.
    group_names: dict[tuple, list[str]] = {}
    for task, dataset, split, hub_type, _, _, _ in prepared:
        names = group_names.setdefault((hub_type, dataset, split), [])
        if EVAL_TASKS[task].name not in names:
            names.append(EVAL_TASKS[task].name)
    results, rows, seen = [], [], {}
    for task, dataset, split, hub_type, metrics, source, options in prepared:
        # evaluations of one dataset with different options (templates, frames, feature, ...) are separate results:
        # the options are the metric's `config` in model-index and follow its name
        key, where = (hub_type, dataset, split), ", ".join(part for part in (split, options) if part)
        suffix = f" ({options})" if options else ""
        for metric, value in metrics.items():
            if metric in SETTING_METRICS or value is None or not math.isfinite(value):
                if metric in SETTING_METRICS:
                    notes.append(f"{EVAL_TASKS[task].name} on {dataset} ({where}): `{metric}` = {value!r}, the "
                                 f"{SETTING_METRICS[metric]} (a setting, not a score).")
                else:
                    notes.append(f"{EVAL_TASKS[task].name} on {dataset} ({where}): `{metric}` is undefined "
                                 "(e.g. top-5 accuracy with fewer than 5 classes) and left out.")
                continue
            if (key, options, metric) in seen and seen[key, options, metric] != value:
                raise ValueError(f"two evaluations report {metric!r} for {dataset} ({where}) as {hub_type} with "
                                 f"different values ({seen[key, options, metric]} and {value})")
            if (key, options, metric) in seen:
                continue
            seen[key, options, metric] = value
            results.append(EvalResult(
                task_type=hub_type, task_name="; ".join(group_names[key]), dataset_type=dataset,
                dataset_name=source.title if source else dataset, dataset_split=split, metric_type=metric,
                metric_name=_metric_name(metric) + suffix, metric_config=options or None, metric_value=value,
            ))
            rows.append({"task": EVAL_TASKS[task].name, "dataset": dataset, "split": split,
                         "metric": _metric_name(metric) + suffix, "type": metric, "value": repr(value)})
    return results, rows, notes


def _data_rows(entry_data: list[Any], text_base: bool) -> tuple[list[dict], list[str]]:
    """Training-data rows with licences, and the licence notes they call for."""
    if not isinstance(entry_data, list):
        raise ValueError(f"entry['data'] must be a list of {{name, split}}, got {type(entry_data).__name__}")
    items = [{"name": d} if isinstance(d, str) else d for d in entry_data]
    if text_base and not any(item.get("name") == "smollm2" for item in items):
        items.append({"name": "smollm2", "role": "text tower weights (LLM2CLIP base)"})
    rows, share_alike = [], []
    for item in items:
        if not isinstance(item, dict) or not item.get("name"):
            raise ValueError(f"each entry['data'] item needs a name, got {item!r}")
        source = DATA_SOURCES.get(item["name"])
        rows.append({"name": item["name"], "split": item.get("split"),
                     "role": item.get("role") or ("text tower weights" if source and source.modality == "text"
                                                  else "training data"),
                     "title": source.title if source else item["name"],
                     "licence": source.licence if source else UNKNOWN_LICENCE,
                     "url": source.url if source else "-"})
        if source and source.share_alike and source.title not in share_alike:
            share_alike.append(f"{source.title} ({source.licence})")
    notes = []
    if share_alike:
        notes.append(
            "The weights are released under Apache-2.0 and were trained on share-alike data: "
            + ", ".join(share_alike) + ". Whether trained weights are an adaptation of their training data is not "
            "settled; if you redistribute them, credit these sources and check their licence terms."
        )
    if any(row["licence"] == UNKNOWN_LICENCE for row in rows):
        notes.append(f"Sources marked \"{UNKNOWN_LICENCE}\" are not in this package's table of known data sets.")
    return rows, notes


def build_model_card(checkpoint_dir: str, entry: dict | None = None, repo_id: str | None = None) -> ModelCard:
    """The model card of a checkpoint directory.

    Args:
        checkpoint_dir: a directory written by `xray-hf train` or `xray-hf pipeline` (`config.json`,
            `results.json`, optional `eval/*.json`).
        entry: the checkpoint's entry of the pipeline's `report.json` (stage, parents, data, metrics,
            evaluation, plots); without it, what the directory records is used.
        repo_id: the Hub repository the card is for: names the model and the loading snippets.

    Raises:
        `ValueError` for an unknown stage, an entry without a stage (and no `results.json` naming one), or an
        evaluation without metrics; `FileNotFoundError` if `checkpoint_dir` does not exist.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"checkpoint directory {checkpoint_dir!r} does not exist")
    if entry is not None and not isinstance(entry, dict):
        raise ValueError(f"entry must be a report.json entry (a dict), got {type(entry).__name__}")
    entry = entry or {}
    config = _read_json(os.path.join(checkpoint_dir, "config.json")) or {}
    results = _read_json(os.path.join(checkpoint_dir, "results.json")) or {}
    stage_name = entry.get("stage") or results.get("stage")
    if not stage_name:
        raise ValueError(f"no stage: pass a report entry with 'stage', or a checkpoint whose results.json names it "
                         f"({checkpoint_dir!r} has none)")
    stage = get_stage(stage_name)  # ValueError naming the known stages
    stage_card = STAGE_CARDS[stage.name]
    architectures = entry.get("architectures") or config.get("architectures") or []
    config.setdefault("architectures", architectures)
    family_name = next((ARCHITECTURE_FAMILIES[a] for a in architectures if a in ARCHITECTURE_FAMILIES),
                       stage_card.family)
    family = FAMILIES[family_name]
    model_name = repo_id or f"xray-visual-{stage.name}-{os.path.basename(os.path.abspath(checkpoint_dir))}"
    model_id = repo_id or checkpoint_dir

    parents = entry.get("parents")
    if parents is None:  # the recipe's chain of `previous` stages
        parents, previous = [], stage.previous
        while previous:
            parents.append(previous)
            previous = STAGES[previous].previous
    kinds = entry.get("parent_stages") or {}  # a pipeline section's stage, where its name is not the stage's
    parent_rows = []
    for parent in reversed(list(parents)):
        kind = kinds.get(parent, parent)
        parent_rows.append({"name": parent, "help": STAGES[kind].help if kind in STAGES
                            else "a checkpoint outside the stage table"})

    text_config = config.get("text_config") if family_name == "clip" else config
    data, licence_notes = _data_rows(entry.get("data") or [], _is_smollm2(text_config or {}))
    # an entry without evaluation (or an empty list, as the pipeline writes before its eval step): look beside
    evaluation_items = entry.get("evaluation") or _eval_results_beside(checkpoint_dir)
    eval_results, eval_rows, eval_notes = _evaluation(evaluation_items)

    training = {"status": entry.get("status"), "seconds": entry.get("seconds")}
    training.update(_flatten({k: v for k, v in results.items() if k not in ("stage", "log_history")}))
    training.update({k: v for k, v in (entry.get("metrics") or {}).items() if isinstance(v, (int, float, str))})
    training_rows = [{"name": k, "value": v} for k, v in training.items() if v is not None]

    plots = [name for name in stage.artifacts if name.endswith(".png")
             and os.path.isfile(os.path.join(checkpoint_dir, name))]
    for plot in entry.get("plots") or []:  # only what is inside the checkpoint (and so uploaded with it)
        if os.path.isfile(os.path.join(checkpoint_dir, plot)) and plot not in plots:
            plots.append(plot)

    limitations = list(GENERAL_LIMITATIONS)
    if stage_card.limitation:
        limitations.insert(0, stage_card.limitation)
    card_data = ModelCardData(
        library_name=LIBRARY_NAME, license=LICENSE, pipeline_tag=family.pipeline_tag, language=family.language,
        tags=[*BASE_TAGS, stage.name], model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    template_vars = {
        "title": repo_id or f"Xray-Visual `{stage.name}` checkpoint", "model_id": model_id, "stage": stage.name,
        "stage_help": stage.help, "section": _section(stage.help), "summary": family.summary,
        "intended_use": family.intended_use, "role": stage_card.role, "parents": parent_rows,
        "architecture": _architecture(config), "data": data, "licence_notes": licence_notes,
        "evaluation": eval_rows, "evaluation_notes": eval_notes, "training": training_rows, "plots": plots,
        "limitations": limitations,
    }
    usage = jinja2.Template((TEMPLATE_DIR / family.usage).read_text(encoding="utf-8"))
    template_vars["usage"] = "\n\n".join(filter(None, [usage.render(**template_vars).strip(), stage_card.usage_note]))
    return ModelCard.from_template(card_data, template_path=str(CARD_TEMPLATE), **template_vars)


def write_model_card(checkpoint_dir: str, entry: dict | None = None, repo_id: str | None = None) -> str:
    """Build the card (`build_model_card`), check it offline (`check_model_card`) and write it to
    `<checkpoint_dir>/README.md`; returns that path."""
    card = build_model_card(checkpoint_dir, entry, repo_id)
    check_model_card(card)
    path = os.path.join(os.fspath(checkpoint_dir), "README.md")
    card.save(path)
    return path


def check_model_card(card: ModelCard) -> None:
    """Offline checks of a card's metadata (what the Hub's `/api/validate-yaml` would refuse, as far as it can be
    known locally): the YAML block parses to a dict, re-parses into `ModelCardData` unchanged, names a licence,
    library and pipeline tag, and its `model-index` round-trips with finite numeric values."""
    text = str(card)
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        raise ValueError("the card has no YAML metadata block")
    metadata = yaml.safe_load(match.group(1))
    if not isinstance(metadata, dict):
        raise ValueError("the card's metadata must be a YAML mapping")
    for key in ("license", "library_name", "pipeline_tag", "tags"):
        if not metadata.get(key):
            raise ValueError(f"the card's metadata has no {key!r}")
    if "model-index" in metadata:
        name, results = model_index_to_eval_results(metadata["model-index"])
        if eval_results_to_model_index(name, results) != metadata["model-index"]:
            raise ValueError("the card's model-index does not round-trip through EvalResult")
        for result in results:
            value = result.metric_value
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"model-index metric {result.metric_type!r} has a non-numeric value {value!r}")
    if ModelCardData(**metadata).to_dict() != card.data.to_dict():
        raise ValueError("the card's metadata does not re-parse to the same ModelCardData")


__all__ = [
    "ARCHITECTURE_FAMILIES", "DATA_SOURCES", "EVAL_TASKS", "FAMILIES", "STAGE_CARDS", "build_model_card",
    "check_model_card", "write_model_card",
]
