"""`push_to_hub` for the package's processors: the upload also carries the processing modules as remote code and
their `auto_map`, so `AutoProcessor` / `AutoImageProcessor` / `AutoVideoProcessor.from_pretrained(repo,
trust_remote_code=True)` work without `xray_hf` (as `xray_hf.hub_mixin` does for the models).

transformers' `PushToHubMixin.push_to_hub` saves into a working folder, writes a README and hands the folder to
`_upload_modified_files`; the shared hook (`XrayHubMixin`) runs this class's `prepare_upload` there first
(`xray_hf.hub.prepare_processor_for_upload`, set by `import xray_hf`), and steps aside as Hub remote code.
"""

from __future__ import annotations

from ..hub_mixin import XrayHubMixin


class XrayProcessorHubMixin(XrayHubMixin):
    """Mixed into the package's processor classes, before transformers' processor base."""
