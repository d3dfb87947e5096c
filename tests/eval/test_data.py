import datasets
import numpy as np
import pytest
import torch

from xray_hf.data import write_shards
from xray_hf.eval.data import ProcessorTransform, decoded, load_eval_set, parse_classnames

from .helpers import make_image_processor


def test_embedded_label_set_with_spread_samples():
    eval_set = load_eval_set("mnist", "test", max_samples=20, need=("labels", "classnames", "captions"))
    assert (eval_set.media_column, eval_set.modality, eval_set.label_column, eval_set.caption_column) == (
        "image", "image", "label", "caption")
    assert eval_set.classnames == [str(d) for d in range(10)]
    assert len(eval_set.dataset) == 20 and sorted(set(eval_set.labels().tolist())) == list(range(10))
    image = eval_set.display_image(0)
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8


def test_caption_and_video_sets():
    moji = load_eval_set("openmoji", "test", max_samples=5, need=("captions",))
    assert moji.caption_column == "caption" and moji.label_column is None
    with pytest.raises(ValueError, match="no label column"):
        load_eval_set("openmoji", "test", max_samples=5, need=("labels",))
    shapes = load_eval_set("moving-shapes", "test", max_samples=4, need=("labels", "classnames"))
    assert shapes.modality == "video" and shapes.classnames[0] == "circle moving left"
    frame = shapes.display_image(0)
    assert frame.ndim == 3 and frame.shape[-1] == 3


def test_preprocessed_samples_from_the_checkpoint_processor():
    eval_set = load_eval_set("mnist", "test", max_samples=3)
    data = decoded(eval_set, ProcessorTransform(make_image_processor()))
    sample = data[1]
    assert sample["pixel_values"].shape == (3, 32, 32) and isinstance(sample["label"], int)
    torch.testing.assert_close(data[1]["pixel_values"], sample["pixel_values"])  # deterministic
    clips = decoded(load_eval_set("moving-shapes", "test", max_samples=2), ProcessorTransform(make_image_processor()),
                    num_frames=3)
    assert clips[0]["pixel_values"].shape == (3, 3, 32, 32)  # frames through the image processor


@pytest.mark.parametrize("layout", ["parquet", "webdataset", "folder"])
def test_local_sources_with_label_and_caption_columns(tmp_path, layout):
    table = load_embedded_subset()
    write_shards(table, str(tmp_path / layout), layout, num_shards=2)
    eval_set = load_eval_set(str(tmp_path / layout), max_samples=8, need=("labels", "captions"),
                             classnames=[str(d) for d in range(10)])
    assert eval_set.modality == "image" and eval_set.caption_column == "caption"
    assert len(eval_set.dataset) == 8 and eval_set.classnames[3] == "3"
    assert eval_set.labels().max() < 10
    sample = decoded(eval_set, ProcessorTransform(make_image_processor()))[0]
    assert sample["pixel_values"].shape == (3, 32, 32) and sample["caption"].startswith("a handwritten digit")


def load_embedded_subset():
    from xray_hf.data import load_embedded

    table = load_embedded("mnist", "test").select(range(0, 500, 50))
    return table.cast_column("label", datasets.Value("int64"))  # a plain integer label column


def test_string_labels_become_classes_and_plain_integers_need_names(tmp_path):
    table = load_embedded_subset()
    names = [["cat", "dog"][y % 2] for y in table["label"]]
    write_shards(table.remove_columns("label").add_column("label", names), str(tmp_path / "s"), "parquet", 1)
    eval_set = load_eval_set(str(tmp_path / "s"), need=("labels", "classnames"))
    assert eval_set.classnames == ["cat", "dog"]
    assert eval_set.labels().tolist() == [["cat", "dog"].index(n) for n in names]
    write_shards(table, str(tmp_path / "i"), "parquet", 1)
    with pytest.raises(ValueError, match="pass the class names"):
        load_eval_set(str(tmp_path / "i"), need=("classnames",))
    with pytest.raises(ValueError, match="only 2 class names"):
        load_eval_set(str(tmp_path / "i"), classnames=["a", "b"])


def test_string_labels_map_to_the_given_classnames_by_name(tmp_path):
    """`--classnames dog,cat` with string labels: an item labelled "dog" is class 0 ("dog"), not the index of
    "dog" in sorted order (1, which is "cat" in the user's list)."""
    table = load_embedded_subset()
    names = [["cat", "dog", "bird"][y % 3] for y in table["label"]]
    write_shards(table.remove_columns("label").add_column("label", names), str(tmp_path / "s"), "parquet", 1)
    given = ["dog", "cat", "bird"]
    eval_set = load_eval_set(str(tmp_path / "s"), classnames=given, need=("labels", "classnames"))
    assert eval_set.classnames == given
    assert [given[y] for y in eval_set.labels().tolist()] == names
    with pytest.raises(ValueError, match=r"labels \['bird'\] .* not in the class names \['dog', 'cat'\]"):
        load_eval_set(str(tmp_path / "s"), classnames=["dog", "cat"], need=("labels",))


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="neither an embedded set"):
        load_eval_set("no-such-set")
    with pytest.raises(ValueError, match="caption column 'title'"):
        load_eval_set("mnist", max_samples=2, caption_column="title")
    with pytest.raises(ValueError, match="max_samples"):
        load_eval_set("mnist", max_samples=0)


def test_parse_classnames(tmp_path):
    assert parse_classnames("cat, dog ,bird") == ["cat", "dog", "bird"]
    (tmp_path / "names.txt").write_text("T-shirt/top\nankle boot\n\n")
    assert parse_classnames(str(tmp_path / "names.txt")) == ["T-shirt/top", "ankle boot"]
    assert parse_classnames(None) is None
    with pytest.raises(ValueError, match="no class names"):
        parse_classnames(" , ")
