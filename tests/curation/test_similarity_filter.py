"""Similarity filtering with a CLIP checkpoint trained here on OpenMoji: true pairs outscore shuffled ones, the
score is the model's own cosine, the threshold comes from a calibration sample, and the step streams."""

import datasets
import pytest
import torch
import torch.nn.functional as F

from xray_hf.data import load_embedded
from xray_hf.data.tables import take_samples
from xray_hf.curation.similarity_filter import SimilarityScorer, calibrate_threshold, filter_by_similarity, score_pairs
from xray_hf.trainers.run import run_stage


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("similarity") / "clip"
    run_stage("clip", {
        "stage": "clip", "seed": 0,
        "model": {"vision": {"preset": "tiny", "config": {"image_size": 16, "patch_size": 4, "hidden_size": 32,
                                                          "num_hidden_layers": 2, "num_attention_heads": 2,
                                                          "intermediate_size": 64}},
                  "text": {"preset": "tiny", "tokenizer": "smollm2",
                           "config": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                      "max_position_embeddings": 32}},
                  "config": {"projection_dim": 32, "slip_weight": 0.0, "lambda_den": 0.0,
                             "hashtag_loss_weight": 0.0}},
        "captions": {"column": "caption"},
        "data": {"resolution": 16, "image": {"name": "openmoji", "split": "train", "batch_size": 32,
                                             "max_samples": 128},
                 "augment": {"flip_p": 0.0, "blur_p": 0.0, "brightness": 0.0, "saturation": 0.0,
                             "crop_scale": [0.9, 1.0]}},
        "training": {"output_dir": str(out), "max_steps": 80, "learning_rate": 3e-3, "optimizer": "adamw",
                     "warmup_steps": 5, "save_strategy": "no", "report_to": [], "disable_tqdm": True},
    })
    return out


def test_true_pairs_outscore_shuffled_pairs_and_the_score_is_the_models_cosine(clip_dir):
    trained = take_samples(load_embedded("openmoji", "train"), 128)  # the rows the fixture trained on
    rows = trained.select(range(64)).select_columns(["id", "image", "caption"])
    scorer = SimilarityScorer(clip_dir)
    scored = score_pairs(rows, scorer, batch_size=16)
    true = torch.tensor(scored["clip_score"])
    shuffled = scorer(rows["image"], rows["caption"][1:] + rows["caption"][:1])
    assert true.mean() > shuffled.mean() + 0.05  # the model learned these pairs
    # the score is the cosine of the model's own projected embeddings
    from transformers import AutoProcessor

    processor, model = AutoProcessor.from_pretrained(clip_dir), scorer.model
    inputs = processor(text=rows["caption"][:4], images=[im.convert("RGB") for im in rows["image"][:4]],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        image = F.normalize(model.get_image_features(inputs["pixel_values"]).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output, dim=-1)
    assert torch.allclose(true[:4], (image * text).sum(-1), atol=1e-5)


def test_calibrated_threshold_drops_the_lowest_share_on_a_stream(clip_dir):
    rows = load_embedded("openmoji", "train").select(range(40)).select_columns(["id", "image", "caption"])
    scorer = SimilarityScorer(clip_dir)
    calibration = score_pairs(rows.select(range(20)), scorer)["clip_score"]
    threshold = calibrate_threshold(calibration, drop_fraction=0.25)
    assert sum(score < threshold for score in calibration) == 5
    stream = filter_by_similarity(score_pairs(rows.to_iterable_dataset(num_shards=2), scorer, batch_size=8), threshold)
    assert isinstance(stream, datasets.IterableDataset)
    kept = list(stream)
    assert kept and all(row["clip_score"] >= threshold for row in kept) and len(kept) < 40
    with pytest.raises(ValueError, match="drop_fraction"):
        calibrate_threshold(calibration, 1.0)
    with pytest.raises(ValueError, match="captions"):
        scorer(rows["image"][:2], ["one caption"])
