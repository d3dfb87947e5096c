"""`SentenceTransformer(clip_dir)` loads a saved CLIP checkpoint with sentence-transformers' own generic `Transformer`
module (no remote code), and its embeddings are the model's `get_text_features` / `get_image_features`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from xray_hf import (
    XrayCLIPConfig,
    XrayCLIPModel,
    XrayCLIPProcessor,
    XrayTextConfig,
    XrayVisualConfig,
    XrayVisualImageProcessor,
    XrayVisualVideoProcessor,
)
from xray_hf.modeling.st_files import CONFIG_FILE, MODULES_FILE, write_sentence_transformers_files


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from xray_hf.convert import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    text = XrayTextConfig.from_preset("tiny", vocab_size=len(tokenizer), projection_dim=16, max_position_embeddings=32)
    config = XrayCLIPConfig(vision_config=XrayVisualConfig.from_preset("tiny"), text_config=text, projection_dim=16,
                            slip_hidden_size=32, slip_projection_dim=8)
    torch.manual_seed(0)
    model = XrayCLIPModel(config).eval()
    directory = tmp_path_factory.mktemp("st_clip")
    model.save_pretrained(directory)
    processor = XrayCLIPProcessor.for_model(config, XrayVisualImageProcessor(size=32),
                                            XrayVisualVideoProcessor(size=32, num_frames=4), tokenizer)
    processor.save_pretrained(directory)
    return directory, model, processor


def test_save_pretrained_writes_the_sentence_transformers_files(saved):
    directory, _, _ = saved
    modules = json.loads((directory / MODULES_FILE).read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"}]
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["module_output_name"] == "sentence_embedding"
    assert {name: entry["method"] for name, entry in config["modality_config"].items()} == {
        "text": "get_text_features", "image": "get_image_features", "video": "get_video_features"}
    with pytest.raises(FileNotFoundError):
        write_sentence_transformers_files(directory / "missing")


def test_sentence_transformers_text_embeddings_are_the_models(saved):
    from sentence_transformers import SentenceTransformer

    directory, model, processor = saved
    st = SentenceTransformer(str(directory), device="cpu")  # no trust_remote_code: the generic module
    assert set(st[0].modalities) >= {"text", "image", "video"}
    texts = ["a red heart", "a grinning face with big eyes and a very long caption that goes on"]
    encoded = st.encode(texts, convert_to_tensor=True)
    tokens = processor(text=texts, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output
    torch.testing.assert_close(encoded, expected, atol=1e-5, rtol=0)


def test_sentence_transformers_image_embeddings_are_the_models(saved):
    from sentence_transformers import SentenceTransformer

    directory, model, processor = saved
    st = SentenceTransformer(str(directory), device="cpu")
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    encoded = st.encode(pictures, convert_to_tensor=True)
    with torch.no_grad():
        expected = model.get_image_features(processor(images=pictures)["pixel_values"]).pooler_output
    torch.testing.assert_close(encoded, expected, atol=1e-5, rtol=0)
