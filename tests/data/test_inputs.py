import datasets
import pytest
import torch

from xray_hf.data.inputs import (
    build_eval_dataset,
    build_train_loader,
    media_column,
    open_stream_source,
    with_label_hashtags,
)
from xray_hf.run_config.data import DataSpec, SourceSpec


def test_label_hashtags_and_media_columns():
    ds = datasets.Dataset.from_dict({"label": [0, 1, 1], "text": ["a", "b", "c"]},
                                    features=datasets.Features({"label": datasets.ClassLabel(names=["cat", "dog"]),
                                                                "text": datasets.Value("string")}))
    assert with_label_hashtags(ds, ["label"])["hashtags"] == [["cat"], ["dog"], ["dog"]]
    with pytest.raises(ValueError, match="ClassLabel"):
        with_label_hashtags(ds, ["text"])
    assert media_column(SourceSpec(name="x"), ["video", "label"]) == ("video", "video")
    assert media_column(SourceSpec(name="x", column="jpg"), ["jpg"]) == ("jpg", "image")
    with pytest.raises(ValueError, match="media column"):
        media_column(SourceSpec(name="x"), ["text"])
    with pytest.raises(ValueError, match="num_samples"):
        open_stream_source(SourceSpec(path="/some/shards"))


def test_single_modality_loader_and_eval_set():
    data = DataSpec.from_dict({"resolution": 16, "image": {"name": "mnist", "batch_size": 8, "max_samples": 40},
                               "eval": {"name": "mnist", "split": "validation", "max_samples": 4}})
    loader = build_train_loader(data, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and batches[0]["pixel_values"].shape == (8, 3, 16, 16)
    eval_set = build_eval_dataset(data)
    assert len(eval_set) == 4
    assert torch.equal(eval_set[0]["pixel_values"], eval_set[0]["pixel_values"])  # deterministic
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_train_loader(DataSpec.from_dict({"image": {"name": "mnist", "batch_size": 64, "max_samples": 10}}), 0)
