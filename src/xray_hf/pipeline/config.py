"""Pipeline configs: a pipeline YAML read into its stages' run configs (each stage's `base:` file layered under its
section), every section parsed once at load into a `RunConfig` (`xray_hf.run_config`), with `{output}` standing for
the run directory until the run substitutes it (in the parsed blocks too: `substitute`)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..run_config import RunConfig
from ..stages import STAGES, get_stage


PIPELINE_KEYS = ("seed", "stages", "semantic_ids", "evaluation")
RESERVED_NAMES = ("eval", "semantic_ids", "plots")  # the other steps' names and folders of a run directory


OUTPUT = "{output}"


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


def substitute(value: Any, output: str) -> Any:
    """`value` with `{output}` replaced by `output` in every string: of mappings, lists and parsed run-config blocks
    (a copy; `value` is left as it is)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: substitute(getattr(value, f.name), output)
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, str):
        return value.replace(OUTPUT, output)
    if isinstance(value, dict):
        return {key: substitute(item, output) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, output) for item in value]
    return value


def references(value: Any, own: str | None = None) -> list[str]:
    """The stage names a section reads from the run directory (`{output}/<stage>`; not its own output)."""
    text = json.dumps(value)  # in the order of the config: a stage's first parent is the one it names first
    found = re.findall(re.escape(OUTPUT) + r"/([A-Za-z0-9_-]+)", text)
    return [name for name in dict.fromkeys(found) if name != own]


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def eval_settings(run: dict[str, Any]) -> dict[str, Any]:
    """Everything an evaluation entry sets, with the default split filled in (two entries are one evaluation when
    these are equal)."""
    return {"split": "test", **run}


def section_stage(path: Path, name: str, section: dict[str, Any]) -> str:
    """The stage a section trains: its `stage:`, else its name (one stage run twice: `clip_video` says `stage: clip`).
    The name is the section's folder and step name, so it must be one safe word that no other step uses."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) or name in RESERVED_NAMES:
        raise ValueError(f"{path}: section name {name!r} must be letters, digits, '_' or '-' and none of "
                         f"{list(RESERVED_NAMES)} (it names the section's folder)")
    stage = section.get("stage", name)
    if name in STAGES and stage != name:
        raise ValueError(f"{path}: section {name!r} is named after the {name} stage but trains stage {stage!r} "
                         "(from its base: file?); give it another name")
    try:
        get_stage(stage)
    except ValueError as error:
        raise ValueError(f"{path}: section {name!r}: {error} (name a section after its stage, or give it "
                         "stage:)") from error
    return stage


def load_pipeline_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a pipeline YAML, resolve each stage's `base:` file and parse every stage section into a `RunConfig` (a
    misspelled key of the last stage fails here, before the first stage trains); `{output}` is kept.

    Returns the sections as written (`stages`: what a step's fingerprint and the report read), their parsed
    `run_configs` (what the stages run), `seed`, `semantic_ids`, `evaluation` and `path`."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a pipeline config must be a YAML mapping")
    unknown = set(raw) - set(PIPELINE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown pipeline keys {sorted(unknown)}; known: {list(PIPELINE_KEYS)}")
    if not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise ValueError(f"{path}: 'stages:' must map step names to run configs")
    stages: dict[str, dict] = {}
    for name, section in raw["stages"].items():
        section = dict(section or {})
        if "seed" in raw and "seed" not in section:  # the pipeline's seed beats its base config's, not the stage's own
            section["seed"] = raw["seed"]
        if "base" in section:
            base_path = path.parent / section.pop("base")
            with open(base_path, encoding="utf-8") as f:
                section = _merge(yaml.safe_load(f), section)
        section["stage"] = section_stage(path, name, section)
        section.setdefault("training", {})["output_dir"] = f"{OUTPUT}/{name}"
        for parent in references(section, name):
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
            if eval_settings(evaluation[other]) == eval_settings(spec):
                raise ValueError(f"evaluation entries {other + 1} and {index + 1} are the same evaluation ({spec}); "
                                 "remove one")
    run_configs: dict[str, RunConfig] = {}
    for name, section in stages.items():  # every stage's keys now, so that a typo in the last one fails at once
        try:
            run_configs[name] = RunConfig.from_dict(section, section["stage"])
        except ValueError as error:
            raise ValueError(f"{path}: stage {name!r}: {error}") from error
    return {"seed": raw.get("seed", 0), "stages": stages, "run_configs": run_configs,
            "semantic_ids": raw.get("semantic_ids"), "evaluation": evaluation, "path": str(path)}


__all__ = [
    "PIPELINE_KEYS", "RESERVED_NAMES", "digest", "eval_settings", "load_pipeline_config", "preset_path", "references",
    "section_stage", "substitute",
]
