"""`xray-hf demo INDEX`: a Gradio web app over a search index, and `--export DIR`: the same app as a Space folder.

The page has a text box, an image and a video upload, the number of results, a minimum score, filters (modality and
`column=value` pairs), a results gallery (thumbnails captioned with score and caption), the rows as JSON and the
query time. The search function is also the app's API (`/search`, for `gradio_client`), and it calls
`Searcher.search`, so the app, the CLI and the Python API return the same rows.

Gradio is kept from phoning home (`GRADIO_ANALYTICS_ENABLED=False`) and serves on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from importlib import metadata as package_metadata
from typing import Any

from PIL import Image

from .query import Searcher
from .store import read_manifest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ANY = "any"
# checkpoint files a Space needs (the weights, configs, processor and tokenizer); training state stays behind
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".md")
PACKAGE_FILE_SUFFIXES = (".py", ".json", ".yaml", ".md", ".txt")


def _picture(searcher: Searcher, row: dict[str, Any]) -> Image.Image:
    data = searcher.index.thumbnail(row["id"])
    if data is not None:
        return Image.open(io.BytesIO(data)).convert("RGB")
    path = row.get("file_path")
    if path and row.get("modality") == "image" and os.path.isfile(path):
        picture = Image.open(path).convert("RGB")
        picture.thumbnail((256, 256))
        return picture
    return Image.new("RGB", (64, 64), (200, 200, 200))


def parse_filter_text(text: str | None) -> dict[str, list[str]]:
    """`"hashtags=heart, source=openmoji"` -> `{"hashtags": ["heart"], "source": ["openmoji"]}`."""
    from .query import parse_filters

    return parse_filters([part for part in (text or "").split(",") if part.strip()])


def run_query(searcher: Searcher, text: str | None, image: Any, video: Any, k: int, min_score: float | None,
              modality: str | None, filters: str | None) -> tuple[list, list[dict[str, Any]], str]:
    """One search from the page's controls: (gallery items, rows, time line). An uploaded image wins over a video,
    which wins over the text."""
    chosen = {"image": image} if image is not None else {"video": video} if video else {"text": text}
    if not any(value is not None and value != "" for value in chosen.values()):
        return [], [], "Type a query, or upload an image or a video."
    conditions: dict[str, Any] = parse_filter_text(filters)
    if modality and modality != ANY:
        conditions["modality"] = [modality]
    threshold = None if min_score is None or min_score <= -1 else float(min_score)
    result = searcher.search(chosen.get("text"), image=chosen.get("image"), video=chosen.get("video"), k=int(k),
                             min_score=threshold, filters=conditions or None)
    gallery = [(_picture(searcher, row), f"{row['score']:.3f} · {row.get('caption') or row['id']}")
               for row in result.rows]
    what = next(iter(chosen))
    line = f"{len(result.rows)} results for the {what} query in {result.seconds * 1000:.1f} ms"
    return gallery, result.rows, line


def build_demo(searcher: Searcher, title: str | None = None):
    """The Gradio `Blocks` app over `searcher` (not launched)."""
    import gradio as gr

    index = searcher.index
    manifest = index.manifest
    title = title or f"Xray-Visual search: {', '.join(manifest.get('sources') or [])}"
    modalities = index.filter_values("modality")
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\n{len(index)} items, `{manifest['kind']}` index of {manifest['dim']}-d embeddings "
                    f"from `{os.path.basename(os.path.normpath(searcher.embedder.model_dir))}`.")
        with gr.Row():
            with gr.Column(scale=1):
                text = gr.Textbox(label="Text query", placeholder="a red heart", elem_id="query-text")
                image = gr.Image(label="Image query (more like this)", type="pil", elem_id="query-image")
                video = gr.Video(label="Video query", elem_id="query-video")
                k = gr.Slider(1, 100, value=12, step=1, label="Results", elem_id="top-k")
                min_score = gr.Slider(-1, 1, value=-1, step=0.01, label="Minimum score (-1: none)",
                                      elem_id="min-score")
                modality = gr.Dropdown([ANY, *modalities], value=ANY, label="Modality", elem_id="modality")
                filters = gr.Textbox(label="Filters: column=value, comma-separated", placeholder="hashtags=heart",
                                     elem_id="filters")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
            with gr.Column(scale=3):
                timing = gr.Markdown(elem_id="query-time")
                gallery = gr.Gallery(label="Results", columns=6, height="auto", elem_id="results")
                with gr.Accordion("Rows (JSON)", open=False):
                    rows = gr.JSON(label="Rows", elem_id="rows")

        def search(text, image, video, k, min_score, modality, filters):
            return run_query(searcher, text, image, video, k, min_score, modality, filters)

        inputs = [text, image, video, k, min_score, modality, filters]
        button.click(search, inputs, [gallery, rows, timing], api_name="search")
        text.submit(search, inputs, [gallery, rows, timing], api_name=False)
    return demo


def launch_demo(index: str | os.PathLike, model: str | os.PathLike | None = None, host: str = "127.0.0.1",
                port: int | None = None, **launch_kwargs: Any):
    """Open the index with its checkpoint and serve the demo (blocking unless `prevent_thread_lock=True`)."""
    demo = build_demo(Searcher(index, model))
    demo.launch(server_name=host, server_port=port, share=False, **launch_kwargs)
    return demo


# ---------------------------------------------------------------------------------------------------- Space export
APP = '''"""Xray-Visual search demo (written by `xray-hf demo --export`)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from xray_hf.search.demo import launch_demo  # noqa: E402  (the package folder beside this file)

