import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from xray_hf.cli import main


def test_embed_prints_the_embedding_shape(capsys):
    assert main(["embed"]) == 0
    assert capsys.readouterr().out.strip() == "embedding shape: (1, 64)"


def test_embed_a_file_and_a_saved_model(tmp_path, capsys):
    from xray_hf import XrayVisualConfig, XrayVisualModel

    XrayVisualModel(XrayVisualConfig.from_preset("tiny", hidden_size=32)).save_pretrained(tmp_path / "model")
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "wide.png")
    assert main(["embed", str(tmp_path / "wide.png"), "--model", str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.strip() == "embedding shape: (1, 32)"


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
