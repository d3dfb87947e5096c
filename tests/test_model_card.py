"""Model cards: metadata (pipeline tag, library, licence, tags, model-index) and body, checked offline."""

import copy
import json
import math
import os
import shutil

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData, repocard_data
from huggingface_hub.repocard_data import (
    eval_results_to_model_index,
    model_index_to_eval_results,
)

from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XrayLLM2CLIPTextConfig,
    XrayTextConfig,
    XrayVisualConfig,
    XrayVisualForPreTraining,
)
from xray_hf.eval.results import make_result, write_result
from xray_hf.model_card import (
    STAGE_CARDS,
    build_model_card,
    check_model_card,
    write_model_card,
)
from xray_hf.stages import STAGES

CLIP_ENTRY = {
    "stage": "clip", "checkpoint": "clip", "parents": ["hashtag", "mae"], "status": "done", "seconds": 123.4,
    "model_type": "xray_clip", "architectures": ["XrayCLIPModel"],
    "data": [{"name": "openmoji", "split": "train"}, {"name": "moving-shapes", "split": "train"}],
    "metrics": {"train_loss": 2.1, "global_step": 300, "eval/openmoji_validation_image_retrieval_recall@1": 0.12},
    "evaluation": [
        {"task": "zero-shot", "dataset": "moving-shapes", "split": "test",
         "metrics": {"acc1": 0.41, "acc5": 0.9, "mean_per_class_recall": 0.4}},
        {"task": "retrieval", "dataset": "openmoji", "split": "test",
         "metrics": {"image_retrieval_recall@1": 0.1, "image_retrieval_recall@5": 0.3, "text_retrieval_recall@1": 0.12,
                     "image_retrieval_mean_rank": 7.25}},
        {"task": "linear-probe", "dataset": "mnist", "split": "test", "metrics": {"acc1": 0.8}},
    ],
    "plots": ["plots/clip_loss.png", "eval/clip_zero-shot_moving-shapes.png"],
}
# (task, dataset, split) -> the Hub task type the card must file it under
CLIP_TASK_TYPES = {
    ("zero-shot", "moving-shapes", "test"): "video-classification",  # moving-shapes are clips
    ("retrieval", "openmoji", "test"): "zero-shot-image-classification",
    ("linear-probe", "mnist", "test"): "image-classification",
}
BACKBONE_ENTRY = {
    "stage": "mae", "checkpoint": "mae", "parents": [], "status": "done", "seconds": 40.0,
    "model_type": "xray_visual", "architectures": ["XrayVisualForPreTraining"],
    "data": [{"name": "mnist", "split": "train"}, {"name": "moving-shapes", "split": "train"}],
    "metrics": {"train_loss": 0.9, "global_step": 100},
    "evaluation": [
        {"task": "linear-probe", "dataset": "fashion-mnist", "split": "test",
         "metrics": {"lp_acc1": 0.7, "lp_acc5": 0.95, "lp_mean_per_class_recall": 0.69, "lp_C": 1.0,
                     "lp_val_acc1": 0.71, "knn_acc1": 0.65, "knn_acc5": 0.9, "knn_mean_per_class_recall": 0.64}},
        {"task": "knn", "dataset": "moving-shapes", "split": "validation",
         "metrics": {"knn_acc1": 0.5, "knn_acc5": float("nan"), "knn_mean_per_class_recall": 0.45}},
    ],
    "plots": [],
}
BACKBONE_TASK_TYPES = {
    ("linear-probe", "fashion-mnist", "test"): "image-classification",
    ("knn", "moving-shapes", "validation"): "video-classification",
}
LICENCES = {"openmoji": "CC BY-SA 4.0", "moving-shapes": "Apache-2.0", "mnist": "CC BY-SA 3.0"}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    text = XrayTextConfig.from_preset("tiny", vocab_size=100, projection_dim=16, max_position_embeddings=16)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16,
                            slip_hidden_size=32, slip_projection_dim=8)
    path = tmp_path_factory.mktemp("clip")
    XrayCLIPModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mae")
    XrayVisualForPreTraining(XrayVisualConfig.from_preset("tiny")).save_pretrained(path)
    with open(path / "results.json", "w") as f:
        json.dump({"stage": "mae", "train_loss": 0.9, "global_step": 100, "log_history": [{"loss": 1.0}]}, f)
    return str(path)


