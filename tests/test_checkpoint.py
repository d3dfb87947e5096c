"""`load_checkpoint`: a checkpoint directory's model and processors as one `Checkpoint`, and what it refuses."""

import pytest

from xray_hf.checkpoint import Checkpoint, load_checkpoint

from .eval.helpers import make_clip, make_image_processor


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    model, tokenizer = make_clip()
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    make_image_processor().save_pretrained(path)
    return path


def test_loads_the_model_and_its_processors(clip_dir):
    checkpoint = load_checkpoint(clip_dir)
    assert isinstance(checkpoint, Checkpoint)
    assert type(checkpoint.model).__name__ == "CLIPModel"
    assert checkpoint.tokenizer is not None and checkpoint.image_processor is not None
    assert checkpoint.video_processor is None  # read only with video=True


def test_refuses_a_missing_directory_or_one_without_processors(tmp_path, clip_dir):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")
    model, _ = make_clip()
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="image or video processor"):
        load_checkpoint(tmp_path / "bare", need_text=False)
