"""`push_to_hub` for the package's processors: the upload also carries the processing modules as remote code and
their `auto_map`, so `AutoProcessor` / `AutoImageProcessor` / `AutoVideoProcessor.from_pretrained(repo,
trust_remote_code=True)` work without `xray_hf` (as `xray_hf.modeling.hub_mixin` does for the models).

transformers' `PushToHubMixin.push_to_hub` saves into a working folder, writes a README and hands the folder to
`_upload_modified_files`; the hook exports the processor's remote code there first. The package is imported by name
at call time, so this module imports nothing from it: as Hub remote code (no `xray_hf` installed) the hook steps aside.
"""

from __future__ import annotations

import importlib
import os
from typing import Any


class XrayProcessorHubMixin:
    """Mixed into the package's processor classes, before transformers' processor base."""

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, *args: Any, **kwargs: Any):
        try:
            hub = importlib.import_module("xray_hf.hub")
        except ModuleNotFoundError:  # running as remote code: upload what transformers saved
            hub = None
        if hub is not None:
            hub.prepare_processor_for_upload(working_dir)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)
