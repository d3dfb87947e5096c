"""`push_to_hub` for the package's models (and, through `processing.hub_mixin`, its processors): the upload also
carries the self-contained remote code and a model card.

transformers' `PushToHubMixin.push_to_hub` (and `save_pretrained(..., push_to_hub=True)`) saves into a working folder,
writes a README and hands the folder to `_upload_modified_files`; the hook `prepare_upload(folder, repo_id)` adds the
remote code (`auto_map` included) and the package's model card there, then the upload runs as transformers' does.
`import xray_hf` sets the hook (`xray_hf.hub.prepare_for_upload`); this module imports nothing from the package, so
it also runs as Hub remote code, where no hook is set and the upload is what transformers saved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar


class XrayHubMixin:
    """Mixed into the package's `PreTrainedModel` bases, before `PreTrainedModel` (and, through
    `XrayProcessorHubMixin`, into the processors)."""

    prepare_upload: ClassVar[Callable[[str | os.PathLike, str], None] | None] = None

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, *args: Any, **kwargs: Any):
        if self.prepare_upload is not None:
            self.prepare_upload(working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)
