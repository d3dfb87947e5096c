"""The `distill` stage on real data: a CLIP teacher into a smaller CLIP student (images and videos 75:25), an
image-only teacher into an `XrayVisualForDistillation`, exact resume, and the checks on bad configs."""

import copy
import json
import math

import pytest
import torch
from .test_clip import AUGMENT, VISION, _astronaut, clip_config
from transformers import AutoModel, pipeline

from xray_hf import XrayCLIPModel, XrayVisualConfig, XrayVisualForDistillation, XrayVisualModel
from xray_hf.run_config.data import DataSpec
from xray_hf.data.inputs import modality_counts
from xray_hf.run_config.model import StudentModelSpec
from xray_hf.trainers.distill_run import build_student
from xray_hf.trainers.run import run_stage

STUDENT = {"preset": "tiny", "config": {**VISION["config"], "hidden_size": 16, "num_hidden_layers": 1,
                                        "intermediate_size": 32}}


@pytest.fixture(scope="module")
def clip_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "clip"
    run_stage("clip", clip_config(out, max_steps=20))
    return out


def distill_config(output_dir, teacher, max_steps=16, **training):
    return {
        "stage": "distill", "seed": 0,
        "teacher": {"from_pretrained": str(teacher)},
        "model": {"vision": copy.deepcopy(STUDENT)},
        "captions": {"column": "caption"},
        "data": {
            "resolution": 16,
            "image": {"name": "openmoji", "split": "train", "batch_size": 16, "max_samples": 96},
            "video": {"name": "moving-shapes", "split": "train", "batch_size": 8, "max_samples": 32, "num_frames": 4},
            "video_fraction": 0.25,
            "eval": [{"name": "openmoji", "split": "validation", "max_samples": 48}],
            "augment": AUGMENT,
        },
        "training": {"output_dir": str(output_dir), "max_steps": max_steps, "learning_rate": 2e-3,
                     "optimizer": "adamw", "warmup_steps": 2, "logging_steps": 1, "save_strategy": "no",
                     "report_to": [], "disable_tqdm": True, "per_device_eval_batch_size": 64,
                     "contrastive_weight": 0.5, **training},
    }


def _mean(entries, key):
    return sum(e[key] for e in entries) / len(entries)


def test_clip_teacher_distils_into_a_smaller_clip_student(clip_teacher, tmp_path):
    teacher_before = XrayCLIPModel.from_pretrained(clip_teacher).state_dict()
    out = tmp_path / "student"
    results = run_stage("distill", distill_config(out, clip_teacher, max_steps=20))
    logged = [e for e in results["log_history"] if "loss" in e]
    assert len(logged) == 20
    for term in ("feature_distill_loss", "relational_distill_loss", "contrastive_loss"):
        assert all(math.isfinite(e[term]) for e in logged), term
    assert _mean(logged[-5:], "feature_distill_loss") < 0.5 * _mean(logged[:3], "feature_distill_loss")
    # images:videos 75:25 through the multimodal schedule (6 image and 2 video batches per epoch here)
    assert sum("loss_video" in e for e in logged) == 5
    assert results["eval"]["eval_openmoji_feature_cosine"] > 0.8
    assert "eval_openmoji_image_retrieval_recall@1" in results["eval"]
    assert results["student_parameters"] < results["teacher_parameters"]

    student = AutoModel.from_pretrained(out)
    assert isinstance(student, XrayCLIPModel) and student.config.vision_config.hidden_size == 16
    teacher = XrayCLIPModel.from_pretrained(clip_teacher)
    assert student.config.projection_dim == teacher.config.projection_dim
    # the student's text tower is the teacher's, untouched; the teacher itself did not change either
    for name, value in teacher.text_model.state_dict().items():
        assert torch.equal(student.text_model.state_dict()[name], value), name
    for name, value in teacher.state_dict().items():
        assert torch.equal(teacher_before[name], value), name
    # a normal CLIP checkpoint: backbone alone, zero-shot pipeline
    backbone = XrayVisualModel.from_pretrained(out)
    assert backbone.config.hidden_size == 16
    scores = pipeline("zero-shot-image-classification", model=str(out))(_astronaut(), candidate_labels=["a", "b"])
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-5


