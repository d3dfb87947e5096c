"""Remote code generated from the package source: what it imports, which Auto classes it maps, and (slow) loading it
from the test Hub in a fresh virtual environment without xray_hf."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.dynamic_module_utils import get_relative_imports

import xray_hf  # noqa: F401
from xray_hf import XrayVisualConfig, XrayVisualForImageClassification
from xray_hf.hub import push_checkpoint
from xray_hf.modeling.visual import XrayVisualDropPath
from xray_hf.remote_code import (
    PROCESSOR_REQUIREMENTS,
    REMOTE_CODE_REQUIREMENTS,
    export_remote_code,
    flatten_source,
    required_packages,
)

from .checkpoints import (
    CAPTIONS,
    clip_checkpoint,
    images,
    embedder_clip_checkpoint,
    llm2clip_checkpoint,
    mae_checkpoint,
)

STDLIB = sys.stdlib_module_names


def test_mae_export_maps_pretraining_and_needs_only_torch_and_transformers(tmp_path):
    mae_checkpoint(tmp_path)
    written = export_remote_code(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_visual.XrayVisualConfig",
                                  "AutoModel": "modeling_visual.XrayVisualModel",
                                  "AutoModelForPreTraining": "modeling_mae.XrayVisualForPreTraining"}
    image_config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert image_config["auto_map"] == {"AutoImageProcessor": "processing_image_processing.XrayVisualImageProcessor"}
    models = [name for name in written if not name.startswith("processing_")]
    assert "losses_per_sample.py" in models and "losses.py" not in models  # re-exports resolved, not whole packages
    for name in written:
        text = (tmp_path / name).read_text()
        assert "xray_hf." not in "".join(line for line in text.splitlines() if line.lstrip().startswith(("from", "import")))
        assert {f"{m}.py" for m in get_relative_imports(tmp_path / name)} <= set(written)
    for name in models:  # what transformers' check_imports will ask for
        assert required_packages((tmp_path / name).read_text()) <= {"torch", "transformers"}, name
    assert REMOTE_CODE_REQUIREMENTS >= {"torch", "transformers"}


def test_classifier_export_maps_image_classification(tmp_path):
    XrayVisualForImageClassification(XrayVisualConfig.from_preset("tiny", num_labels=3)).save_pretrained(tmp_path)
    export_remote_code(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_classification.XrayVisualForImageClassification"
    assert "AutoModelForPreTraining" not in auto_map


def test_flattening_rewrites_relative_package_and_function_level_imports():
    source = flatten_source("xray_hf.modeling.clip")
    assert "from .configuration_clip import LOGIT_SCALE_MAX, XrayCLIPConfig" in source
    assert "        from .losses_clip import CLIPStageLoss" in source  # lazy import inside a method, flattened too
    assert not re.search(r"^\s*(from\s+(\.\.|xray_hf)|import\s+xray_hf)", source, flags=re.MULTILINE)


def test_export_refuses_a_checkpoint_of_another_library(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(ValueError, match="not one of xray_hf's"):
        export_remote_code(tmp_path)


def test_drop_path_matches_timm():
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(8, 5, 4)
    ours, theirs = XrayVisualDropPath(0.3).train(), timm_layers.DropPath(0.3).train()
    torch.manual_seed(3)
    expected = theirs(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours(x), expected, atol=0, rtol=0)
    assert torch.equal(ours.eval()(x), x)


# ------------------------------------------------------------------------------------------ fresh environment
VENV_SCRIPT = r"""
import importlib.util, json, sys
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForPreTraining, AutoProcessor

