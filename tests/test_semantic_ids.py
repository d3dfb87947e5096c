"""Semantic-ID metrics and `xray-hf semantic-ids`, on real embedded data: OpenMoji through a tiny XrayCLIPModel,
and Fashion-MNIST pixels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XraySemanticIDConfig,
    XraySemanticIDModel,
    XrayTextConfig,
    XrayVisualConfig,
    XrayVisualImageProcessor,
)
from xray_hf.cli import main
from xray_hf.semantic_ids import (
    USAGE_FLOOR,
    code_perplexity,
    code_usage,
    embed_dataset,
    feature_width,
    first_code_agreement,
    prefix_collision_rates,
    run_semantic_ids,
    semantic_id_report,
)

# an item's nearest neighbour must share its first code at least this many times more often than random pairs
NEIGHBOUR_FACTOR = 3.0


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random XrayCLIPModel (16-d embeddings) with its image processor."""
    path = tmp_path_factory.mktemp("clip")
    text = XrayTextConfig.from_preset("tiny", vocab_size=100, projection_dim=16, max_position_embeddings=16)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16)
    torch.manual_seed(0)
    XrayCLIPModel(config).save_pretrained(path)
    XrayVisualImageProcessor(size=32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def openmoji_embeddings(clip_dir):
    embeddings, ids = embed_dataset(clip_dir, "openmoji", "train", max_samples=400)
    return embeddings, ids


def test_metrics_on_known_ids():
    assert code_usage(torch.tensor([0, 0, 3]), 4) == 0.5
    assert code_perplexity(torch.tensor([0, 1, 2, 3])) == pytest.approx(4.0)
    assert code_perplexity(torch.tensor([2, 2, 2])) == pytest.approx(1.0)
    assert code_perplexity(torch.tensor([0, 0, 1, 1, 1, 1])) == pytest.approx(
        math.exp(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))))
    ids = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 2]])
    assert prefix_collision_rates(ids) == [0.75, 0.5]
    # items 0, 1 are close, 2, 3 are close; codes [5, 5, 5, 7]: neighbours agree for 0, 1 only
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    rates = first_code_agreement(embeddings, torch.tensor([5, 5, 5, 7]))
    assert rates["neighbour_first_code_rate"] == 0.5
    assert rates["random_pair_first_code_rate"] == pytest.approx(6 / 12)  # 3 of 6 unordered pairs share code 5
    with pytest.raises(ValueError):
        code_usage(torch.tensor([]), 4)


def assert_no_collapse_and_neighbours_share(report: dict) -> None:
    for level in report["levels"]:
        assert level["usage"] >= USAGE_FLOOR, report["levels"]
        assert level["perplexity"] >= 0.5 * report["codebook_size"], report["levels"]
    assert report["collapsed_levels"] == []
    assert report["neighbour_first_code_rate"] >= NEIGHBOUR_FACTOR * report["random_pair_first_code_rate"], report


@pytest.mark.parametrize("method", ["rq", "pq"])
def test_no_collapse_on_fashion_mnist_and_neighbours_share_codes(method):
    """3,000 Fashion-MNIST test images as pixel vectors: codes are used, and near neighbours share level 1."""
    from xray_hf.data import load_embedded

    rows = load_embedded("fashion-mnist", "test").select(range(0, 9000, 3))
    pixels = torch.tensor(np.stack([np.asarray(image, dtype=np.float32).reshape(-1) for image in rows["image"]]))
    config = XraySemanticIDConfig(embedding_dim=784, method=method, num_levels=4, codebook_size=64)
    model = XraySemanticIDModel(config).fit(pixels, epochs=10)
    report = semantic_id_report(model, pixels)
    assert_no_collapse_and_neighbours_share(report)
    assert report["reconstruction_cosine"] > 0.9
    assert report["levels"][-1]["collision_rate"] < report["levels"][0]["collision_rate"]


def test_no_collapse_on_clip_embeddings_where_a_plain_codebook_collapses(openmoji_embeddings):
    """OpenMoji through the tiny CLIP model: its embeddings crowd into a narrow cone. The library's codebook
    without k-means init and dead-code reset collapses there (the floor catches it); ours does not."""
    from vector_quantize_pytorch import VectorQuantize

    embeddings, _ = openmoji_embeddings
    x = F.normalize(embeddings, dim=-1)
    torch.manual_seed(0)
    plain = VectorQuantize(dim=16, codebook_size=32, use_cosine_sim=True, commitment_weight=0.0,
                           rotation_trick=False)
    with torch.no_grad():
        for _ in range(20):
            plain(x)
        plain.eval()
        assert code_usage(plain(x)[1], 32) < USAGE_FLOOR
    config = XraySemanticIDConfig(embedding_dim=16, num_levels=3, codebook_size=32)
    report = semantic_id_report(XraySemanticIDModel(config).fit(embeddings), embeddings)
    assert_no_collapse_and_neighbours_share(report)
    cosines = [level["reconstruction_cosine"] for level in report["levels"]]
    assert cosines == sorted(cosines) and cosines[-1] > 0.99