INDEX = {index}
MODEL = {model}

if __name__ == "__main__":
    if INDEX.startswith("hub:") or MODEL.startswith("hub:"):
        from huggingface_hub import snapshot_download

        if INDEX.startswith("hub:"):
            INDEX = snapshot_download(INDEX[4:], repo_type="dataset")
        if MODEL.startswith("hub:"):
            MODEL = snapshot_download(MODEL[4:])
    here = os.path.dirname(os.path.abspath(__file__))
    launch_demo(os.path.join(here, INDEX), model=os.path.join(here, MODEL),
                host="0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
'''

README = """---
title: Xray-Visual search
emoji: 🔎
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
tags:
- xray_hf
- xray-visual
- image-search
---

# Xray-Visual search

Search {count} items ({sources}) by text, image or video with an Xray-Visual CLIP model: a `{kind}` faiss index of
{dim}-d embeddings. Written by `xray-hf demo --export`; run it locally with `python app.py`.
"""


def _copy_files(source: str, target: str, suffixes: tuple[str, ...]) -> None:
    """Top-level files of `source` with `suffixes` (no training state: checkpoint folders and optimizer files)."""
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if os.path.isfile(path) and name.endswith(suffixes) and not name.startswith(("trainer_state", "training_args")):
            shutil.copy2(path, os.path.join(target, name))


def _copy_package(target: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the xray_hf package
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        relative = os.path.relpath(folder, root)
        for name in files:
            if name.endswith(PACKAGE_FILE_SUFFIXES):
                os.makedirs(os.path.join(target, relative), exist_ok=True)
                shutil.copy2(os.path.join(folder, name), os.path.join(target, relative, name))


def requirements() -> list[str]:
    """The Space's pip requirements: the package's own dependencies (no extras) and gradio."""
    import gradio

    try:
        declared = package_metadata.requires("xray-hf") or []
    except package_metadata.PackageNotFoundError:
        declared = []
    needed = [req for req in declared if "extra ==" not in req]
    return [*needed, f"gradio=={gradio.__version__}"]


def export_space(index: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike | None = None,
                 model_repo: str | None = None, index_repo: str | None = None) -> str:
    """Write a Space-ready folder: `app.py`, `requirements.txt`, `README.md` (front matter with `sdk: gradio`), the
    `xray_hf` package, and the index and model (copied, or loaded from `index_repo` / `model_repo` on the Hub)."""
    import gradio

    manifest = read_manifest(index)
    model = os.fspath(model) if model is not None else manifest.get("model")
    if model_repo is None and (model is None or not os.path.isdir(model)):
        raise FileNotFoundError(f"the index's model {model!r} is not a directory here: pass --model or --model-repo")
    output = os.fspath(output)
    if os.path.isdir(output) and os.listdir(output):
        raise ValueError(f"{output} exists and is not empty; export into a new directory")
    os.makedirs(output, exist_ok=True)
    if index_repo is None:
        shutil.copytree(os.fspath(index), os.path.join(output, "index"))
    if model_repo is None:
        _copy_files(model, os.path.join(output, "model"), MODEL_FILE_SUFFIXES)
    _copy_package(os.path.join(output, "xray_hf"))
    with open(os.path.join(output, "app.py"), "w", encoding="utf-8") as handle:
        handle.write(APP.format(index=json.dumps(f"hub:{index_repo}" if index_repo else "index"),
                                model=json.dumps(f"hub:{model_repo}" if model_repo else "model")))
    with open(os.path.join(output, "requirements.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(requirements()) + "\n")
    with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(README.format(gradio_version=gradio.__version__, count=manifest["count"],
                                   sources=", ".join(manifest.get("sources") or []), kind=manifest["kind"],
                                   dim=manifest["dim"]))
    return output


__all__ = ["build_demo", "export_space", "launch_demo", "parse_filter_text", "requirements", "run_query"]
