"""`xray-hf push` of a Space folder (`xray-hf demo --export`) and the sentence-transformers files of pushed CLIP
checkpoints, against the in-memory Hub server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from xray_hf.cli import main
from xray_hf.hub import push_checkpoint

from .checkpoints import clip_checkpoint, images
from .conftest import TOKEN


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    clip_checkpoint(directory)
    return directory


def test_push_publishes_an_exported_demo_as_a_gradio_space(hub_server, clip_dir, tmp_path, capsys):
    from xray_hf.search import build_index
    from xray_hf.search.demo import export_space

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for number, picture in enumerate(images(4)):
        picture.save(gallery / f"{number}.png")
    (gallery / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{n}.png", "caption": f"image {n}"})
                                                    + "\n" for n in range(4)))
    build_index(clip_dir, str(gallery), tmp_path / "index", progress=False)
    space = export_space(tmp_path / "index", tmp_path / "space")
    assert main(["push", space, "--repo-id", "alice/search-demo"]) == 0
    assert "pushed" in capsys.readouterr().out
    repo = hub_server.hub.repos[("space", "alice/search-demo")]
    assert repo.sdk == "gradio" and ("model", "alice/search-demo") not in hub_server.hub.repos
    files = hub_server.files("alice/search-demo", repo_type="space")
    assert {"app.py", "requirements.txt", "README.md", "index/index.json", "model/model.safetensors",
            "model/modules.json", "xray_hf/search/demo.py"} <= set(files)
    assert not [name for name in files if "__pycache__" in name]
    assert files["app.py"] == (tmp_path / "space" / "app.py").read_bytes()


def test_the_test_hub_refuses_a_space_without_sdk(hub_server):
    request = urllib.request.Request(f"{hub_server.url}/api/repos/create", method="POST",
                                     data=json.dumps({"name": "bare", "type": "space"}).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 400 and b"sdk" in error.value.read()


def test_pushed_clip_checkpoints_carry_the_sentence_transformers_files(hub_server, clip_dir, tmp_path):
    import shutil

    old = tmp_path / "old_clip"
    shutil.copytree(clip_dir, old)
    for name in ("modules.json", "sentence_bert_config.json"):  # a checkpoint saved before the files existed
        (old / name).unlink()
    push_checkpoint(old, "alice/old-clip")
    files = hub_server.files("alice/old-clip")
    config = json.loads(files["sentence_bert_config.json"])
    assert config["modality_config"]["image"] == {"method": "get_image_features", "method_output_name": "pooler_output"}
    assert json.loads(files["modules.json"])[0]["type"] == "sentence_transformers.base.modules.Transformer"
    assert not (old / "modules.json").exists()  # the local checkpoint is not modified
