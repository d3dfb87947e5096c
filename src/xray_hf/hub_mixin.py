"""`push_to_hub` for the package's models (and, through `processing.hub_mixin`, its processors): the upload also
carries the self-contained remote code and a model card.

transformers' `PushToHubMixin.push_to_hub` (and `save_pretrained(..., push_to_hub=True)`) saves into a working folder,
writes a README and hands the folder to `_upload_modified_files`; the hook adds the remote code (`auto_map` included)
and the package's model card there, then uploads as transformers does. The package is imported by name at call time,
so this module imports nothing from it: as Hub remote code (no `xray_hf` installed) the hook steps aside.
"""

from __future__ import annotations

import importlib
import os
from typing import Any


class XrayHubMixin:
    """Mixed into the package's `PreTrainedModel` bases, before `PreTrainedModel` (and, through
    `XrayProcessorHubMixin`, into the processors)."""

    _hub_prepare = "prepare_for_upload"  # the `xray_hf.hub` function that readies the folder: (folder, repo_id)

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, *args: Any, **kwargs: Any):
        try:
            hub = importlib.import_module("xray_hf.hub")
        except ModuleNotFoundError:  # running as remote code: upload what transformers saved
            hub = None
        if hub is not None:
            getattr(hub, self._hub_prepare)(working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)