assert importlib.util.find_spec("xray_hf") is None, "xray_hf must not be importable here"
spec = json.loads(sys.argv[1])
images = [Image.open(path) for path in spec["images"]]
out = {}
clip = AutoModel.from_pretrained(spec["clip"], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(spec["clip"], trust_remote_code=True)
inputs = processor(text=spec["captions"], images=images, return_tensors="pt")
with torch.no_grad():
    out["clip_image"] = clip.get_image_features(inputs["pixel_values"]).pooler_output
    out["clip_text"] = clip.get_text_features(input_ids=inputs["input_ids"],
                                              attention_mask=inputs["attention_mask"]).pooler_output
    out["clip_logits"] = clip(**inputs).logits_per_image
llm2clip = AutoModel.from_pretrained(spec["llm2clip"], trust_remote_code=True).eval()
llm2clip_processor = AutoProcessor.from_pretrained(spec["llm2clip"], trust_remote_code=True)
llm2clip_inputs = llm2clip_processor(text=spec["captions"], images=images, return_tensors="pt")
with torch.no_grad():
    out["llm2clip_image"] = llm2clip.get_image_features(llm2clip_inputs["pixel_values"]).pooler_output
    out["llm2clip_text"] = llm2clip.get_text_features(input_ids=llm2clip_inputs["input_ids"],
                                                      attention_mask=llm2clip_inputs["attention_mask"]).pooler_output
for key in ("pixel_values", "input_ids", "attention_mask"):
    out[f"llm2clip_inputs_{key}"] = llm2clip_inputs[key].contiguous()
embedder = AutoModel.from_pretrained(spec["embedder"], trust_remote_code=True).eval()
embedder_inputs = AutoProcessor.from_pretrained(spec["embedder"], trust_remote_code=True)(
    text=spec["captions"], return_tensors="pt")
with torch.no_grad():
    out["embedder_text"] = embedder.get_text_features(**embedder_inputs).pooler_output
out["embedder_input_ids"] = embedder_inputs["input_ids"].contiguous()
alone = AutoProcessor.from_pretrained(spec["processor"], trust_remote_code=True)  # pushed by its own push_to_hub
alone_inputs = alone(text=spec["captions"], images=images, return_tensors="pt")
for key in ("pixel_values", "input_ids", "attention_mask"):
    out[f"alone_inputs_{key}"] = alone_inputs[key].contiguous()
for key in ("pixel_values", "input_ids", "attention_mask"):
    out[f"inputs_{key}"] = inputs[key].contiguous()
backbone = AutoModel.from_pretrained(spec["mae"], trust_remote_code=True).eval()
mae = AutoModelForPreTraining.from_pretrained(spec["mae"], trust_remote_code=True).eval()
image_processor = AutoImageProcessor.from_pretrained(spec["mae"], trust_remote_code=True)
pixels = image_processor(images, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    out["mae_pixels"] = pixels
    out["backbone_pooled"] = backbone(pixels).pooler_output
    out["mae_pooled"] = mae.xray_visual(pixels).pooler_output
save_file({k: v.contiguous() for k, v in out.items()}, spec["output"])
print(json.dumps({"clip": type(clip).__module__, "mae": type(mae).__module__,
                  "llm2clip_text": type(llm2clip.text_model).__name__, "alone": type(alone).__module__,
                  "embedder_llm": type(embedder.text_model.llm).__name__,
                  "peft_loaded": "peft" in sys.modules,
                  "xray_hf_loaded": any(name.startswith("xray_hf") for name in sys.modules)}))
"""


def make_venv(path: Path) -> Path:
    """A virtual environment that sees this interpreter's site-packages through a `.pth` file (no pip install). `.pth`
    files inside a directory added that way are not processed, so the editable xray_hf finder stays inactive."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "system_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_fresh_venv_loads_pushed_checkpoints_with_remote_code(hub_server, tmp_path):
    clip_dir, mae_dir = tmp_path / "clip", tmp_path / "mae"
    clip, processor = clip_checkpoint(clip_dir)
    mae = mae_checkpoint(mae_dir)
    llm2clip, llm2clip_processor = llm2clip_checkpoint(tmp_path / "llm2clip")
    embedder, embedder_processor = embedder_clip_checkpoint(tmp_path / "embedder")
    push_checkpoint(tmp_path / "embedder", "alice/remote-embedder")
    push_checkpoint(clip_dir, "alice/remote-clip")
    push_checkpoint(tmp_path / "llm2clip", "alice/remote-llm2clip")
    llm2clip_processor.push_to_hub("alice/remote-processor")  # a processor on its own, no model
    push_checkpoint(mae_dir, "alice/remote-mae")

    pictures = images(3)
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(str(tmp_path / f"image{i}.png"))
        picture.save(paths[-1])
    python = make_venv(tmp_path / "venv")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    check = subprocess.run([str(python), "-c", "import xray_hf"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode != 0 and "No module named 'xray_hf'" in check.stderr
    spec = {"clip": "alice/remote-clip", "mae": "alice/remote-mae", "llm2clip": "alice/remote-llm2clip",
            "embedder": "alice/remote-embedder",
            "processor": "alice/remote-processor", "images": paths, "captions": CAPTIONS,
            "output": str(tmp_path / "venv_outputs.safetensors")}
    run = subprocess.run([str(python), "-c", VENV_SCRIPT, json.dumps(spec)], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["clip"].startswith("transformers_modules.") and not report["xray_hf_loaded"]
    assert report["llm2clip_text"] == "XrayLLM2CLIPTextModel" and not report["peft_loaded"]
    assert report["alone"].startswith("transformers_modules.") and report["embedder_llm"] == "BertModel"

    theirs = load_file(spec["output"])
    inputs = processor(text=CAPTIONS, images=[p.copy() for p in pictures], return_tensors="pt")
    for key in ("pixel_values", "input_ids", "attention_mask"):
        torch.testing.assert_close(theirs[f"inputs_{key}"], inputs[key], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(theirs["clip_image"], clip.get_image_features(inputs["pixel_values"]).pooler_output,
                                   atol=1e-5, rtol=0)
        text = clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        torch.testing.assert_close(theirs["clip_text"], text.pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs["clip_logits"], clip(**inputs).logits_per_image, atol=1e-4, rtol=0)
        pixels = theirs["mae_pixels"]
        from xray_hf import XrayVisualImageProcessor

        ours = XrayVisualImageProcessor.from_pretrained(mae_dir)(pictures, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixels, ours, atol=0, rtol=0)
        torch.testing.assert_close(theirs["mae_pooled"], mae.xray_visual(pixels).pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs["backbone_pooled"], mae.xray_visual(pixels).pooler_output, atol=1e-5, rtol=0)

        inputs = llm2clip_processor(text=CAPTIONS, images=[p.copy() for p in pictures], return_tensors="pt")
        for key in ("pixel_values", "input_ids", "attention_mask"):
            torch.testing.assert_close(theirs[f"llm2clip_inputs_{key}"], inputs[key], atol=0, rtol=0)
            torch.testing.assert_close(theirs[f"alone_inputs_{key}"], inputs[key], atol=0, rtol=0)
        assert not inputs["attention_mask"].all()  # captions of different lengths: padding is exercised
        torch.testing.assert_close(theirs["llm2clip_image"],
                                   llm2clip.get_image_features(inputs["pixel_values"]).pooler_output, atol=1e-5, rtol=0)
        text = llm2clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        torch.testing.assert_close(theirs["llm2clip_text"], text.pooler_output, atol=1e-5, rtol=0)

        inputs = embedder_processor(text=CAPTIONS, return_tensors="pt")  # a frozen BERT in the LLM2CLIP slot
        torch.testing.assert_close(theirs["embedder_input_ids"], inputs["input_ids"], atol=0, rtol=0)
        torch.testing.assert_close(theirs["embedder_text"], embedder.get_text_features(**inputs).pooler_output,
                                   atol=1e-5, rtol=0)


def test_declared_requirements_are_allowed_and_only_for_their_model(tmp_path):
    from xray_hf import XraySemanticIDConfig, XraySemanticIDModel

    XraySemanticIDModel(XraySemanticIDConfig(embedding_dim=8, codebook_size=4, num_levels=2)).save_pretrained(tmp_path)
    written = export_remote_code(tmp_path)
    assert "vector_quantize_pytorch" in required_packages((tmp_path / "modeling_semantic_ids.py").read_text())
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"] == \
        "modeling_semantic_ids.XraySemanticIDModel"
    assert "modeling_visual.py" not in written  # its closure only


def test_llm2clip_export_carries_the_tower_and_needs_no_peft(tmp_path):
    llm2clip_checkpoint(tmp_path)
    written = export_remote_code(tmp_path)
    assert {"modeling_llm2clip.py", "configuration_text.py", "modeling_text_pooling.py"} <= set(written)
    for name in written:
        text = (tmp_path / name).read_text()
        allowed = PROCESSOR_REQUIREMENTS if name.startswith("processing_") else {"torch", "transformers"}
        assert required_packages(text) <= allowed and "peft" not in required_packages(text), name
        assert not re.search(r"^\s*(from|import)\s+peft\b", text, flags=re.MULTILINE), name
