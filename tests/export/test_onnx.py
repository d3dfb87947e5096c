"""ONNX export of the encoders: onnxruntime matches PyTorch (image, video, text; EViT and ToMe), int8 stays close,
bad requests and inputs the fixed-size files cannot take get clear errors."""

import json

import numpy as np
import pytest
import torch

from xray_hf import XrayCLIPConfig, XrayCLIPModel, XrayTextConfig, XrayVisualConfig, XrayVisualModel
from xray_hf.export.onnx import MANIFEST, export_onnx
from xray_hf.export.runtime import XrayOnnxModel

VOCAB = 60


def tiny_clip(**vision) -> XrayCLIPModel:
    torch.manual_seed(0)
    config = XrayCLIPConfig(
        vision_config=XrayVisualConfig.from_preset("tiny", **vision),
        text_config=XrayTextConfig.from_preset("tiny", vocab_size=VOCAB, projection_dim=16, max_position_embeddings=16),
        projection_dim=16,
    )
    return XrayCLIPModel(config).eval()


def tokens(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, length // 3:] = 0
    return input_ids, attention_mask


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.fixture(scope="module")  # three torch.export traces: 20-90 s on 2 shared cores
def exported(tmp_path_factory):
    """A tiny CLIP with EViT and ToMe (images, videos, plain text tower) saved, then exported with int8 copies of all
    three encoders (`--int8 image video text`)."""
    model = tiny_clip(evit_layers=[1], keep_rate=0.7, tome_r=2)
    checkpoint = tmp_path_factory.mktemp("clip")
    model.save_pretrained(checkpoint)
    output = tmp_path_factory.mktemp("export")
    manifest = export_onnx(checkpoint, output, int8=("image", "video", "text"))
    return model, output, manifest


@pytest.mark.slow  # the module's export
def test_export_folder_describes_each_encoder(exported):
    _, output, manifest = exported
    assert json.loads((output / MANIFEST).read_text()) == manifest
    assert set(manifest["encoders"]) == {"image", "video", "text"}
    assert manifest["encoders"]["image"]["inputs"]["pixel_values"] == ["batch", 3, 32, 32]
    assert manifest["encoders"]["video"]["inputs"]["pixel_values"] == ["batch", 4, 3, 32, 32]
    for entry in manifest["encoders"].values():
        assert (output / entry["file"]).is_file() and (output / entry["int8_file"]).is_file()
        assert entry["check"]["min_cosine"] >= 0.9999
        assert 0.9 < entry["int8_check"]["min_cosine"] < 1.0  # measured and recorded, not exact
    assert "7 bits" in manifest["int8"] and "per output channel" in manifest["int8"]
    assert "config.json" in manifest["files"]


@pytest.mark.slow  # the module's export
@pytest.mark.parametrize("rows", [1, 5])
def test_onnxruntime_matches_pytorch_at_any_batch(exported, rows):
    model, output, _ = exported
    runtime = XrayOnnxModel(output)
    generator = torch.Generator().manual_seed(rows)
    images, videos = torch.randn(rows, 3, 32, 32, generator=generator), torch.randn(rows, 4, 3, 32, 32,
                                                                                  generator=generator)
    input_ids, attention_mask = tokens(rows, 7 + rows, rows)
    with torch.inference_mode():
        pairs = [
            (runtime.get_image_features(images), model.get_image_features(images)),
            (runtime.get_video_features(videos), model.get_video_features(videos)),
            (runtime.get_text_features(input_ids, attention_mask), model.get_text_features(input_ids, attention_mask)),
        ]
    for ours, reference in pairs:
        ours, reference = ours.pooler_output, reference.pooler_output
        assert ours.shape == reference.shape == (rows, 16)
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
        assert cosine(ours, reference).min() >= 0.9999


@pytest.mark.slow  # the module's export
def test_int8_features_stay_close_to_float(exported):
    model, output, _ = exported
    runtime = XrayOnnxModel(output, int8=True)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    input_ids, attention_mask = tokens(8, 10, 3)
    with torch.inference_mode():
        image_cos = cosine(runtime.get_image_features(images).pooler_output, model.get_image_features(images).pooler_output)
        text_cos = cosine(runtime.get_text_features(input_ids, attention_mask).pooler_output,
                          model.get_text_features(input_ids, attention_mask).pooler_output)
    # random-init tiny towers: the trained tiny CLIP keeps its retrieval and zero-shot (bench/deploy.py --retention)
    assert image_cos.min() > 0.99 and text_cos.min() > 0.95


@pytest.mark.slow  # the module's export
def test_int8_for_some_encoders_only(exported):
    """`int8=("image", "video")`: the int8 image graph beside the float text graph (an int8 index, float queries)."""
    _, output, _ = exported
    mixed, floats, ints = (XrayOnnxModel(output, int8=("image", "video")), XrayOnnxModel(output),
                           XrayOnnxModel(output, int8=True))
    assert mixed.int8_encoders == {"image", "video"} and ints.int8_encoders == {"image", "video", "text"}
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    input_ids, attention_mask = tokens(4, 10, 5)
    torch.testing.assert_close(mixed.get_image_features(images).pooler_output,
                               ints.get_image_features(images).pooler_output, atol=0, rtol=0)
    torch.testing.assert_close(mixed.get_text_features(input_ids, attention_mask).pooler_output,
                               floats.get_text_features(input_ids, attention_mask).pooler_output, atol=0, rtol=0)
    assert not torch.equal(mixed.get_image_features(images).pooler_output,
                           floats.get_image_features(images).pooler_output)
    with pytest.raises(ValueError, match=r"int8=\['audio'\]: .* has no \['audio'\] encoder"):
        XrayOnnxModel(output, int8=("audio",))


def test_backbone_exports_pooled_output_at_a_chosen_resolution_without_int8(tmp_path):
    """A backbone (no text tower) at 48 px: the position tables are interpolated inside the graph."""
    torch.manual_seed(0)
    model = XrayVisualModel(XrayVisualConfig.from_preset("tiny", evit_layers=[2], keep_rate=0.5)).eval()
    manifest = export_onnx(model, tmp_path, image_size=48, video=False)
    assert set(manifest["encoders"]) == {"image"} and manifest["image_size"] == [48, 48]
    images = torch.randn(3, 3, 48, 48)
    with torch.inference_mode():
        reference = model(images).pooler_output
    torch.testing.assert_close(XrayOnnxModel(tmp_path).get_image_features(images).pooler_output, reference,
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="has no int8 encoder: export it with --int8"):
        XrayOnnxModel(tmp_path, int8=True)
    with pytest.raises(ValueError, match="has no int8 image encoder: export it with --int8$"):
        XrayOnnxModel(tmp_path, int8=("image",))
    with pytest.raises(ValueError, match="has no text encoder"):
        XrayOnnxModel(tmp_path).get_text_features(torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("request_kwargs, message", [
    ({"image_size": 30}, r"cannot export at 30x30: .* multiple of the patch size 8"),
    ({"image_size": (32, 20)}, r"cannot export at 32x20"),
    ({"num_frames": 3}, r"videos of 3 frames: .* multiple of the tubelet size 2"),
])
def test_unsupported_export_request_is_refused_before_any_work(tmp_path, request_kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(tiny_clip(), tmp_path / "out", **request_kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the module's export
def test_fixed_size_files_refuse_other_inputs_with_a_clear_error(exported):
    _, output, _ = exported
    runtime = XrayOnnxModel(output)
    with pytest.raises(ValueError, match=r"takes \(batch, channels, height, width\) = \(batch, 3, 32, 32\), fixed "
                                         r"at export; got \(2, 3, 64, 64\)"):
        runtime.get_image_features(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"= \(batch, 4, 3, 32, 32\).*--num-frames"):
        runtime.get_video_features(torch.randn(2, 8, 3, 32, 32))
    input_ids, attention_mask = tokens(2, 6, 0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        runtime.get_text_features(input_ids, attention_mask * 2)
    attention_mask[0] = 0
    with pytest.raises(ValueError, match="at least one token"):
        runtime.get_text_features(input_ids, attention_mask)


def test_folder_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by xray-hf export"):
        XrayOnnxModel(tmp_path)


def test_cli_export_and_a_refused_resolution(tmp_path, capsys):
    from xray_hf.cli import main

    torch.manual_seed(0)
    XrayVisualModel(XrayVisualConfig.from_preset("tiny")).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "out"), "--image-size", "30"])
    assert exit_info.value.code == 2
    assert "xray-hf export: error: cannot export at 30x30" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "out"), "--image-size",
                 "32", "48", "--no-video"]) == 0
    assert "image: image.onnx, inputs {'pixel_values': ['batch', 3, 32, 48]}" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file()
    images = torch.randn(2, 3, 32, 48)
    model = XrayVisualModel.from_pretrained(tmp_path / "model").eval()
    with torch.inference_mode():
        reference = model(images).pooler_output
    torch.testing.assert_close(XrayOnnxModel(tmp_path / "out").get_image_features(images).pooler_output, reference,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # two exports
def test_int8_by_default_quantises_the_vision_encoders_and_text_only_when_named(tmp_path, capsys):
    """`--int8` alone: int8 image and video files, the text file float (its int8 copy moves short queries: README,
    Deployment); `XrayOnnxModel(int8=True)` then runs int8 vision with float text. Naming text adds its copy."""
    from xray_hf.cli import main

    tiny_clip().save_pretrained(tmp_path / "clip")
    assert main(["export", "--model", str(tmp_path / "clip"), "--output", str(tmp_path / "out"), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "image: image.onnx + image.int8.onnx" in printed and "video: video.onnx + video.int8.onnx" in printed
    assert "text: text.onnx," in printed
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert "int8_file" not in manifest["encoders"]["text"] and "7 bits" in manifest["int8"]
    assert XrayOnnxModel(tmp_path / "out", int8=True).int8_encoders == {"image", "video"}
    with pytest.raises(ValueError, match="no int8 text encoder: export it with --int8 image video text"):
        XrayOnnxModel(tmp_path / "out", int8=("text",))
    with pytest.raises(ValueError, match=r"int8=\['audio', 'image'\]: no encoder named \['audio'\]"):
        export_onnx(tmp_path / "clip", tmp_path / "bad", int8=("image", "audio"))
    with pytest.raises(ValueError, match=r"int8=\['text'\]: \['text'\] not exported"):
        export_onnx(tmp_path / "clip", tmp_path / "bad", text=False, int8=("text",))
    assert not (tmp_path / "bad" / "image.onnx").exists()  # refused before any export work
    assert main(["export", "--model", str(tmp_path / "clip"), "--output", str(tmp_path / "all"), "--no-video",
                 "--int8", "image", "text"]) == 0
    manifest = json.loads((tmp_path / "all" / MANIFEST).read_text())
    assert {name for name, entry in manifest["encoders"].items() if "int8_file" in entry} == {"image", "text"}
