import json
import math

import pytest

from xray_hf.eval.results import benchmark_task, make_result, read_result, write_result


def test_result_has_clip_benchmarks_shape_and_task_names(tmp_path):
    result = make_result("mnist", "runs/tiny/clip", "zero-shot",
                         {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.49}, split="test")
    assert list(result)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert result["task"] == "zeroshot_classification" and result["language"] == "en"
    assert "num_frames" not in result
    path = write_result(tmp_path / "out" / "zs.json", result)
    with open(path) as file:
        assert json.load(file) == result
    assert read_result(path) == result


def test_task_names():
    assert benchmark_task("retrieval") == "zeroshot_retrieval"
    assert benchmark_task("linear-probe") == "linear_probe"
    assert benchmark_task("linear_probe") == "linear_probe"
    with pytest.raises(ValueError, match="unknown task"):
        benchmark_task("segmentation")


def test_video_results_carry_num_frames_and_nan_round_trips(tmp_path):
    result = make_result("moving-shapes", "m", "zero-shot", {"acc1": 0.25, "acc5": float("nan")}, num_frames=8)
    assert result["num_frames"] == 8
    back = read_result(write_result(tmp_path / "v.json", result))
    assert back["num_frames"] == 8 and math.isnan(back["metrics"]["acc5"])


def test_reads_a_clip_benchmark_file(tmp_path):
    # as CLIP_benchmark's cli.py dumps a linear-probe run (its metrics include flags and settings)
    record = {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "linear_probe",
              "metrics": {"lp_acc1": 0.95, "lp_acc5": 0.99, "lp_mean_per_class_recall": 0.95, "weight_decay": 0.0,
                          "epochs": 10, "seed": 0, "fewshot_k": -1, "normalized": True},
              "language": "en"}
    (tmp_path / "lp.json").write_text(json.dumps(record))
    assert read_result(tmp_path / "lp.json") == record


def test_bad_results_are_refused(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        make_result("d", "m", "zero-shot", {})
    with pytest.raises(ValueError, match="must be a number"):
        make_result("d", "m", "zero-shot", {"acc1": "high"})
    (tmp_path / "bad.json").write_text(json.dumps({"dataset": "d", "metrics": {}}))
    with pytest.raises(ValueError, match="missing"):
        read_result(tmp_path / "bad.json")
