"""Publishing checkpoints to the Hugging Face Hub (or any server at `HF_ENDPOINT`).

`push_checkpoint(directory, repo_id)` uploads what a user needs to load the model: config, safetensors weights,
processor and tokenizer files, the model card (`README.md`, built by `xray_hf.model_card` when the directory has
none) and self-contained remote code (`xray_hf.remote_code`), so `AutoModel.from_pretrained(repo_id,
trust_remote_code=True)` works without `xray_hf` installed. Training state (`checkpoint-*` folders, optimizer and
scheduler states, `training_args*`, trainer state, text / teacher caches, `runs/` logs) stays home.

The token comes from `token=` or `HF_TOKEN` (huggingface_hub's usual lookup) and is never printed, logged or put in
an error message.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .hub_mixin import XrayHubMixin
from .processing.hub_mixin import XrayProcessorHubMixin

logger = logging.getLogger(__name__)

# Never uploaded: training state and logs (paths relative to the checkpoint directory, fnmatch patterns).
TRAINING_STATE_PATTERNS = (
    "checkpoint-*", "*/checkpoint-*", "optimizer.*", "*/optimizer.*", "scheduler.*", "scaler.*", "rng_state*",
    "trainer_state.json", "training_args*", "text_cache/*", "teacher_cache/*", "*.pyc", "*/__pycache__/*",
    "__pycache__/*", ".git/*", ".cache/*",
)
LOG_PATTERNS = ("runs/*", "*.tfevents.*")
# Copied into the staging folder (they may be rewritten there); everything else is hard-linked.
_REWRITTEN_SUFFIXES = (".json", ".md")
_DEFAULT_CARD_MARKER = "This model card has been automatically generated."


class HubPushError(ValueError):
    """A push that did not go through: the server refused it, or the connection failed (then it can be retried)."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _scrub(text: str, token: str | None) -> str:
    """`text` with the token masked (belt and braces: huggingface_hub's messages do not contain it)."""
    return text.replace(token, "***") if token else text


def _server_message(error: Exception) -> str:
    """The server's own words from an `HfHubHTTPError` (its `X-Error-Message` / JSON `error`), else the error."""
    message = getattr(error, "server_message", None)
    return message or str(error).splitlines()[0]


