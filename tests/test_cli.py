import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from xray_hf.cli import main


def test_embed_prints_the_embedding_shape_and_throughput(capsys):
    assert main(["embed"]) == 0
    shape, throughput = capsys.readouterr().out.strip().splitlines()
    assert shape == "embedding shape: (1, 64)"
    assert re.fullmatch(r"throughput: [0-9.]+ images/s \(batch 8, eager, \d+ torch threads\)", throughput)


def test_embed_compile_compiles_the_model(capsys, monkeypatch):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from xray_hf.export.compile import compile_for_inference

    counter = CompileCounter()  # counts graphs instead of generating code (inductor: tested in tests/export)
    monkeypatch.setitem(compile_for_inference.__kwdefaults__, "backend", counter)
    torch._dynamo.reset()
    assert main(["embed", "--compile", "--batch-size", "2"]) == 0
    torch._dynamo.reset()
    assert "(batch 2, compiled," in capsys.readouterr().out
    assert counter.frame_count == 1  # warm-up and the timed calls share one graph


def test_embed_a_file_and_a_saved_model(tmp_path, capsys):
    from xray_hf import XrayVisualConfig, XrayVisualModel

    XrayVisualModel(XrayVisualConfig.from_preset("tiny", hidden_size=32)).save_pretrained(tmp_path / "model")
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "wide.png")
    assert main(["embed", str(tmp_path / "wide.png"), "--model", str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "embedding shape: (1, 32)"


def test_bad_image_gives_a_clean_error(tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(tmp_path / "broken.jpg")])
    assert exit_info.value.code == 2
    assert "cannot read" in capsys.readouterr().err


def test_console_script_is_installed():
    script = shutil.which("xray-hf") or os.path.join(os.path.dirname(sys.executable), "xray-hf")
    assert os.path.exists(script), "the xray-hf console script is not installed"
    result = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(name in result.stdout for name in ("embed", "train", "convert"))