def metadata_of(path: str) -> dict:
    with open(path, encoding="utf-8") as file:
        text = file.read()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def expected_results(entry: dict, task_types: dict) -> dict:
    """(hub task type, dataset, split, metric) -> value for every finite score of the entry (lp_C is a setting)."""
    expected = {}
    for item in entry["evaluation"]:
        hub_type = task_types[item["task"], item["dataset"], item["split"]]
        for metric, value in item["metrics"].items():
            if metric != "lp_C" and math.isfinite(value):
                expected[hub_type, item["dataset"], item["split"], metric] = value
    return expected


@pytest.mark.parametrize("family", ["clip", "backbone"])
def test_written_card_reads_back_with_the_hub_metadata(family, clip_dir, backbone_dir):
    directory, entry = (clip_dir, CLIP_ENTRY) if family == "clip" else (backbone_dir, BACKBONE_ENTRY)
    path = write_model_card(directory, copy.deepcopy(entry), repo_id=f"me/xray-{entry['stage']}")
    assert path == os.path.join(directory, "README.md")
    data = ModelCard.load(path).data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == ("zero-shot-image-classification" if family == "clip" else "image-feature-extraction")
    assert data["tags"] == ["xray-visual", "vision", "video", entry["stage"]]
    assert data["model-index"][0]["name"] == f"me/xray-{entry['stage']}"