def test_distillation_resumes_to_the_uninterrupted_run(clip_teacher, tmp_path):
    straight = run_stage("distill", distill_config(tmp_path / "a", clip_teacher, max_steps=8))
    config = distill_config(tmp_path / "b", clip_teacher, max_steps=8, save_strategy="steps", save_steps=4)
    first = copy.deepcopy(config)
    first["training"]["max_steps"] = 8
    run_stage("distill", first)  # writes checkpoint-4 and checkpoint-8
    resumed = run_stage("distill", config, resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    want = [e["loss"] for e in straight["log_history"] if "loss" in e]
    got = [e["loss"] for e in resumed["log_history"] if "loss" in e]
    assert got[-4:] == want[-4:]
    # checkpoints and the final model hold no pickle: the training arguments are JSON
    for folder in (tmp_path / "b", tmp_path / "b" / "checkpoint-4"):
        assert not (folder / "training_args.bin").exists()
        assert json.loads((folder / "training_args.json").read_text())["max_steps"] == 8
    a, b = XrayCLIPModel.from_pretrained(tmp_path / "a"), XrayCLIPModel.from_pretrained(tmp_path / "b")
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


def test_distillation_under_bf16_autocast_keeps_fp32_losses_and_weights(clip_teacher, tmp_path):
    results = run_stage("distill", distill_config(tmp_path / "bf16", clip_teacher, max_steps=4, bf16=True,
                                                  use_cpu=True))
    logged = [e for e in results["log_history"] if "loss" in e]
    assert len(logged) == 4 and all(math.isfinite(e[k]) for e in logged for k in
                                    ("feature_distill_loss", "relational_distill_loss", "contrastive_loss"))
    student = XrayCLIPModel.from_pretrained(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast, not a bf16 model


def test_image_only_teacher_distils_through_a_projection(tmp_path):
    teacher_dir = tmp_path / "teacher"
    torch.manual_seed(0)
    XrayVisualModel(XrayVisualConfig.from_preset("tiny", **VISION["config"])).save_pretrained(teacher_dir)
    config = distill_config(tmp_path / "student", teacher_dir, max_steps=16, relational_distill_weight=0.0,
                            contrastive_weight=0.0, resolution_schedule=[[0, 8], [8, 16]])
    del config["captions"]
    results = run_stage("distill", config)
    logged = [e for e in results["log_history"] if "loss" in e]
    assert set(logged[0]) >= {"feature_distill_loss"} and "relational_distill_loss" not in logged[0]
    assert "logit_scale" not in logged[0]
    assert _mean(logged[-4:], "feature_distill_loss") < 0.5 * _mean(logged[:2], "feature_distill_loss")
    assert results["eval"]["eval_openmoji_feature_cosine"] > 0.8
    student = XrayVisualForDistillation.from_pretrained(tmp_path / "student")
    assert student.distill_projection.weight.shape == (32, 16)  # student width 16 -> teacher width 32
    backbone, info = XrayVisualModel.from_pretrained(tmp_path / "student", output_loading_info=True)
    assert not info["missing_keys"] and backbone.config.hidden_size == 16


def test_bad_distill_configs_are_refused(clip_teacher, tmp_path):
    teacher_dir = tmp_path / "visual"
    XrayVisualModel(XrayVisualConfig.from_preset("tiny", **VISION["config"])).save_pretrained(teacher_dir)
    image_only = distill_config(tmp_path / "x", teacher_dir)
    del image_only["captions"]
    with pytest.raises(ValueError, match="image-only teacher has no texts"):
        run_stage("distill", image_only)  # relational weight left at 1
    no_teacher = distill_config(tmp_path / "x", clip_teacher)
    del no_teacher["teacher"]
    with pytest.raises(ValueError, match="teacher"):
        run_stage("distill", no_teacher)
    missing = distill_config(tmp_path / "x", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        run_stage("distill", missing)
    wrong_dim = distill_config(tmp_path / "x", clip_teacher)
    wrong_dim["model"]["config"] = {"projection_dim": 8}
    with pytest.raises(ValueError, match="projection_dim"):
        run_stage("distill", wrong_dim)
    # model.config names settings of the student's own config class (both were accepted: a CLIP student silently
    # carried an XrayVisual setting, an image-only teacher's student ignored model.config)
    vision_setting = distill_config(tmp_path / "x", clip_teacher)
    vision_setting["model"]["config"] = {"num_hidden_layers": 2}
    with pytest.raises(ValueError, match=r"unknown key 'model.config.num_hidden_layers'.*XrayCLIPModel .*"
                                         r"model.vision.config"):
        run_stage("distill", vision_setting)
    visual_teacher = XrayVisualModel.from_pretrained(teacher_dir)
    clip_setting = StudentModelSpec.from_dict({"vision": STUDENT, "config": {"logit_scale_init_value": 2.0}}, "model")
    with pytest.raises(ValueError, match=r"model.config.logit_scale_init_value.*XrayVisualForDistillation"):
        build_student(clip_setting, visual_teacher)
    narrower = StudentModelSpec.from_dict({"vision": STUDENT, "config": {"intermediate_size": 24}}, "model")
    assert build_student(narrower, visual_teacher).config.intermediate_size == 24
    with pytest.raises(ValueError, match="not all 0"):
        run_stage("distill", distill_config(tmp_path / "x", clip_teacher, feature_distill_weight=0.0,
                                            relational_distill_weight=0.0, contrastive_weight=0.0))


def test_teacher_cache_is_keyed_by_sample_and_teacher_and_refuses_stale_use(clip_teacher, tmp_path):
    from xray_hf.data.inputs import build_eval_dataset
    from xray_hf.trainers.build import normalization
    from xray_hf.caches.teacher import StaleTeacherCacheError, TeacherEmbeddingCache

    config = distill_config(tmp_path / "student", clip_teacher, max_steps=6)
    config["teacher_cache"] = {"enabled": True}
    results = run_stage("distill", config)
    assert results["teacher_cache"] is True
    assert all(math.isfinite(e["loss"]) for e in results["log_history"] if "loss" in e)
    path = tmp_path / "student" / "teacher_cache"
    written = (path / "teacher_embeddings.safetensors").stat().st_mtime_ns
    # the cached rows are the teacher's embeddings of each sample's clean (evaluation-transform) view
    data = DataSpec.from_dict(config["data"])
    teacher = XrayCLIPModel.from_pretrained(clip_teacher)
    images, videos = build_eval_dataset(data, data.image), build_eval_dataset(data, data.video)
    settings = {"sources": {"image": vars(data.image), "video": vars(data.video)}, "resolution": 16,
                "normalization": normalization(data)}
    cache = TeacherEmbeddingCache.load(path, teacher, settings)
    assert len(cache) == 96 + 32
    for dataset, modality in ((images, "image"), (videos, "video")):
        samples = [dataset[i] for i in (0, 5)]
        with torch.no_grad():
            want = teacher.get_image_features(torch.stack([s["pixel_values"] for s in samples])).pooler_output
        got = cache.lookup([f"{modality}/{s['id']}" for s in samples])
        assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(StaleTeacherCacheError, match="no embedding"):
        cache.lookup(["image/not-an-id"])
    # a second run opens it instead of rebuilding; another teacher or other inputs are refused
    run_stage("distill", config)
    assert (path / "teacher_embeddings.safetensors").stat().st_mtime_ns == written
    with torch.no_grad():
        teacher.visual_projection.weight[0, 0] += 1e-3
    with pytest.raises(StaleTeacherCacheError, match="teacher_weights"):
        TeacherEmbeddingCache.load(path, teacher, settings)
    with pytest.raises(StaleTeacherCacheError, match="input_settings"):
        TeacherEmbeddingCache.load(path, XrayCLIPModel.from_pretrained(clip_teacher), {**settings, "resolution": 32})


def test_video_fraction_sets_the_share_of_video_batches():
    assert modality_counts(6, 4, 0.25) == {"image": 6, "video": 2}
    assert modality_counts(30, 4, 0.25) == {"image": 12, "video": 4}  # never more video batches than there are
    assert modality_counts(3, 40, 0.25) == {"image": 3, "video": 1}
    assert modality_counts(2, 40, 0.5) == {"image": 2, "video": 2}
    assert modality_counts(40, 2, 0.5) == {"image": 2, "video": 2}
    with pytest.raises(ValueError, match="video_fraction"):
        DataSpec.from_dict({"image": {"name": "mnist"}, "video_fraction": 0.25})
    with pytest.raises(ValueError, match="video_fraction"):
        DataSpec.from_dict({"image": {"name": "mnist"}, "video": {"name": "moving-shapes"}, "video_fraction": 1.5})
