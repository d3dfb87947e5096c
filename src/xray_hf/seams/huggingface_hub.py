"""huggingface_hub's private names the package relies on (see `xray_hf.seams`): none. Uploads go through `HfApi`
(`create_repo`, `create_commit`, `upload_folder`, `whoami`), model cards through `ModelCard` / `EvalResult` /
`eval_results_to_model_index`, and errors through `huggingface_hub.errors`, all public. The push hook the package
overrides, `_upload_modified_files`, is transformers' (`xray_hf.seams.transformers`)."""

from __future__ import annotations

SEAMS: tuple = ()

__all__ = ["SEAMS"]