def test_cli_writes_ids_quantizer_and_report(clip_dir, openmoji_embeddings, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "ids"
    code = main(["semantic-ids", "--model", str(clip_dir), "--dataset", "openmoji", "--max-samples", "400",
                 "--levels", "3", "--codebook-size", "16", "--output", str(out)])
    assert code == 0 and "reconstruction cosine" in capsys.readouterr().out
    embeddings, item_ids = openmoji_embeddings
    table = pq.read_table(out / "semantic_ids.parquet")
    assert table.column_names == ["row", "id", "semantic_ids"] and table.num_rows == 400
    assert table.column("id").to_pylist() == item_ids
    ids = torch.tensor(table.column("semantic_ids").to_pylist())
    assert ids.shape == (400, 3) and ids.min() >= 0 and ids.max() < 16
    quantizer = XraySemanticIDModel.from_pretrained(out / "quantizer")
    assert (quantizer.config.method, quantizer.config.num_levels, quantizer.config.codebook_size) == ("rq", 3, 16)
    assert torch.equal(quantizer.encode(embeddings), ids)
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "openmoji" and report["num_items"] == 400 and len(report["levels"]) == 3
    assert {"usage", "perplexity", "collision_rate", "reconstruction_cosine"} <= set(report["levels"][0])
    assert report["collapsed_levels"] == [] and report["reconstruction_cosine"] > 0.99


def test_cli_pq(clip_dir, tmp_path):
    out = tmp_path / "pq"
    assert main(["semantic-ids", "--model", str(clip_dir), "--dataset", "openmoji", "--max-samples", "200",
                 "--levels", "4", "--codebook-size", "8", "--method", "pq", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "pq" and report["distance"] == "euclidean" and len(report["levels"]) == 4


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "no-such-set"], "neither an embedded set"),
        (["--codebook-size", "64", "--max-samples", "20"], "fewer than the 64 needed"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--levels", "0"], "levels must be"),
        (["--method", "pq", "--levels", "3"], "not divisible"),
    ],
)
def test_cli_refuses_bad_input(clip_dir, tmp_path, capsys, arguments, message):
    base = {"--model": str(clip_dir), "--dataset": "openmoji", "--levels": "2", "--codebook-size": "8",
            "--max-samples": "40", "--output": str(tmp_path / "out")}
    for flag, value in zip(arguments[::2], arguments[1::2]):
        base[flag] = value
    argv = ["semantic-ids"] + [item for pair in base.items() for item in pair]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


class Embedded(Exception):
    """Raised by the stand-in for `embed_dataset`: the run got past its checks to the slow part."""


def test_pq_width_is_checked_from_the_config_before_embedding(clip_dir, tmp_path, monkeypatch):
    """The tiny CLIP gives 16-d embeddings and 64-d pooled backbone features: a PQ split that does not divide
    the width is refused before anything is embedded; one that does reaches the embedding."""
    from xray_hf import semantic_ids

    def embed(*args, **kwargs):
        raise Embedded

    monkeypatch.setattr(semantic_ids, "embed_dataset", embed)
    options = {"method": "pq", "codebook_size": 8, "max_samples": 40}
    with pytest.raises(ValueError, match="16-d 'embedding' features.*not divisible by 3"):
        run_semantic_ids(clip_dir, "openmoji", tmp_path / "a", levels=3, **options)
    with pytest.raises(ValueError, match="64-d 'pooled' features.*not divisible by 3"):
        run_semantic_ids(clip_dir, "openmoji", tmp_path / "b", levels=3, feature="pooled", **options)
    with pytest.raises(Embedded):  # 32 chunks of the 64-d pooled feature
        run_semantic_ids(clip_dir, "openmoji", tmp_path / "c", levels=32, feature="pooled", **options)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_feature_width_matches_the_embeddings(clip_dir, openmoji_embeddings):
    embeddings, _ = openmoji_embeddings
    assert feature_width(clip_dir) == embeddings.shape[1] == 16
    pooled, _ = embed_dataset(clip_dir, "openmoji", "train", max_samples=4, feature="pooled")
    assert feature_width(clip_dir, "pooled") == pooled.shape[1] == 64
