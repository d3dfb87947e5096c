"""Run configs and `xray-hf train mae|hashtag`: the shipped configs validate; a tiny MAE -> hashtag chain runs."""

import json
import os

import pytest
import yaml

from xray_hf import HashtagVocabulary, XrayVisualForHashtagClassification
from xray_hf.cli import main
from xray_hf.stages import STAGES
from xray_hf.run_config import RunConfig
from xray_hf.run_config.data import DataSpec
from xray_hf.trainers.run import load_run_config, run_stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_shipped_configs_validate(stage, tmp_path):
    config = load_run_config(os.path.join(ROOT, "configs", f"{stage}_tiny.yaml"))
    RunConfig.from_dict(config, stage)
    entry = STAGES[stage]
    args = entry.arguments_class()(**{**config["training"], "output_dir": str(tmp_path)})
    if hasattr(args, "lion_beta1"):  # the vision stages train with Lion (paper 4.5); the text stages with AdamW;
        # clip_tiny and distill_tiny with AdamW 1e-3: Lion at 3e-4 reached less recall in their short schedules
        assert args.optimizer == ("adamw" if stage in ("clip", "distill") else "lion")
        assert (args.lion_beta1, args.lion_beta2) == (0.9, 0.99)


def test_bad_run_configs():
    good = {"model": {"preset": "tiny"}, "data": {"image": {"name": "mnist"}}, "training": {"output_dir": "x"}}
    with pytest.raises(ValueError, match="stage"):
        RunConfig.from_dict(good, "segmentation")
    with pytest.raises(ValueError, match="unknown key 'optimiser'"):
        RunConfig.from_dict({**good, "optimiser": "lion"}, "mae")
    with pytest.raises(ValueError, match="not 'hashtag'"):
        RunConfig.from_dict({**good, "stage": "mae"}, "hashtag")
    with pytest.raises(ValueError, match="output_dir"):
        RunConfig.from_dict({**good, "training": {}}, "mae")
    with pytest.raises(ValueError, match="exactly one of"):
        DataSpec.from_dict({"image": {"batch_size": 4}})
    with pytest.raises(ValueError, match="unknown key 'data.image.batchsize'"):
        DataSpec.from_dict({"image": {"name": "mnist", "batchsize": 4}}, "data")
    with pytest.raises(ValueError, match="does not exist"):
        run_stage("hashtag", {**good, "model": {"from_pretrained": "/nonexistent/mae"},
                              "data": {"image": {"name": "openmoji"}}}, None)


def write(path, config):
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_cli_trains_mae_then_hashtag_from_its_checkpoint(tmp_path, capsys):
    model = {"preset": "tiny", "config": {"image_size": 16, "patch_size": 4, "num_frames": 4, "hidden_size": 32,
                                          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                                          "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1,
                                          "decoder_num_attention_heads": 2}}
    augment = {"flip_p": 0.0, "blur_p": 0.0}
    mae = {
        "stage": "mae", "seed": 0, "model": model,
        "data": {"resolution": 16, "image": {"name": "mnist", "batch_size": 8, "max_samples": 32},
                 "video": {"name": "moving-shapes", "batch_size": 4, "max_samples": 8, "num_frames": 4},
                 "eval": {"name": "mnist", "split": "validation", "max_samples": 8}, "augment": augment},
        "training": {"output_dir": "unused", "max_steps": 100, "save_steps": 2, "logging_steps": 1,
                     "eval_strategy": "steps", "eval_steps": 2,
                     "report_to": [], "disable_tqdm": True},
    }
    out = tmp_path / "mae"
    assert main(["train", "mae", "--config", write(tmp_path / "mae.yaml", mae), "--output-dir", str(out),
                 "--max-steps", "3"]) == 0
    assert "mae finished" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 3 and set(results["eval"]) == {"masked_loss", "patch_mean_loss"}
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "reconstruction.png"):
        assert (out / name).is_file(), name

    # resume the finished run's last checkpoint for one more step
    assert main(["train", "mae", "--config", str(tmp_path / "mae.yaml"), "--output-dir", str(out),
                 "--max-steps", "4", "--resume", "last"]) == 0
    assert json.loads((out / "results.json").read_text())["global_step"] == 4

    hashtag = {
        "stage": "hashtag", "seed": 0, "model": {"from_pretrained": str(out)}, "vocabulary": {"min_count": 2},
        "data": {"resolution": 16, "image": {"name": "openmoji", "batch_size": 8, "max_samples": 96},
                 "eval": {"name": "openmoji", "split": "validation", "max_samples": 48}, "augment": augment},
        "training": {"output_dir": str(tmp_path / "hashtag"), "max_steps": 2, "report_to": [], "disable_tqdm": True,
                     "hashtag_loss": "bce"},
    }
    assert main(["train", "hashtag", "--config", write(tmp_path / "hashtag.yaml", hashtag)]) == 0
    results = json.loads((tmp_path / "hashtag" / "results.json").read_text())
    assert "eval_mAP" in results["eval"] and results["vocabulary_size"] > 1
    model = XrayVisualForHashtagClassification.from_pretrained(tmp_path / "hashtag")
    assert model.config.num_labels == results["vocabulary_size"]
    vocab = HashtagVocabulary.load(tmp_path / "hashtag" / "hashtag_vocabulary.json")
    assert vocab.labels == HashtagVocabulary.from_config(model.config).labels and vocab.counts


def test_cli_reports_bad_configs(tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", {"stage": "mae", "model": {}, "data": {}, "training": {"output_dir": "x"}})
    with pytest.raises(SystemExit) as err:
        main(["train", "mae", "--config", path])
    assert err.value.code == 2 and "needs an 'image' or a 'video' source" in capsys.readouterr().err


@pytest.mark.parametrize("name,kind", [("single", "NO"), ("ddp", "MULTI_GPU"), ("fsdp2", "FSDP")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(ROOT, "configs", "accelerate", f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
