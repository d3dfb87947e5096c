"""`RunConfig`: a whole run config, parsed once (by `xray-hf train` before its stage starts, by `xray-hf pipeline`
for every stage at load) into the typed blocks the stage's entry in `xray_hf.stages` names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..stages import Stage, get_stage
from .block import check_keys, check_value, check_values, mapping

COMMON_KEYS = ("stage", "seed", "model", "data", "training")


@dataclass
class RunConfig:
    """A parsed run config: the stage's name, its seed, its `model:` and `data:` blocks, the `training:` arguments
    (keyword arguments of the stage's `TrainingArguments` subclass, checked by name and type; the arguments object
    itself is built when the stage starts, as building it sets up the devices) and its own blocks (`extras`, an
    instance of the stage's `extras` dataclass, or None)."""

    stage: str
    model: Any
    data: Any
    training: dict[str, Any]
    seed: int = 0
    extras: Any = None

    @property
    def output_dir(self) -> str:
        return self.training["output_dir"]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], stage: str | Stage) -> RunConfig:
        """Parse a run config (a YAML mapping) for `stage`; a `ValueError` names the first problem by its key path."""
        entry = stage if isinstance(stage, Stage) else get_stage(stage)
        config = mapping(config, "")
        extras_class = entry.extras_class()
        extra_keys = [f.name for f in fields(extras_class)] if extras_class else []
        check_keys(config, [*COMMON_KEYS, *extra_keys], "", what=f"a {entry.name} run config")
        if config.get("stage", entry.name) != entry.name:
            raise ValueError(f"the run config is for stage {config['stage']!r}, not {entry.name!r}")
        check_value(config.get("seed", 0), int, "seed")
        for key in ("model", "data", "training"):
            if not isinstance(config.get(key), Mapping):
                raise ValueError(f"the run config needs a '{key}:' mapping")
        training = dict(config["training"])
        arguments = entry.arguments_class()
        check_keys(training, [f.name for f in fields(arguments) if f.init], "training", what=arguments.__name__)
        check_values(training, arguments, "training", numbers_only=True)  # TrainingArguments keeps '1e-3' as text
        if "output_dir" not in training:
            raise ValueError("training.output_dir is required")
        extras = extras_class.from_dict({k: config[k] for k in extra_keys if k in config}) if extras_class else None
        return cls(stage=entry.name, model=entry.model_class().from_dict(config["model"], "model"),
                   data=entry.data_class().from_dict(config["data"], "data"), training=training,
                   seed=config.get("seed", 0), extras=extras)


__all__ = ["COMMON_KEYS", "RunConfig"]
