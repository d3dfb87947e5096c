"""Fixtures of the evaluation tests: a tiny random transformers `CLIPModel`, also saved as a checkpoint
directory with its tokenizer and image processor."""

import pytest

from .helpers import make_clip, make_image_processor


@pytest.fixture(scope="session")
def tiny_clip():
    """(model, tokenizer, image_processor) of a random tiny CLIPModel."""
    model, tokenizer = make_clip()
    return model, tokenizer, make_image_processor()


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_clip):
    """The tiny CLIPModel saved with its tokenizer and image processor, as a checkpoint directory."""
    model, tokenizer, processor = tiny_clip
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path
