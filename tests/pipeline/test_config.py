"""Pipeline configs: the shipped config layers each stage over its own config, the LLM2Vec variant resolves, and bad
configs name their problem."""

import pytest
import yaml

from xray_hf.pipeline import build_steps, load_pipeline_config, preset_path
from xray_hf.run_config import RunConfig
from xray_hf.trainers.run import load_run_config

CONFIGS = preset_path("tiny").parent


def test_shipped_pipeline_layers_each_stage_over_its_own_config():
    config = load_pipeline_config(preset_path("tiny"))
    assert list(config["stages"]) == ["mae", "hashtag", "clip", "distill", "compress"]
    for name, section in config["stages"].items():
        RunConfig.from_dict(section, name)  # the schema `xray-hf train` reads
        assert section["training"]["output_dir"] == f"{{output}}/{name}"
        base = load_run_config(CONFIGS / f"{name}_tiny.yaml")
        assert section["data"] == base["data"]  # what the pipeline does not change comes from the stage config
        assert section["training"]["max_steps"] <= base["training"]["max_steps"]
    assert config["stages"]["clip"]["model"]["vision"]["from_pretrained"] == "{output}/hashtag"
    assert config["stages"]["clip"]["model"]["text"] == load_run_config(CONFIGS / "clip_tiny.yaml")["model"]["text"]
    steps = build_steps(config)
    assert [(s.name, s.parents) for s in steps] == [
        ("mae", []), ("hashtag", ["mae"]), ("clip", ["hashtag"]), ("distill", ["clip"]), ("compress", ["clip"]),
        ("semantic_ids", ["clip"]), ("eval", ["mae", "hashtag", "clip", "distill"]),
    ]


@pytest.mark.parametrize("change, message", [
    ({"stagez": {}}, "unknown pipeline keys"),
    ({"stages": {"mea": {}}}, "stage must be one of"),
    ({"stages": {"hashtag": {"model": {"from_pretrained": "{output}/mae"}}}}, "no earlier stage writes"),
    ({"stages": {"mae": {}}, "evaluation": [{"model": "clip", "task": "zero-shot", "dataset": "mnist"}]},
     "must name a stage"),
])
def test_bad_pipeline_configs_name_the_problem(tmp_path, change, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(change))
    with pytest.raises(ValueError, match=message):
        load_pipeline_config(path)
    with pytest.raises(ValueError, match="unknown pipeline preset 'huge'.*tiny"):
        preset_path("huge")


def test_the_llm2vec_stages_slot_in_as_the_shipped_config_says(tmp_path):
    """The commented-out variant of pipeline_tiny.yaml (MNTP and SimCSE before CLIP) resolves into valid stage
    configs whose chain reaches the CLIP stage's parents."""
    text = preset_path("tiny").read_text()
    for line in ("  # mntp: {base: mntp_tiny.yaml}", '  # simcse: {base: simcse_tiny.yaml, model: {text: {from_pretrained: "{output}/mntp"}}}'):
        assert line in text
        text = text.replace(line, line.replace("# ", "", 1))
    config = yaml.safe_load(text)
    config["stages"]["clip"]["model"]["text"] = {"from_llm": None, "from_pretrained": "{output}/simcse"}
    for name in ("mntp", "simcse", "clip"):  # base: paths are relative to the pipeline file
        config["stages"][name]["base"] = str(CONFIGS / config["stages"][name]["base"])
    for name in ("mae", "hashtag", "distill", "compress"):
        config["stages"][name]["base"] = str(CONFIGS / config["stages"][name]["base"])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    resolved = load_pipeline_config(path)
    for name, section in resolved["stages"].items():
        RunConfig.from_dict(section, name)
    steps = {step.name: step.parents for step in build_steps(resolved)}
    assert list(steps)[:5] == ["mae", "hashtag", "mntp", "simcse", "clip"]
    assert steps["simcse"] == ["mntp"] and steps["clip"] == ["hashtag", "simcse"]
    assert resolved["stages"]["clip"]["model"]["text"]["config"]["adapter_depth"] == 4  # kept from clip_tiny.yaml


def test_evaluation_entries_that_repeat_each_other_are_refused(tmp_path):
    path = tmp_path / "pipeline.yaml"
    run = {"model": "mae", "task": "linear-probe", "dataset": "mnist", "split": "test"}
    path.write_text(yaml.safe_dump({"stages": {"mae": {"base": str(CONFIGS / "mae_tiny.yaml")}},
                                    "evaluation": [run, dict(run)]}))
    with pytest.raises(ValueError, match="evaluation entries 1 and 2 are the same"):
        load_pipeline_config(path)


def test_the_pipeline_seed_reaches_every_stage_over_its_base_config(tmp_path):
    """`seed: 1` at the top of a pipeline YAML seeds every stage, although each base config says `seed: 0`
    (it was silently ignored); a stage's own `seed:` still wins."""
    config = yaml.safe_load(preset_path("tiny").read_text())
    for section in config["stages"].values():
        section["base"] = str(CONFIGS / section["base"])
    config["seed"] = 1
    config["stages"]["distill"]["seed"] = 7
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    seeds = {name: section["seed"] for name, section in load_pipeline_config(path)["stages"].items()}
    assert load_run_config(CONFIGS / "mae_tiny.yaml")["seed"] == 0
    assert seeds == {"mae": 1, "hashtag": 1, "clip": 1, "distill": 7, "compress": 1}