@pytest.mark.parametrize("family", ["clip", "backbone"])
def test_eval_results_are_the_entry_numbers(family, clip_dir, backbone_dir):
    directory, entry, task_types = ((clip_dir, CLIP_ENTRY, CLIP_TASK_TYPES) if family == "clip"
                                    else (backbone_dir, BACKBONE_ENTRY, BACKBONE_TASK_TYPES))
    card = ModelCard.load(write_model_card(directory, copy.deepcopy(entry)))
    got = {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert len(got) == len(card.data.eval_results)  # no metric twice
    assert got == expected_results(entry, task_types)
    names = {(r.dataset_type, r.dataset_split): r.task_name for r in card.data.eval_results}
    task_names = {"zero-shot": "Zero-shot classification", "retrieval": "Zero-shot image-text retrieval",
                  "linear-probe": "Linear probe", "knn": "kNN"}
    for item in entry["evaluation"]:
        assert task_names[item["task"]] in names[item["dataset"], item["split"]]


@pytest.mark.parametrize("family", ["clip", "backbone"])
def test_metadata_validates_offline(family, clip_dir, backbone_dir, monkeypatch):
    directory, entry = (clip_dir, CLIP_ENTRY) if family == "clip" else (backbone_dir, BACKBONE_ENTRY)
    metadata = metadata_of(write_model_card(directory, copy.deepcopy(entry)))
    warnings = []
    monkeypatch.setattr(repocard_data.logger, "warning", lambda *a, **k: warnings.append(a))
    parsed = ModelCardData(**metadata)  # raises on a model-index it cannot parse
    assert warnings == []
    assert parsed.to_dict() == metadata
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert eval_results_to_model_index(name, results) == metadata["model-index"]
    for result in metadata["model-index"][0]["results"]:
        assert set(result) == {"task", "dataset", "metrics"}
        assert {"type", "name"} <= set(result["task"]) and {"type", "name", "split"} <= set(result["dataset"])
        for metric in result["metrics"]:
            assert isinstance(metric["value"], float) and math.isfinite(metric["value"])


@pytest.mark.parametrize("family", ["clip", "backbone"])
def test_body_names_parents_data_licences_and_the_metadata_numbers(family, clip_dir, backbone_dir):
    directory, entry = (clip_dir, CLIP_ENTRY) if family == "clip" else (backbone_dir, BACKBONE_ENTRY)
    card = ModelCard.load(write_model_card(directory, copy.deepcopy(entry)))
    body = card.text
    for parent in entry["parents"]:
        assert f"`{parent}` ({STAGES[parent].help})" in body
    if not entry["parents"]:
        assert "random initialisation" in body
    assert STAGES[entry["stage"]].help in body
    for item in entry["data"]:
        row = next(line for line in body.splitlines() if f"(`{item['name']}`" in line)
        assert LICENCES[item["name"]] in row
    table = [line for line in body.splitlines() if line.startswith("| ") and line.count("|") == 7]
    for result in card.data.eval_results:
        assert any(f"| {result.dataset_type} | {result.dataset_split} | {result.metric_name} | `{result.metric_type}` "
                   f"| {result.metric_value!r} |" in line for line in table), result
    assert len(table) - 1 == len(card.data.eval_results)  # header + one row per metric
    assert "## Limitations and biases" in body and "low-resolution" in body and "demonstrations" in body


def test_clip_body_shows_the_clip_snippets_and_the_share_alike_note(clip_dir):
    body = build_model_card(clip_dir, copy.deepcopy(CLIP_ENTRY), repo_id="me/x").text
    for snippet in ("AutoModel.from_pretrained(\"me/x\")", "AutoProcessor.from_pretrained(\"me/x\")",
                    "trust_remote_code=True", "get_image_features", "get_video_features", "get_text_features",
                    'pipeline("zero-shot-image-classification", model="me/x")'):
        assert snippet in body
    assert "trained on share-alike data: OpenMoji" in body
    assert "`lp_C`" not in body


def test_backbone_body_shows_the_feature_extraction_snippet_and_the_settings(backbone_dir):
    body = build_model_card(backbone_dir, copy.deepcopy(BACKBONE_ENTRY)).text
    assert f'pipeline("image-feature-extraction", model="{backbone_dir}")' in body
    assert "trust_remote_code=True" in body and "zero-shot-image-classification" not in body
    assert "`lp_C` = 1.0" in body  # a setting: in the body, not in the model-index
    assert "`knn_acc5` is undefined" in body
    assert "MAE features are not aligned with text" in body  # the stage's own limitation
    assert "the `tiny` preset's shape" in body


def test_without_entry_a_checkpoint_with_only_results_json(tmp_path):
    with open(tmp_path / "results.json", "w") as f:
        json.dump({"stage": "hashtag", "train_loss": 1.25, "global_step": 10, "vocabulary_size": 40,
                   "eval": {"eval_loss": 0.5}, "log_history": [{"loss": 3.0}],
                   "retention": {"openmoji": {"int8": {"relative_acc1": 0.98}}}}, f)
    path = write_model_card(str(tmp_path))
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-feature-extraction" and "hashtag" in data["tags"]
    assert "model-index" not in data
    assert f"`mae` ({STAGES['mae'].help})" in card.text  # the recipe's previous stage
    for row in ("| `train_loss` | 1.25 |", "| `global_step` | 10 |", "| `eval/eval_loss` | 0.5 |",
                "| `retention/openmoji/int8/relative_acc1` | 0.98 |"):
        assert row in card.text
    assert "not recorded with this checkpoint" in card.text and "log_history" not in card.text
    check_model_card(card)


def test_without_entry_eval_results_beside_the_checkpoint_become_the_model_index(tmp_path, backbone_dir):
    output = tmp_path / "run"
    checkpoint = output / "mae"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "results.json"):
        shutil.copy(os.path.join(backbone_dir, name), checkpoint / name)
    write_result(checkpoint / "eval" / "probe.json", make_result(
        "mnist", str(checkpoint), "linear-probe", {"lp_acc1": 0.5, "knn_acc1": 0.4}, split="test"))
    write_result(output / "eval" / "mine.json", make_result(
        "fashion-mnist", str(checkpoint), "zero-shot", {"acc1": 0.3}, split="test"))
    write_result(output / "eval" / "other.json", make_result(
        "openmoji", str(output / "clip"), "retrieval", {"image_retrieval_recall@1": 0.2}, split="test"))
    (output / "eval" / "notes.json").write_text('{"not": "a result"}')
    (output / "eval" / "broken.json").write_text("{")
    # the pipeline's layout: <output>/eval/<stage>_<task>_<dataset>_<split>.json naming the model by stage name
    write_result(output / "eval" / "mae_knn_photos_test.json", make_result(
        "photos", "mae", "knn", {"knn_acc1": 0.25}, split="test"))
    for entry in (None, {"stage": "mae", "evaluation": []}):  # an empty evaluation list: look beside too
        card = ModelCard.load(write_model_card(str(checkpoint), entry))
        got = {(r.task_type, r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
        assert got == {
            ("image-classification", "mnist", "lp_acc1"): 0.5, ("image-classification", "mnist", "knn_acc1"): 0.4,
            ("zero-shot-image-classification", "fashion-mnist", "acc1"): 0.3,
            ("image-classification", "photos", "knn_acc1"): 0.25,
        }


def test_a_distilled_clip_student_gets_the_clip_card(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"stage": "distill"}))
    entry = {"stage": "distill", "architectures": ["XrayCLIPModel"], "data": [{"name": "openmoji"}]}
    assert build_model_card(str(tmp_path), entry).data.pipeline_tag == "zero-shot-image-classification"
    entry["architectures"] = ["XrayVisualForDistillation"]
    assert build_model_card(str(tmp_path), entry).data.pipeline_tag == "image-feature-extraction"


