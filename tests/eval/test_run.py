import json
import math

import pytest
from PIL import Image

from xray_hf.cli import main
from xray_hf.data import load_embedded, write_shards
from xray_hf.eval.options import EmbedOptions
from xray_hf.eval.run import run_eval


def read_png(path):
    with Image.open(path) as image:
        image.load()
        return image.format, image.size


def test_cli_zero_shot_on_mnist_writes_clip_benchmark_json_and_a_confusion_matrix(tiny_clip_dir, tmp_path, capsys):
    output = tmp_path / "results" / "mnist_zs.json"
    code = main(["eval", "--model", str(tiny_clip_dir), "--task", "zero-shot", "--dataset", "mnist", "--split",
                 "test", "--output", str(output), "--max-samples", "40", "--templates", "a photo of a {}.", "{}"])
    assert code == 0
    assert "zeroshot_classification on mnist/test: acc1" in capsys.readouterr().out
    result = json.loads(output.read_text())
    assert {k: result[k] for k in ("dataset", "model", "task", "language")} == {
        "dataset": "mnist", "model": str(tiny_clip_dir), "task": "zeroshot_classification", "language": "en"}
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert all(0 <= v <= 1 for v in result["metrics"].values())
    assert result["templates"] == ["a photo of a {}.", "{}"] and result["num_samples"] == 40
    assert "num_frames" not in result
    assert read_png(tmp_path / "results" / result["plots"]["confusion_matrix"]) == ("PNG", (900, 800))


def test_cli_retrieval_writes_recall_curve_and_grid(tiny_clip_dir, tmp_path):
    output = tmp_path / "moji.json"
    assert main(["eval", "--model", str(tiny_clip_dir), "--task", "retrieval", "--dataset", "openmoji",
                 "--output", str(output), "--max-samples", "30"]) == 0
    result = json.loads(output.read_text())
    assert result["task"] == "zeroshot_retrieval" and result["num_items"] == 30
    for k in (1, 5, 10):
        assert 0 <= result["metrics"][f"image_retrieval_recall@{k}"] <= 1
        assert 0 <= result["metrics"][f"text_retrieval_recall@{k}"] <= 1
    assert read_png(tmp_path / "moji_recall_at_k.png") == ("PNG", (800, 600))
    assert read_png(tmp_path / "moji_retrieval_grid.png") == ("PNG", (320 + 5 * 128, 8 * 128))


def test_cli_linear_probe_and_knn_on_pooled_features(tiny_clip_dir, tmp_path):
    output = tmp_path / "lp.json"
    assert main(["eval", "--model", str(tiny_clip_dir), "--task", "linear-probe", "--dataset", "mnist",
                 "--output", str(output), "--max-samples", "60", "--max-train-samples", "150"]) == 0
    result = json.loads(output.read_text())
    assert result["task"] == "linear_probe" and result["feature"] == "pooled" and result["num_train"] == 150
    metrics = result["metrics"]
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "lp_C", "knn_acc1"} <= set(metrics)
    assert metrics["lp_acc1"] > 0.2  # random-init ViT features of 150 digits still beat chance (0.1)


def test_video_zero_shot_records_num_frames(tiny_clip_dir, tmp_path):
    result = run_eval(str(tiny_clip_dir), "zero-shot", "moving-shapes", "test", tmp_path / "v.json",
                      max_samples=12, embed=EmbedOptions(num_frames=2), video_mode="frame-mean", plots=False)
    assert result["num_frames"] == 2 and result["templates"][0] == "a video of a {}."
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert not (tmp_path / "v_confusion.png").exists()
    # the options as keywords, as code written before EmbedOptions calls it: the same result
    flat = run_eval(str(tiny_clip_dir), "zero-shot", "moving-shapes", "test", max_samples=12, num_frames=2,
                    video_mode="frame-mean", plots=False)
    assert flat["num_frames"] == 2 and flat["metrics"] == result["metrics"]
    with pytest.raises(TypeError, match="num_frame"):  # before any loading: the model path need not exist
        run_eval(str(tiny_clip_dir / "missing"), "zero-shot", "moving-shapes", "test", max_samples=12, num_frame=2)


def test_loaded_model_and_a_parquet_source(tiny_clip, tmp_path):
    model, tokenizer, processor = tiny_clip
    write_shards(load_embedded("mnist", "test").select(range(0, 500, 25)), str(tmp_path / "pq"), "parquet", 2)
    result = run_eval(model, "retrieval", str(tmp_path / "pq"), tokenizer=tokenizer, image_processor=processor,
                      model_name="tiny", plots=False)
    assert result["model"] == "tiny" and result["num_items"] == 20
    assert not math.isnan(result["metrics"]["image_retrieval_recall@1"])
    with pytest.raises(ValueError, match="single split"):
        run_eval(model, "linear-probe", str(tmp_path / "pq"), image_processor=processor)
    with pytest.raises(ValueError, match="unknown task"):
        run_eval(model, "segmentation", "mnist")


def test_cli_reports_bad_input_cleanly(tiny_clip_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tiny_clip_dir), "--task", "zero-shot", "--dataset", "openmoji",
              "--max-samples", "4"])
    assert exit_info.value.code == 2
    assert "no label column" in capsys.readouterr().err


def test_linear_probe_of_a_backbone_checkpoint(tmp_path):
    """A vision backbone saved alone (MAE / hashtag stages) is probed on its pooled output, no text needed."""
    from xray_hf import XrayVisualConfig, XrayVisualImageProcessor, XrayVisualModel

    XrayVisualModel(XrayVisualConfig.from_preset("tiny")).save_pretrained(tmp_path / "backbone")
    XrayVisualImageProcessor(size=32).save_pretrained(tmp_path / "backbone")
    result = run_eval(str(tmp_path / "backbone"), "knn", "mnist", max_samples=20, max_train_samples=60)
    assert result["task"] == "knn" and set(result["metrics"]) == {"knn_acc1", "knn_acc5", "knn_mean_per_class_recall"}
    with pytest.raises(ValueError, match="use feature='pooled'"):
        run_eval(str(tmp_path / "backbone"), "knn", "mnist", feature="embedding", max_samples=4, max_train_samples=8)
