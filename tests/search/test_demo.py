"""The Gradio demo, launched on 127.0.0.1 and queried through gradio_client (as gradio's own tests do), and its
export as a Space folder."""

from __future__ import annotations

import os

import pytest

from xray_hf.search import Searcher
from xray_hf.search.demo import build_demo, export_space

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(scope="module")
def served(gallery_index):
    """(searcher, url) of the demo running on 127.0.0.1."""
    searcher = Searcher(gallery_index)
    demo = build_demo(searcher)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, share=False)
    try:
        yield searcher, demo.local_url
    finally:
        demo.close()


def test_the_demo_api_gives_the_searchers_rows(served, gallery_index):
    from gradio_client import Client, handle_file

    searcher, url = served
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, verbose=False)
    gallery, rows, timing = client.predict("a blue square", None, None, 6, -1, "any", "", api_name="/search")
    expected = searcher.search("a blue square", k=6).rows
    assert rows == expected
    assert len(gallery) == 6 and gallery[0]["caption"] == f"{expected[0]['score']:.3f} · {expected[0]['caption']}"
    assert timing.startswith("6 results for the text query in ")

    _, rows, _ = client.predict("a blue square", None, None, 19, -1, "video", "tags=red", api_name="/search")
    assert rows == searcher.search("a blue square", k=19, filters={"modality": "video", "tags": "red"}).rows
    assert [row["id"] for row in rows] == ["clip_red.mp4"]
    threshold = expected[2]["score"]
    _, rows, _ = client.predict("a blue square", None, None, 6, threshold, "any", "", api_name="/search")
    assert rows == expected[:3]

    image = gallery_index.parent / "images" / "green_circle_0.png"
    _, rows, timing = client.predict("", handle_file(str(image)), None, 3, -1, "any", "", api_name="/search")
    assert rows[0]["id"] == "green_circle_0.png" and "image query" in timing
    _, rows, timing = client.predict("", None, None, 3, -1, "any", "", api_name="/search")
    assert rows == [] and timing.startswith("Type a query")


def test_export_writes_a_space_that_loads(gallery_index, tmp_path):
    import gradio

    from xray_hf.hub import is_space_folder, space_sdk

    out = export_space(gallery_index, tmp_path / "space")
    names = set(os.listdir(out))
    assert {"app.py", "requirements.txt", "README.md", "index", "model", "xray_hf"} <= names
    assert space_sdk(out) == "gradio" and is_space_folder(out)
    readme = (tmp_path / "space" / "README.md").read_text()
    assert f"sdk_version: {gradio.__version__}" in readme and "app_file: app.py" in readme
    requirements = (tmp_path / "space" / "requirements.txt").read_text().splitlines()
    assert f"gradio=={gradio.__version__}" in requirements and any(r.startswith("faiss-cpu") for r in requirements)
    assert (tmp_path / "space" / "xray_hf" / "search" / "demo.py").is_file()
    assert not list((tmp_path / "space").rglob("__pycache__"))
    compile((tmp_path / "space" / "app.py").read_text(), "app.py", "exec")
    copied = Searcher(tmp_path / "space" / "index", model=tmp_path / "space" / "model")  # fingerprint matches
    assert copied.search("a red circle", k=3).rows == Searcher(gallery_index).search("a red circle", k=3).rows

    hub = export_space(gallery_index, tmp_path / "hub_space", model_repo="me/model", index_repo="me/index")
    app = (tmp_path / "hub_space" / "app.py").read_text()
    assert '"hub:me/model"' in app and '"hub:me/index"' in app
    assert not os.path.exists(os.path.join(hub, "model")) and not os.path.exists(os.path.join(hub, "index"))
    with pytest.raises(ValueError, match="not empty"):
        export_space(gallery_index, tmp_path / "space")


def test_cli_demo_export(gallery_index, tmp_path, capsys):
    from xray_hf.cli import main

    assert main(["demo", str(gallery_index), "--export", str(tmp_path / "cli_space")]) == 0
    assert "xray-hf push" in capsys.readouterr().out and (tmp_path / "cli_space" / "app.py").is_file()
