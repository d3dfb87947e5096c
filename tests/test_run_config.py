"""The run-config schema (`xray_hf.run_config`): every shipped config parses, in its stage file and as a pipeline
section; a misspelled key of every block is refused by its dotted path; a pipeline with a typo in its last stage
fails at load, before anything is written."""

import copy
import re

import pytest
import yaml

from xray_hf.pipeline import load_pipeline_config, preset_path, run_pipeline
from xray_hf.run_config import RunConfig
from xray_hf.run_config.data import DataSpec, TransformSpec
from xray_hf.run_config.extras import CaptionSpec, CLIPRunExtras, DistillRunExtras, SlipSpec
from xray_hf.run_config.model import CLIPModelSpec, TextTowerSpec
from xray_hf.stages import STAGES
from xray_hf.trainers.run import load_run_config

CONFIGS = preset_path("tiny").parent


def stage_config(stage):
    return load_run_config(CONFIGS / f"{stage}_tiny.yaml")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_shipped_stage_config_parses(stage):
    config = RunConfig.from_dict(stage_config(stage), stage)
    assert config.stage == stage and config.training["output_dir"] == f"runs/tiny/{stage}"
    assert isinstance(config.model, STAGES[stage].model_class())
    assert isinstance(config.data, STAGES[stage].data_class())


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*_tiny.yaml")
                                        if not p.name.startswith("pipeline_")))
def test_every_shipped_run_config_file_parses(name):  # variants too (clip_video_warmup_tiny.yaml), by their stage:
    raw = load_run_config(CONFIGS / name)
    assert RunConfig.from_dict(raw, raw["stage"]).stage == raw["stage"]


def test_every_section_of_the_shipped_pipeline_parses():
    settings = load_pipeline_config(preset_path("tiny"))  # parses every section at load
    for name, section in settings["stages"].items():  # a section is named after its stage or names it (clip_video)
        assert section["stage"] == {"clip_video": "clip"}.get(name, name)
        RunConfig.from_dict(section, section["stage"])


def _place(config, path, key, value):
    """Set `key` in the block at the dotted `path` (`data.eval[0]`), making missing blocks."""
    block = config
    for part in path.split(".") if path else []:
        name, index = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part).groups()
        if block.get(name) is None:
            block[name] = {}
        block = block[name]
        if index is not None:
            block = block[int(index)]
    block[key] = value


BLOCKS = [
    ("mae", ""), ("mae", "model"), ("mae", "model.config"), ("mae", "data"), ("mae", "data.image"),
    ("mae", "data.video"), ("mae", "data.eval"), ("mae", "data.augment"), ("mae", "training"),
    ("hashtag", "vocabulary"), ("hashtag", "vocabulary.source"),
    ("mntp", "model"), ("mntp", "model.text"), ("mntp", "model.text.config"), ("mntp", "model.lora"), ("mntp", "data"),
    ("mntp", "data.sources[0]"),
    ("simcse", "model.text.config"),
    ("clip", "model"), ("clip", "model.vision"), ("clip", "model.vision.config"), ("clip", "model.text"),
    ("clip", "model.config"), ("clip", "captions"), ("clip", "text_cache"), ("clip", "slip"), ("clip", "data.eval[1]"),
    ("distill", "teacher"), ("distill", "teacher_cache"), ("distill", "text_cache"), ("distill", "captions"),
    ("distill", "model"), ("distill", "model.vision.config"), ("distill", "model.config"),
    ("compress", "model"), ("compress", "model.compression"), ("compress", "texts"),
]


@pytest.mark.parametrize("stage, path", BLOCKS)
def test_a_misspelled_key_of_every_block_is_refused_by_its_path(stage, path):
    config = stage_config(stage)
    _place(config, path, "colums", 1)
    dotted = f"{path}.colums" if path else "colums"
    with pytest.raises(ValueError, match=re.escape(f"unknown key {dotted!r}")):
        RunConfig.from_dict(config, stage)


@pytest.mark.parametrize("stage, path, value, message", [
    # YAML 1.1 reads 1e-3 (no dot) as text; TrainingArguments kept it and the optimizer failed many steps later
    ("clip", "training.learning_rate", "1e-3", r"training.learning_rate must be float, got str '1e-3' \(YAML reads "
                                               r"1e-3 as text, having no dot: write 1.0e-3\)"),
    ("mae", "training.max_steps", 10.5, r"training.max_steps must be int, got float 10.5"),
    ("mae", "seed", 0.5, r"seed must be int, got float 0.5"),  # was truncated to 0
    ("mae", "training.bf16", "yes", r"training.bf16 must be bool, got str 'yes'"),
    ("mae", "data.image.batch_size", "32", r"data.image.batch_size must be int, got str '32'"),  # failed in validate
    ("mae", "data.resolution", 32.5, r"data.resolution must be int or a list of int, got float 32.5"),
    ("mae", "data.augment.crop_scale", [0.5, "1"], r"data.augment.crop_scale must be a list of float or null"),
    ("clip", "captions.sentence_p", "0.3", r"captions.sentence_p must be float, got str '0.3' \(a number in quotes "
                                           r"is text: unquote it\)"),
    ("clip", "model.config", ["slip_weight"], r"model.config must be a mapping, got list"),
])
def test_a_value_of_the_wrong_type_is_refused_by_its_path(stage, path, value, message):
    config = stage_config(stage)
    *parents, key = path.split(".")
    block = config
    for parent in parents:
        block = block.setdefault(parent, {})
    block[key] = value
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(config, stage)


