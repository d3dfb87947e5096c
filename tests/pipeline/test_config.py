"""Pipeline configs: the shipped config layers each stage over its own config, the LLM2Vec variant resolves, and bad
configs name their problem."""

import pytest
import yaml

from xray_hf.pipeline import build_steps, load_pipeline_config, preset_path
from xray_hf.pipeline.config import substitute
from xray_hf.run_config import RunConfig
from xray_hf.trainers.run import load_run_config, run_stage

CONFIGS = preset_path("tiny").parent


def test_shipped_pipeline_layers_each_stage_over_its_own_config():
    config = load_pipeline_config(preset_path("tiny"))
    assert list(config["stages"]) == ["mae", "hashtag", "clip_video", "clip", "distill", "compress"]
    bases = {"clip_video": "clip_video_warmup_tiny.yaml"}
    for name, section in config["stages"].items():
        RunConfig.from_dict(section, section["stage"])  # the schema `xray-hf train` reads
        assert section["training"]["output_dir"] == f"{{output}}/{name}"
        base = load_run_config(CONFIGS / bases.get(name, f"{name}_tiny.yaml"))
        assert section["stage"] == base["stage"]
        assert section["data"] == base["data"]  # what the pipeline does not change comes from the stage config
        assert section["training"]["max_steps"] <= base["training"]["max_steps"]
    # the video warm-up trains from random init; the mixed CLIP stage continues its whole model
    assert config["stages"]["clip_video"]["model"] == load_run_config(CONFIGS / bases["clip_video"])["model"]
    assert config["stages"]["clip"]["model"]["from_pretrained"] == "{output}/clip_video"
    assert config["stages"]["clip"]["model"]["vision"] is None and config["stages"]["clip"]["model"]["text"] is None
    steps = build_steps(config)
    assert [(s.name, s.parents) for s in steps] == [
        ("mae", []), ("hashtag", ["mae"]), ("clip_video", []), ("clip", ["clip_video"]), ("distill", ["clip"]),
        ("compress", ["clip"]), ("semantic_ids", ["clip"]), ("eval", ["mae", "hashtag", "clip", "distill"]),
    ]


def test_the_run_directory_is_substituted_into_the_parsed_run_configs():
    """The pipeline parses each section once at load, `{output}` kept; the run puts its directory into a copy of the
    parsed blocks (nested blocks, lists of blocks and `training:` included) and leaves the loaded config as it was."""
    config = load_pipeline_config(preset_path("tiny"))
    loaded = config["run_configs"]["distill"]
    assert loaded.extras.teacher.from_pretrained == "{output}/clip"
    resolved = substitute(loaded, "/runs/a")
    assert type(resolved) is RunConfig and type(resolved.extras.teacher) is type(loaded.extras.teacher)
    assert resolved.extras.teacher.from_pretrained == "/runs/a/clip"
    assert resolved.output_dir == "/runs/a/distill" and resolved.training["max_steps"] == loaded.training["max_steps"]
    assert resolved.data.eval_sets == loaded.data.eval_sets
    assert loaded.extras.teacher.from_pretrained == "{output}/clip" and loaded.output_dir == "{output}/distill"
    clip = substitute(config["run_configs"]["clip"], "/runs/a")
    assert clip.model.from_pretrained == "/runs/a/clip_video" and clip.model.vision is None


def test_run_stage_refuses_a_run_config_of_another_stage():
    config = load_pipeline_config(preset_path("tiny"))["run_configs"]["mae"]
    with pytest.raises(ValueError, match=r"run_stage\('clip'\) got a run config of stage 'mae'"):
        run_stage("clip", config)


def test_a_clip_model_from_a_checkpoint_refuses_tower_blocks_it_would_ignore():
    clip = load_run_config(CONFIGS / "clip_tiny.yaml")
    clip["model"]["from_pretrained"] = "runs/tiny/clip_video"
    with pytest.raises(ValueError, match=r"model.from_pretrained .*model.vision and model.text: drop them"):
        RunConfig.from_dict(clip, "clip")
    clip["model"].update(vision=None, text=None)
    assert RunConfig.from_dict(clip, "clip").model.from_pretrained == "runs/tiny/clip_video"


@pytest.mark.parametrize("change, message", [
    ({"stagez": {}}, "unknown pipeline keys"),
    ({"stages": {"mea": {}}}, "stage must be one of"),
    ({"stages": {"warmup": {"stage": "clipp"}}}, "section 'warmup': .*got 'clipp'"),
    ({"stages": {"distill": {"stage": "clip"}}}, "named after the distill stage but trains stage 'clip'"),
    ({"stages": {"eval": {"stage": "clip"}}}, "section name 'eval' must be"),
    ({"stages": {"clip.v2": {"stage": "clip"}}}, "section name 'clip.v2' must be"),
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
    config["stages"]["clip_video"]["model"] = {"text": {"from_llm": None, "from_pretrained": "{output}/simcse"}}
    for section in config["stages"].values():  # base: paths are relative to the pipeline file
        section["base"] = str(CONFIGS / section["base"])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    resolved = load_pipeline_config(path)
    for name, section in resolved["stages"].items():
        RunConfig.from_dict(section, section["stage"])
    steps = {step.name: step.parents for step in build_steps(resolved)}
    assert list(steps)[:6] == ["mae", "hashtag", "mntp", "simcse", "clip_video", "clip"]
    assert steps["simcse"] == ["mntp"] and steps["clip_video"] == ["simcse"] and steps["clip"] == ["clip_video"]
    text = resolved["stages"]["clip_video"]["model"]["text"]
    assert text["from_pretrained"] == "{output}/simcse" and text["config"]["adapter_depth"] == 4  # from the base file


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
    assert seeds == {"mae": 1, "hashtag": 1, "clip_video": 1, "clip": 1, "distill": 7, "compress": 1}
