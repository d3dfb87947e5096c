"""The sentence-transformers files of a CLIP checkpoint, so that `SentenceTransformer(clip_dir)` loads it.

sentence-transformers 5+ loads a multimodal transformers model through its generic `Transformer` module, configured
by `modules.json` (the module list) and `sentence_bert_config.json` (`modality_config`: which model method embeds
each modality and which output field holds the embedding). A CLIP checkpoint maps text, image and video to
`get_text_features`, `get_image_features` and `get_video_features`, each reading `pooler_output`, so
`model.encode(["a red heart"])` equals `get_text_features(...).pooler_output` (unnormalised, as the model returns
it; pass `normalize_embeddings=True` for unit vectors). MTEB / MIEB read the modalities from the same file.

The module is sentence-transformers' own `Transformer` (no remote code), which calls the checkpoint's processor in
transformers 5's nested form (`processor(images=..., text_kwargs={...}, images_kwargs={...})`). This file only
writes JSON: `XrayCLIPModel.save_pretrained` and the Hub push call it, and it must not import sentence-transformers.
"""

from __future__ import annotations

import json
import os
from typing import Any

MODULES_FILE = "modules.json"
CONFIG_FILE = "sentence_bert_config.json"
MODULE_CLASS = "sentence_transformers.base.modules.Transformer"
MODALITY_METHODS = {"text": "get_text_features", "image": "get_image_features", "video": "get_video_features"}


def sentence_transformers_config(config: Any = None) -> dict[str, Any]:
    """`sentence_bert_config.json` of a CLIP checkpoint: every modality to its `get_*_features`' `pooler_output`."""
    modalities = {name: {"method": method, "method_output_name": "pooler_output"}
                  for name, method in MODALITY_METHODS.items()}
    return {"transformer_task": "feature-extraction", "modality_config": modalities,
            "module_output_name": "sentence_embedding"}


def write_sentence_transformers_files(directory: str | os.PathLike, config: Any = None) -> list[str]:
    """Write `modules.json` and `sentence_bert_config.json` into a CLIP checkpoint directory; returns their names.
    Existing files are replaced (they are derived from the model, never edited by hand)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS}]
    files = {MODULES_FILE: modules, CONFIG_FILE: sentence_transformers_config(config)}
    for name, value in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2)
            handle.write("\n")
    return sorted(files)


def is_clip_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds an `xray_clip` model config (the checkpoints these files are for)."""
    path = os.path.join(os.fspath(directory), "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle).get("model_type") == "xray_clip"
    except (OSError, ValueError):
        return False


__all__ = ["CONFIG_FILE", "MODULES_FILE", "is_clip_checkpoint", "sentence_transformers_config",
           "write_sentence_transformers_files"]