def test_values_that_fit_their_types_pass_as_written():
    config = stage_config("mae")
    config["training"].update(learning_rate=1, warmup_steps=0, bf16=False, report_to="none")  # an int is a float
    config["training"]["fsdp"] = True  # typed str | None by transformers, which takes a bool: left to it
    config["data"]["augment"]["crop_scale"] = [1, 1.0]
    config["data"]["resolution"] = [32, 48]
    parsed = RunConfig.from_dict(config, "mae")
    assert parsed.training["learning_rate"] == 1 and parsed.data.augment.crop_scale == [1, 1.0]
    assert parsed.data.resolution == [32, 48]


def test_config_overrides_name_settings_of_their_config_class():
    config = stage_config("clip")
    config["model"]["text"]["config"]["freeze_lm"] = True  # the example
    with pytest.raises(ValueError, match=r"unknown key 'model.text.config.freeze_lm' \(did you mean 'freeze_llm'\?\)"):
        RunConfig.from_dict(config, "clip")
    config["model"]["text"]["config"] = {"freeze_llm": False, "pooling": "mean"}  # real settings pass
    assert RunConfig.from_dict(config, "clip").model.text.config == {"freeze_llm": False, "pooling": "mean"}
    # a tower from scratch (XrayTextModel) has no LLM to freeze
    with pytest.raises(ValueError, match="unknown key 'model.text.config.freeze_llm'"):
        TextTowerSpec.from_dict({"preset": "tiny", "tokenizer": "smollm2", "config": {"freeze_llm": True}}, "model.text")
    texts = stage_config("compress")
    texts["texts"]["sentence_p"] = 0.5  # a captions: key that compress's texts: do not take
    with pytest.raises(ValueError, match="unknown key 'texts.sentence_p'"):
        RunConfig.from_dict(texts, "compress")


def test_the_dataclasses_hold_the_defaults():
    extras = CLIPRunExtras.from_dict({"captions": None, "slip": {"videos": False, "crop_scale": [0.3, 1.0]}})
    assert extras.captions == CaptionSpec() and extras.text_cache.enabled and extras.text_cache.batch_size == 64
    assert extras.slip.kwargs() == {"crop_scale": (0.3, 1.0), "blur_p": 0.5} and not extras.slip.videos
    assert SlipSpec().kwargs() == {"crop_scale": (0.08, 1.0), "blur_p": 0.5}
    distill = DistillRunExtras.from_dict({"teacher": {"from_pretrained": "x"}})
    assert distill.captions is None and not distill.teacher_cache.enabled
    data = DataSpec.from_dict({"image": {"name": "mnist"}, "augment": {"flip_p": 0.0, "image_mean": [0.5] * 3}})
    assert data.resolution == 224 and data.image.batch_size == 32 and data.eval_sets == []
    assert data.augment.kwargs() == {"flip_p": 0.0, "image_mean": [0.5] * 3}
    assert data.augment.normalization() == {"image_mean": [0.5] * 3} and TransformSpec().kwargs() == {}


@pytest.mark.parametrize("model, message", [
    ({"vision": {"preset": "tiny"}}, "model needs vision: and text: blocks"),
    ({"vision": {}, "text": {"from_llm": "minilm", "preset": "tiny"}}, "model.text needs exactly one of"),
    ({"vision": {}, "text": {"preset": "tiny"}}, "needs a tokenizer"),
    ({"vision": {"from_pretrained": "x", "config": "big"}, "text": {"from_llm": "minilm"}},
     "model.vision.config must be a mapping"),
])
def test_clip_model_blocks_name_their_problem(model, message):
    with pytest.raises(ValueError, match=message):
        CLIPModelSpec.from_dict(model, "model")


def test_a_typo_in_the_last_stage_fails_the_pipeline_at_load_before_any_stage_runs(tmp_path):
    raw = yaml.safe_load(preset_path("tiny").read_text())
    for section in raw["stages"].values():
        section["base"] = str(CONFIGS / section["base"])
    bad = copy.deepcopy(raw)
    bad["stages"]["compress"]["texts"] = {"colum": "caption"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    output = tmp_path / "run"
    with pytest.raises(ValueError, match=r"stage 'compress': unknown key 'texts.colum' \(did you mean 'column'\?\)"):
        run_pipeline(output, config=path)
    assert not output.exists()  # no stage ran, no run directory was made