# Connection and timeout errors of the HTTP stacks huggingface_hub may use, by module: (module, class names).
_RETRYABLE_HTTP_ERRORS = (
    ("httpx", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
    ("httpx2", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
    ("httpcore", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
    ("httpcore2", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
    ("requests", ("ConnectionError", "Timeout")),
    ("requests.exceptions", ("ChunkedEncodingError",)),
    ("urllib3.exceptions", ("TimeoutError", "ProtocolError", "NewConnectionError")),
)


def _retryable_classes() -> tuple[type, ...]:
    import importlib

    classes: list[type] = [ConnectionError, TimeoutError]
    for module_name, names in _RETRYABLE_HTTP_ERRORS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        classes += [getattr(module, name) for name in names if isinstance(getattr(module, name, None), type)]
    return tuple(classes)


def _transfer_error(error: BaseException) -> BaseException | None:
    """The HTTP error (a refusal, 4xx, or a server failure, 5xx) or the connection / timeout error behind `error`
    (huggingface_hub wraps failed LFS uploads in a RuntimeError), or None when `error` is something else: a bug or a
    local failure (disk full, a file gone), to be raised as is, not reported as an interruption to retry."""
    from huggingface_hub.errors import HfHubHTTPError

    retryable = _retryable_classes()
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else None
            if status is None or 400 <= status:
                return error
        elif isinstance(error, retryable):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def stale_generated_files(api, repo_id: str, revision: str | None, uploading: set[str]) -> list[str]:
    """Remote-code modules an earlier push wrote to the repository that this upload does not write again: top-level
    `.py` files outside `uploading` whose first line is `xray_hf.remote_code`'s header. Anything else (a user's
    `handler.py`, files in folders) is left alone. An empty list for a repository or branch with no commit yet."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .remote_code import is_generated_header

    try:
        remote = api.list_repo_files(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return []
    candidates = [path for path in remote if "/" not in path and path.endswith(".py") and path not in uploading]
    stale = []
    with tempfile.TemporaryDirectory(prefix="xray_hf_remote_py_") as folder:
        for name in candidates:
            local = api.hf_hub_download(repo_id, name, revision=revision, local_dir=folder)
            with open(local, encoding="utf-8", errors="replace") as handle:
                if is_generated_header(handle.readline()):
                    stale.append(name)
    return stale


def files_to_upload(directory: str | os.PathLike, include_logs: bool = False) -> list[str]:
    """The files of a checkpoint directory that `push_checkpoint` uploads (relative POSIX paths, sorted)."""
    root = Path(directory)
    patterns = TRAINING_STATE_PATTERNS + (() if include_logs else LOG_PATTERNS)
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
            found.append(relative)
    return found


def _fallback_card(directory: Path, repo_id: str):
    """A short card for a directory without a training record (e.g. a bare `save_pretrained`)."""
    import json

    from huggingface_hub import ModelCard, ModelCardData

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    architecture = (config.get("architectures") or [config.get("model_type", "model")])[0]
    data = ModelCardData(library_name="transformers", tags=["xray_hf", "xray-visual", config.get("model_type", "")])
    content = (f"---\n{data.to_yaml()}\n---\n\n# {repo_id}\n\nAn Xray-Visual `{architecture}` "
               f"(`model_type: {config.get('model_type')}`) written by `xray_hf`.\n\n"
               f"```python\nfrom transformers import AutoModel\n\n"
               f"model = AutoModel.from_pretrained(\"{repo_id}\", trust_remote_code=True)  # or `import xray_hf` "
               f"first, without remote code\n```\n")
    return ModelCard(content)


def build_card(directory: str | os.PathLike, repo_id: str):
    """The model card of a checkpoint: `xray_hf.model_card.build_model_card`, or a short one when the directory
    records no training stage."""
    try:
        from .model_card import build_model_card
    except ImportError as error:  # model_card.py missing from this installation
        logger.warning("no xray_hf.model_card (%s): writing a short model card", error)
        return _fallback_card(Path(directory), repo_id)
    try:
        return build_model_card(os.fspath(directory), repo_id=repo_id)
    except ValueError as error:
        logger.info("model card: %s; writing a short one", error)
        return _fallback_card(Path(directory), repo_id)


def prepare_for_upload(directory: str | os.PathLike, repo_id: str, replace_default_card: bool = True) -> None:
    """Add remote code (and `auto_map`) and a model card to a folder about to be uploaded. An existing README.md is
    kept unless it is transformers' auto-generated placeholder (with `replace_default_card`)."""
    from .remote_code import export_remote_code

    from .modeling.st_files import is_clip_checkpoint, write_sentence_transformers_files

    directory = Path(directory)
    export_remote_code(directory)
    if is_clip_checkpoint(directory):  # checkpoints saved before these files existed get them too
        write_sentence_transformers_files(directory)
    readme = directory / "README.md"
    if not readme.is_file() or (replace_default_card and _DEFAULT_CARD_MARKER in readme.read_text(encoding="utf-8")):
        build_card(directory, repo_id).save(readme)


def prepare_processor_for_upload(directory: str | os.PathLike, repo_id: str | None = None) -> None:
    """Add the processing modules (remote code) and `auto_map` to a folder holding a processor saved on its own (what
    the processors' `push_to_hub` uploads; `repo_id` is unused). The model card transformers wrote there is kept."""
    from .remote_code import export_remote_code

    export_remote_code(directory, processors_only=True)


def install_upload_hooks() -> None:
    """Make the models' and processors' `push_to_hub` carry remote code and a model card (run by `import xray_hf`):
    set the `prepare_upload` hook of `XrayHubMixin` and `XrayProcessorHubMixin`."""
    XrayHubMixin.prepare_upload = staticmethod(prepare_for_upload)
    XrayProcessorHubMixin.prepare_upload = staticmethod(prepare_processor_for_upload)


def _stage(directory: Path, files: list[str], staging: Path) -> None:
    """Mirror `files` into `staging`: JSON and Markdown copied (they may be rewritten), the rest hard-linked."""
    for relative in files:
        source, target = directory / relative, staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(_REWRITTEN_SUFFIXES):
            shutil.copy2(source, target)
            continue
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def push_checkpoint(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    include_logs: bool = False,
) -> str:
    """
    Upload a checkpoint directory to the Hub repository `repo_id` (created if needed) in one commit.

    Args:
        directory: a checkpoint written by `xray-hf train` / `pipeline` or `save_pretrained` (needs `config.json`).
        repo_id: `NAMESPACE/NAME`; the namespace must be the token's user or one of their organisations.
        private: create the repository private (an existing repository keeps its visibility).
        revision: branch to commit to (created from `main` if missing); default `main`.
        commit_message: the commit's summary (default: "Upload <directory name> with xray_hf").
        token: a Hub token; default `HF_TOKEN` / the saved login. Never printed or logged.
        include_logs: also upload `runs/` (TensorBoard logs).

    Returns:
        The repository's URL (with `/tree/<revision>` for a branch).

    Raises:
        `FileNotFoundError` when the directory is missing; `HubPushError` (a `ValueError`) when the directory is not
        an xray_hf checkpoint, the server refuses (its message included) or the upload is interrupted (retry: files
        already stored are not sent again).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_token

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {os.fspath(directory)!r} does not exist")
    if not (directory / "config.json").is_file():
        raise HubPushError(f"{os.fspath(directory)} has no config.json: not a model checkpoint")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise HubPushError(f"repo_id must be NAMESPACE/NAME, got {repo_id!r}")
    token = token or get_token()
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f"Upload {directory.resolve().name} with xray_hf"

    with tempfile.TemporaryDirectory(prefix="xray_hf_push_") as staging_dir:
        staging = Path(staging_dir)
        _stage(directory, files_to_upload(directory, include_logs), staging)
        try:
            prepare_for_upload(staging, repo_id, replace_default_card=False)
        except ValueError as error:
            raise HubPushError(f"cannot publish {os.fspath(directory)}: {error}") from None
        try:
            url = str(api.create_repo(repo_id, private=private, exist_ok=True))
            if revision is not None and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
        except HfHubHTTPError as error:
            raise HubPushError(_scrub(f"the Hub at {endpoint} refused to create or open {repo_id}: "
                                      f"{_server_message(error)}", token)) from None
        logger.info("uploading %d files of %s to %s", len(list(staging.rglob("*.*"))), directory, repo_id)
        try:
            uploading = {path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file()}
            stale = stale_generated_files(api, repo_id, revision, uploading)
            if stale:
                logger.info("deleting %d remote-code modules of an earlier push: %s", len(stale), ", ".join(stale))
            # exact names (flat module names have no glob characters): nothing else in the repository is deleted
            api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision, commit_message=message,
                              delete_patterns=stale or None)
        except Exception as error:
            cause = _transfer_error(error)
            if cause is None:
                raise
            status = cause.response.status_code if isinstance(cause, HfHubHTTPError) and cause.response is not None \
                else None
            if status is not None and 400 <= status < 500:
                raise HubPushError(_scrub(f"the Hub at {endpoint} refused the upload to {repo_id}: "
                                          f"{_server_message(cause)}", token)) from None
            detail = _server_message(cause) if status is not None else f"{type(cause).__name__}: {cause}"
            raise HubPushError(_scrub(f"uploading {os.fspath(directory)} to {repo_id} was interrupted ({detail}); "
                                      f"nothing was committed, the upload can be retried (files already stored are "
                                      f"not sent again)", token)) from error
    if revision is not None and revision != "main":
        url = f"{url}/tree/{revision}"
    return url


def space_sdk(directory: str | os.PathLike) -> str | None:
    """The `sdk:` of a Space folder's README front matter (`xray-hf demo --export` writes one), else None."""
    readme = Path(directory) / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import RepoCard

    try:
        data = RepoCard.load(readme).data.to_dict()
    except ValueError:
        return None
    return data.get("sdk")


def is_space_folder(directory: str | os.PathLike) -> bool:
    """A folder to push as a Space: no model config, a README declaring an `sdk`, and its app file."""
    directory = Path(directory)
    return not (directory / "config.json").is_file() and space_sdk(directory) is not None


def push_space(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a Space folder (`xray-hf demo --export`) to the Space repository `repo_id` (created with the README's
    `sdk` if needed) in one commit; returns its URL. Errors as `push_checkpoint`'s (`HubPushError`)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_token

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Space folder {os.fspath(directory)!r} does not exist")
    sdk = space_sdk(directory)
    if sdk is None:
        raise HubPushError(f"{os.fspath(directory)} is not a Space folder: its README.md has no `sdk:` front matter")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise HubPushError(f"repo_id must be NAMESPACE/NAME, got {repo_id!r}")
    token = token or get_token()
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = str(api.create_repo(repo_id, repo_type="space", space_sdk=sdk, private=private, exist_ok=True))
        if revision is not None and revision != "main":
            api.create_branch(repo_id, repo_type="space", branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=directory, revision=revision,
                          commit_message=commit_message or f"Upload {directory.resolve().name} with xray_hf",
                          ignore_patterns=["__pycache__/*", "*/__pycache__/*", "*.pyc"])
    except HfHubHTTPError as error:
        raise HubPushError(_scrub(f"the Hub at {endpoint} refused the Space upload to {repo_id}: "
                                  f"{_server_message(error)}", token)) from None
    return url if revision in (None, "main") else f"{url}/tree/{revision}"


__all__ = ["HubPushError", "build_card", "files_to_upload", "install_upload_hooks", "is_space_folder", "prepare_for_upload",
           "prepare_processor_for_upload", "push_checkpoint", "push_space", "space_sdk", "stale_generated_files"]