def test_llm2clip_tower_on_smollm2_and_unknown_sources_are_listed_with_their_licence(tmp_path):
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=XrayLLM2CLIPTextConfig(),
                            projection_dim=XrayLLM2CLIPTextConfig().projection_dim)
    config.architectures = ["XrayCLIPModel"]
    config.save_pretrained(tmp_path)  # the default LLM2CLIP tower has SmolLM2-135M's shape
    body = build_model_card(str(tmp_path), {"stage": "clip", "data": [{"name": "my-photos", "split": "train"}]}).text
    smollm2 = next(line for line in body.splitlines() if "SmolLM2-135M-Instruct" in line)
    assert "Apache-2.0" in smollm2 and "text tower weights" in smollm2
    mine = next(line for line in body.splitlines() if "(`my-photos`" in line)
    assert "licence: unknown, check the source" in mine


def test_protocols_sharing_a_hub_result_get_a_joint_task_name_and_must_agree(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"stage": "mae"}))
    evaluation = [{"task": "linear-probe", "dataset": "mnist", "split": "test", "metrics": {"lp_acc1": 0.8, "knn_acc1": 0.6}},
                  {"task": "knn", "dataset": "mnist", "split": "test", "metrics": {"knn_acc1": 0.6}}]
    card = build_model_card(str(tmp_path), {"stage": "mae", "evaluation": evaluation})
    assert {r.metric_type for r in card.data.eval_results} == {"lp_acc1", "knn_acc1"}
    assert {r.task_name for r in card.data.eval_results} == {"Linear probe (and kNN) on frozen features; kNN on frozen features"}
    evaluation[1]["metrics"]["knn_acc1"] = 0.7
    with pytest.raises(ValueError, match="knn_acc1.*different values"):
        build_model_card(str(tmp_path), {"stage": "mae", "evaluation": evaluation})


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"stage": "jepa"}, "stage must be one of"),
        ({"data": []}, "no stage"),
        ({"stage": "clip", "evaluation": [{"task": "zero-shot", "dataset": "mnist", "split": "test"}]}, "has no metrics"),
        ({"stage": "clip", "evaluation": [{"task": "zero-shot", "dataset": "mnist", "metrics": {}}]}, "has no metrics"),
        ({"stage": "clip", "evaluation": [{"task": "captioning", "dataset": "mnist", "metrics": {"acc1": 1.0}}]},
         "unknown task 'captioning'"),
        ({"stage": "clip", "evaluation": [{"task": "zero-shot", "dataset": "mnist", "metrics": {"acc1": "high"}}]},
         "must be a number"),
        ({"stage": "clip", "data": [{"split": "train"}]}, "needs a name"),
    ],
)
def test_bad_input_is_refused(tmp_path, entry, message):
    with pytest.raises(ValueError, match=message):
        build_model_card(str(tmp_path), entry)
    assert not (tmp_path / "README.md").exists()


def test_a_missing_checkpoint_directory_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_model_card(str(tmp_path / "nowhere"), {"stage": "clip"})


def test_check_model_card_refuses_what_the_hub_would(clip_dir):
    card = build_model_card(clip_dir, copy.deepcopy(CLIP_ENTRY))
    check_model_card(card)
    card.data.eval_results[0].metric_value = float("nan")
    with pytest.raises(ValueError, match="non-numeric value"):
        check_model_card(card)
    card = build_model_card(clip_dir, copy.deepcopy(CLIP_ENTRY))
    card.data.license = None
    with pytest.raises(ValueError, match="license"):
        check_model_card(card)


def test_every_stage_has_a_card_entry():
    assert set(STAGE_CARDS) == set(STAGES)


def test_a_compress_card_shows_how_to_get_compressed_embeddings(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"stage": "compress"}))
    card = build_model_card(str(tmp_path))
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert 'compression="int8"' in card.text and "Compressed embeddings lose quality" in card.text
    assert "model_name" not in card.data.to_dict()  # only with a model-index
