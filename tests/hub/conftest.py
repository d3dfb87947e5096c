"""Fixtures of the Hub tests: an in-memory Hub server (tests/hub_server.py) on 127.0.0.1, with the clients pointed at
it. huggingface_hub, transformers and datasets read their endpoint and cache settings when imported, so besides the
environment (for subprocesses) the fixture patches the values they already hold."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_server import HubServer  # noqa: E402

TOKEN = "hf_xray_TEST_TOKEN_0123456789abcdef"  # alice's; recognisable, so tests can assert it never leaks
OTHER_TOKEN = "hf_bob_token_for_tests"


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running server with users `alice` (`TOKEN`, member of org `xray-org`) and `bob`; the clients use alice."""
    import datasets.config
    import huggingface_hub.constants as hub_constants
    import transformers.dynamic_module_utils
    import transformers.utils.hub

    server = HubServer(users={TOKEN: "alice", OTHER_TOKEN: "bob"}, orgs={"xray-org": ["alice"]}).start()
    home = tmp_path / "hf_home"
    env = {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_CACHE": str(home / "hub"), "HF_DATASETS_CACHE": str(home / "datasets"),
           "HF_MODULES_CACHE": str(home / "modules"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    patches = [
        (hub_constants, "ENDPOINT", server.url),
        (hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"),
        (hub_constants, "HF_HUB_DISABLE_XET", True),
        (hub_constants, "HF_HUB_OFFLINE", False),
        (hub_constants, "HF_HOME", str(home)),
        (hub_constants, "HF_HUB_CACHE", str(home / "hub")),
        (hub_constants, "HF_TOKEN_PATH", str(home / "token")),
        (hub_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens")),
        (datasets.config, "HF_ENDPOINT", server.url),
        (datasets.config, "HF_HUB_OFFLINE", False),
        (datasets.config, "HF_DATASETS_CACHE", home / "datasets"),
        (datasets.config, "HF_MODULES_CACHE", home / "datasets_modules"),
        (transformers.utils.hub, "HF_MODULES_CACHE", str(home / "modules")),
        (transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(home / "modules")),
        (transformers.utils.hub, "_hf_api", None),  # transformers' shared HfApi holds the endpoint it was made with
    ]
    for module, name, value in patches:
        if hasattr(module, name) or name == "_hf_api":
            monkeypatch.setattr(module, name, value)
    try:
        yield server
    finally:
        server.stop()
