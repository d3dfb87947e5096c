"""A dataset pushed with `datasets.Dataset.push_to_hub` to the test Hub streams back through the data layer."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from PIL import Image

from xray_hf.data.decoding import ImageDecoder
from xray_hf.data.sources import DecodedStream, load_source


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
