"""A dataset pushed with `datasets.Dataset.push_to_hub` to the test Hub streams back through the data layer."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from PIL import Image

from xray_hf.data.decoding import ImageDecoder
from xray_hf.data.sources import load_source
from xray_hf.data.streams import DecodedStream


def test_pushed_dataset_streams_into_decoded_stream(hub_server):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16 + i, 20, 3), dtype=np.uint8) for i in range(6)]
    table = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in arrays], "label": list(range(6))})
    table = table.cast_column("image", datasets.Image())
    table.push_to_hub("alice/tiny-images")
    assert any(path.startswith("data/") and path.endswith(".parquet") for path in hub_server.files(
        "alice/tiny-images", repo_type="dataset"))

    source = load_source("alice/tiny-images", split="train")  # a Hub id: datasets.load_dataset(..., streaming=True)
    assert isinstance(source, datasets.IterableDataset)
    hub_server.hub.log.clear()
    stream = DecodedStream(source, ImageDecoder(column="image"), shuffle=False)
    samples = list(stream)
    assert [sample["label"] for sample in samples] == list(range(6))
    for sample, array in zip(samples, arrays):
        pixels = sample["pixel_values"]
        assert torch.equal(torch.as_tensor(pixels).permute(1, 2, 0), torch.from_numpy(array))  # PNG: lossless
    reads = [path for method, path, status in hub_server.hub.log if method == "GET" and status in (200, 206)]
    assert any("/datasets/alice/tiny-images/resolve/" in path and path.endswith(".parquet") for path in reads)


def test_pushed_dataset_trains_a_stage(hub_server, tmp_path):
    """The trainers read a Hub dataset id like any other source (`data.image.path`): MAE for a few steps on it."""
    from xray_hf.trainers.run import run_stage

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(12)]
    table = datasets.Dataset.from_dict({"image": images, "id": [f"img{i}" for i in range(12)]})
    table.cast_column("image", datasets.Image()).push_to_hub("alice/train-images")
    hub_server.hub.log.clear()
    config = {
        "stage": "mae", "seed": 0,
        "model": {"preset": "tiny", "config": {"image_size": 16, "patch_size": 4, "hidden_size": 32,
                                               "num_hidden_layers": 1, "num_attention_heads": 2,
                                               "intermediate_size": 64, "decoder_hidden_size": 32,
                                               "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
                                               "decoder_intermediate_size": 64}},
        "data": {"resolution": 16, "augment": {"flip_p": 0.0, "blur_p": 0.0},
                 "image": {"path": "alice/train-images", "num_samples": 12, "batch_size": 4}},
        "training": {"output_dir": str(tmp_path / "mae"), "max_steps": 4, "logging_steps": 1, "learning_rate": 1e-3,
                     "save_strategy": "no", "report_to": [], "disable_tqdm": True},
    }
    results = run_stage("mae", config)
    assert results["global_step"] == 4  # 3 batches an epoch: the stream was read into a second epoch
    losses = [row["loss"] for row in results["log_history"] if "loss" in row]
    assert len(losses) == 4 and all(np.isfinite(losses))
    reads = [path for method, path, status in hub_server.hub.log if method == "GET" and status in (200, 206)]
    assert any("/datasets/alice/train-images/resolve/" in path and path.endswith(".parquet") for path in reads)
