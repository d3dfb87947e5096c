"""The `compress` stage: from a CLIP checkpoint, embed real data once, calibrate int8, train the projection on the
frozen embeddings, save a loadable checkpoint (config + safetensors + processor) and report retention."""

import json

import pytest
import torch
import yaml
from transformers import AutoModel, AutoProcessor

from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XrayCLIPProcessor,
    XrayTextConfig,
    XrayVisualConfig,
    XrayVisualImageProcessor,
    XrayVisualVideoProcessor,
)
from xray_hf.cli import main
from xray_hf.convert import smollm2_tokenizer
from xray_hf.trainers.compression import CompressionTrainingArguments
from xray_hf.trainers.run import run_stage


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP checkpoint (no compression) with its processor and tokenizer."""
    tokenizer = smollm2_tokenizer()
    vision = XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4, num_frames=4, hidden_size=32,
                                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                          num_register_tokens=0)
    text = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=48, max_position_embeddings=32,
                                      hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = XrayCLIPConfig(vision_config=vision, text_config=text, projection_dim=48, slip_weight=0.0, lambda_den=0.0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip")
    XrayCLIPModel(config).save_pretrained(path)
    XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=16),
                                XrayVisualVideoProcessor(size=16, num_frames=4), tokenizer).save_pretrained(path)
    return path


def compress_config(source, output_dir, **training):
    return {
        "stage": "compress", "seed": 0,
        "model": {"from_pretrained": str(source), "compression": {"compressed_dim": 16, "matryoshka_dims": [8]}},
        "texts": {"column": "caption"},
        "data": {"image": {"name": "openmoji", "split": "train", "max_samples": 160, "batch_size": 64},
                 "video": {"name": "moving-shapes", "split": "train", "max_samples": 16, "batch_size": 8,
                           "num_frames": 4},
                 "eval": [{"name": "openmoji", "split": "validation", "max_samples": 48},
                          {"name": "fashion-mnist", "split": "test", "max_samples": 60}]},
        "training": {"output_dir": str(output_dir), "max_steps": 40, "optimizer": "adamw", "learning_rate": 1e-3,
                     "per_device_train_batch_size": 64, "logging_steps": 10, "save_strategy": "no", "report_to": [],
                     "disable_tqdm": True, **training},
    }


def test_compress_stage_trains_calibrates_saves_and_reports_retention(clip_dir, tmp_path):
    out = tmp_path / "compress"
    results = run_stage("compress", compress_config(clip_dir, out))
    assert results["global_step"] == 40
    assert results["training_embeddings"] == 2 * (160 + 16)  # items, and captions repeated to as many
    logged = [entry for entry in results["log_history"] if "loss" in entry]
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert {"similarity_kl_loss", "similarity_mse_loss"} <= set(logged[0])

    retention = results["retention"]
    assert set(retention) == {"openmoji", "fashion_mnist"}
    assert list(retention["openmoji"]) == ["float", "projection-16", "projection-8", "int8", "binary",
                                           "binary+rerank@10"]
    assert retention["openmoji"]["int8"]["bytes_per_embedding"] == 48
    assert retention["openmoji"]["projection-8"]["bytes_per_embedding"] == 32
    assert "retrieval_image_retrieval_recall@1" in retention["openmoji"]["int8"]
    assert "zeroshot_acc1" in retention["fashion_mnist"]["binary"]  # labelled set: zero-shot too
    assert json.loads((out / "results.json").read_text())["retention"] == retention

    # the checkpoint: the source CLIP plus the trained compression; towers unchanged; its processor beside it
    model = AutoModel.from_pretrained(out).eval()
    source = XrayCLIPModel.from_pretrained(clip_dir).eval()
    assert model.config.compression_config["matryoshka_dims"] == [8]
    assert bool(model.embedding_compression.int8_calibrated)
    trained = model.embedding_compression.projection.weight
    assert not torch.allclose(trained @ trained.T, torch.eye(16), atol=1e-3)  # moved away from its orthonormal start
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixels).pooler_output,
                                   source.get_image_features(pixels).pooler_output)
        codes = model.get_image_features(pixels, compression="int8").pooler_output
    assert codes.dtype == torch.int8 and codes.shape == (2, 48)
    assert isinstance(AutoProcessor.from_pretrained(out), XrayCLIPProcessor)


def test_compress_from_the_cli_with_templates_and_bad_settings(clip_dir, tmp_path):
    config = compress_config(clip_dir, "unused", report_to=["tensorboard"])  # logs what it trains: the module
    config["texts"] = {"templates": ["a photo of a {}.", "a {}."]}
    config["data"] = {"image": {"name": "fashion-mnist", "split": "train", "max_samples": 100},
                      "eval": {"name": "fashion-mnist", "split": "test", "max_samples": 50}}
    path = tmp_path / "compress.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["train", "compress", "--config", str(path), "--output-dir", str(out), "--max-steps", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["training_embeddings"] == 200  # 100 images, 20 class prompts repeated to 100
    assert set(results["retention"]["fashion_mnist"]["int8"]) >= {"zeroshot_acc1", "relative_zeroshot_acc1"}
    assert any((out / "runs").rglob("events.out.tfevents.*"))

    with pytest.raises(ValueError, match="existing CLIP checkpoint"):
        run_stage("compress", compress_config(tmp_path / "missing", tmp_path / "x"))
    bad = compress_config(clip_dir, tmp_path / "x")
    bad["texts"] = {"colum": "caption"}
    with pytest.raises(ValueError, match="unknown key 'texts.colum'"):
        run_stage("compress", bad)
    too_big = compress_config(clip_dir, tmp_path / "x")
    too_big["model"]["compression"] = {"compressed_dim": 100}  # the checkpoint's embedding has 48 dimensions
    with pytest.raises(ValueError, match="larger than the embedding"):
        run_stage("compress", too_big)
    with pytest.raises(ValueError, match="similarity_temperature"):
        CompressionTrainingArguments(output_dir=str(tmp_path), similarity_temperature=0.0)


def test_compress_stage_resumes_to_the_uninterrupted_losses(clip_dir, tmp_path):
    """What `xray-hf pipeline` relies on after a kill inside the stage: resuming from a checkpoint continues the
    same loss curve (the embeddings are recomputed, the batches come back in the same order)."""
    full = run_stage("compress", compress_config(clip_dir, tmp_path / "full", max_steps=8, logging_steps=1,
                                                 save_strategy="steps", save_steps=4))
    resumed = run_stage("compress", compress_config(clip_dir, tmp_path / "resumed", max_steps=8, logging_steps=1,
                                                    save_strategy="steps", save_steps=4),
                        resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    losses = [[row["loss"] for row in r["log_history"] if "loss" in row] for r in (full, resumed)]
    assert len(losses[0]) == 8 and losses[1] == losses[0]  # the resumed history starts with the checkpoint's
    checkpoint = AutoModel.from_pretrained(tmp_path / "full" / "checkpoint-4")  # a checkpoint is a CLIP model
    assert isinstance(checkpoint, XrayCLIPModel) and bool(checkpoint.embedding_compression.int8_calibrated)
