"""An in-memory server for the parts of the Hugging Face Hub HTTP API that huggingface_hub, transformers and datasets
call (see /work/shared/HUB.md): users and organisations by token, repositories with branches and commits, git-LFS
batch uploads, file resolution (with byte ranges), tree / paths-info listings. Model, dataset and Space repositories
(a Space is created with its `sdk`, as on the Hub).

Standard library only. `HubServer().start()` listens on 127.0.0.1 on a free port; point the clients at it with
`HF_ENDPOINT=server.url`. `server.fail_next_uploads(n)` makes the next `n` LFS PUTs fail (dropped connection or 500),
to test interrupted uploads. Nothing here is persistent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".arrow", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx",
                ".npz", ".npy", ".zip", ".tar", ".gz", ".png", ".jpg", ".jpeg", ".mp4")
LFS_THRESHOLD = 10 * 1024 * 1024
PREFIX_TO_TYPE = {"datasets": "dataset", "spaces": "space"}
TYPE_TO_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SPACE_SDKS = ("gradio", "docker", "static")


def git_blob_oid(data: bytes) -> str:
    """Git's blob id: sha1 of `blob <size>\\0<data>`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class RepoFile:
    """A file in a commit: its bytes inline (regular) or by sha256 in the LFS store."""

    size: int
    oid: str  # git blob id (of the LFS pointer for LFS files)
    content: bytes | None = None
    lfs_sha256: str | None = None

    def entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            entry["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.lfs_sha256,
                                                                                                     self.size))}
        return entry


@dataclass
class Commit:
    oid: str
    files: dict[str, RepoFile]
    summary: str
    parent: str | None
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None = None  # Spaces: the app's SDK (gradio, docker, static), required when one is created
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    """An HTTP error answered the way the Hub does: JSON `{"error": ...}`, `X-Error-Message` and `X-Error-Code`."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubState:
    """Users, organisations, repositories and the LFS object store, behind one lock."""

    def __init__(self, users: dict[str, str], orgs: dict[str, list[str]]):
        self.users = dict(users)  # token -> user name
        self.orgs = {org: set(members) for org, members in orgs.items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.RLock()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.failures_left = 0
        self.failure_mode = "drop"

    def user_orgs(self, user: str) -> list[str]:
        return sorted(org for org, members in self.orgs.items() if user in members)

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (namespace == user or namespace in self.user_orgs(user))

    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None = None) -> Repo:
        repo = Repo(repo_type, repo_id, private, sdk)
        initial = Commit(_new_oid(repo_id, "initial"), {".gitattributes": _regular(b"*.safetensors filter=lfs\n")},
                         "initial commit", None)
        repo.commits[initial.oid] = initial
        repo.branches["main"] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo


def _regular(data: bytes) -> RepoFile:
    return RepoFile(size=len(data), oid=git_blob_oid(data), content=data)


def _new_oid(*parts: str) -> str:
    return hashlib.sha1("\0".join([*parts, repr(time.time_ns())]).encode()).hexdigest()


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request; `self.server.hub` is the `HubState`."""

    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the state keeps its own log
        pass

    # -- plumbing --
    @property
    def hub(self) -> HubState:
        return self.server.hub

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        self._body_read = True
        return self.rfile.read(length) if length else b""

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = auth.split(" ", 1)[1].strip()
        if token not in self.hub.users:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.users[token]

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.log.append((self.command, self.path, status))

    def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._json({"error": error.message}, error.status, headers)

    def _dispatch(self) -> None:
        self._body_read = False
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = [unquote(p) for p in split.path.strip("/").split("/")] if split.path.strip("/") else []
        try:
            self._route(parts)
        except HubError as error:
            self._body_if_unread()
            self._error(error)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    def _body_if_unread(self) -> None:
        if not getattr(self, "_body_read", False) and self.command in ("POST", "PUT"):
            self._body()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routing --
    def _route(self, parts: list[str]) -> None:
        method = self.command
        if parts[:1] == ["api"]:
            return self._route_api(method, parts[1:])
        if parts[:1] == ["lfs-upload"] and method == "PUT":
            return self._lfs_put(parts[1])
        repo_type = "model"
        if parts and parts[0] in PREFIX_TO_TYPE:
            repo_type, parts = PREFIX_TO_TYPE[parts[0]], parts[1:]
        if len(parts) >= 5 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]:
            return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 4 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"Not found: {self.path}")

    def _route_api(self, method: str, parts: list[str]) -> None:
        if parts == ["whoami-v2"]:
            return self._whoami()
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if parts == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if parts == ["validate-yaml"]:
            self._body()
            return self._json({})
        if len(parts) >= 3 and parts[0] in ("models", "datasets", "spaces"):
            repo_type, repo_id, rest = parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]
            if not rest and method == "GET":
                return self._info(repo_type, repo_id, "main")
            action, args = rest[0], rest[1:]
            if action == "revision" and method == "GET":
                return self._info(repo_type, repo_id, args[0])
            if action == "tree" and method == "GET":
                return self._tree(repo_type, repo_id, args[0], "/".join(args[1:]))
            if action == "paths-info" and method == "POST":
                return self._paths_info(repo_type, repo_id, args[0])
            if action == "preupload" and method == "POST":
                return self._preupload(repo_type, repo_id, args[0])
            if action == "commit" and method == "POST":
                return self._commit(repo_type, repo_id, args[0])
            if action == "branch" and method == "POST":
                return self._create_branch(repo_type, repo_id, "/".join(args))
        raise HubError(404, f"Not found: {self.path}")

    # -- users and repositories --
    def _whoami(self) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json({"type": "user", "name": user, "fullname": user, "canPay": False,
                    "orgs": [{"type": "org", "name": org} for org in self.hub.user_orgs(user)],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}})

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.server.url}/{TYPE_TO_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _create_repo(self) -> None:
        user = self._user()
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user
        if user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        repo_id = f"{namespace}/{payload['name']}"
        with self.hub.lock:
            if not self.hub.can_write(user, namespace):
                raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace '
                                    f'"{namespace}"')
            existing = self.hub.repos.get((repo_type, repo_id))
            if existing is not None:
                return self._json({"error": "You already created this repo", "url": self._repo_url(existing)}, 409,
                                  {"X-Error-Message": "You already created this repo"})
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            sdk = payload.get("sdk")
            if repo_type == "space" and sdk not in SPACE_SDKS:
                raise HubError(400, f"A Space needs an sdk, one of {list(SPACE_SDKS)}; got {sdk!r}")
            repo = self.hub.create_repo(repo_type, repo_id, private, sdk if repo_type == "space" else None)
        self._json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        user = self._user()
        payload = json.loads(self._body() or b"{}")
        namespace = payload.get("organization") or user
        key = (payload.get("type") or "model", f"{namespace}/{payload['name']}")
        with self.hub.lock:
            repo = self._readable(*key)
            self._check_write(repo)
            del self.hub.repos[key]
        self._json({})

    def _readable(self, repo_type: str, repo_id: str) -> Repo:
        """The repository if the caller may read it; 404 `RepoNotFound` otherwise (as the Hub: private = absent)."""
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self.hub.can_write(self._user(), repo.namespace)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _check_write(self, repo: Repo) -> None:
        user = self._user()
        if not self.hub.can_write(user, repo.namespace):
            raise HubError(403, f"You don't have the rights to push to {repo.repo_type} {repo.repo_id}: it belongs to "
                                f'"{repo.namespace}" and you are "{user}"', "Forbidden")

    def _commit_for(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub.lock:
            repo = self._readable(repo_type, repo_id)
            commit = self._commit_for(repo, revision)
            siblings = [{"rfilename": path} for path in sorted(commit.files)]
        self._json({"id": repo_id, "_id": repo_id, "author": repo.namespace, "sha": commit.oid, "private": repo.private,
                    "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                    "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                    "siblings": siblings, **({"sdk": repo.sdk} if repo.repo_type == "space" else {})})

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        payload = json.loads(self._body() or b"{}")
        with self.hub.lock:
            repo = self._readable(repo_type, repo_id)
            self._check_write(repo)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = payload.get("startingPoint") or "main"
            repo.branches[branch] = self._commit_for(repo, start).oid
        self._json({})

    # -- listings --
    def _entries(self, commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path}/" if path else ""
        if path and path in commit.files:
            return [commit.files[path].entry(path)]
        entries: dict[str, dict[str, Any]] = {}
        for file_path, repo_file in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # the folders on the way
                folder = prefix + "/".join(rest[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, {"type": "directory", "oid": git_blob_oid(folder.encode()),
                                                "path": folder})
            if len(rest) == 1 or recursive:
                entries[file_path] = repo_file.entry(file_path)
        if path and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return list(entries.values())

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            commit = self._commit_for(self._readable(repo_type, repo_id), revision)
            entries = self._entries(commit, path, self.query.get("recursive", "false").lower() == "true")
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        with self.hub.lock:
            commit = self._commit_for(self._readable(repo_type, repo_id), revision)
            entries = []
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    entries.append(commit.files[path].entry(path))
                elif any(p.startswith(f"{path}/") for p in commit.files):
                    entries.append({"type": "directory", "oid": git_blob_oid(path.encode()), "path": path})
        self._json(entries)

    # -- download --
    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            repo = self._readable(repo_type, repo_id)
            commit = self._commit_for(repo, revision)
            repo_file = commit.files.get(path)
            if repo_file is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            data = repo_file.content if repo_file.content is not None else self.hub.lfs[repo_file.lfs_sha256]
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes", "ETag": f'"{repo_file.oid}"'}
        if repo_file.lfs_sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{repo_file.lfs_sha256}"', "X-Linked-Size": str(len(data))})
        status, byte_range = 200, self.headers.get("Range")
        if byte_range and byte_range.startswith("bytes=") and self.command == "GET":
            start_text, end_text = byte_range[len("bytes="):].split(",")[0].split("-")
            if start_text:
                start, end = int(start_text), min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
            else:  # suffix range: the last N bytes
                start, end = max(len(data) - int(end_text), 0), len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, content_type="application/octet-stream")

    # -- upload --
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        payload = json.loads(self._body() or b"{}")
        with self.hub.lock:
            repo = self._readable(repo_type, repo_id)
            self._check_write(repo)
            self._commit_for(repo, revision)
        files = []
        for item in payload.get("files", []):
            lfs = item["path"].endswith(LFS_SUFFIXES) or int(item["size"]) >= LFS_THRESHOLD
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": None})
        self._json({"files": files})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        payload = json.loads(self._body() or b"{}")
        with self.hub.lock:
            repo = self._readable(repo_type, repo_id)
            if payload.get("operation") == "upload":
                self._check_write(repo)
            objects = []
            for obj in payload.get("objects", []):
                answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in self.hub.lfs:
                    answer["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}",
                                                    "expires_in": 3600}}
                objects.append(answer)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        with self.hub.lock:
            fail = self.hub.failures_left > 0
            if fail:
                self.hub.failures_left -= 1
                mode = self.hub.failure_mode
        if fail and mode == "drop":  # read half the body, then hang up without an answer
            self.rfile.read(length // 2)
            self._body_read = True
            self.hub.log.append(("PUT", self.path, 0))
            self.close_connection = True
            return
        data = self.rfile.read(length)
        self._body_read = True
        if fail:
            raise HubError(500, "Internal Error - We're working hard to fix this as soon as possible!")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its oid {oid}")
        with self.hub.lock:
            self.hub.lfs[oid] = data
        self._send(200, b"")

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.hub.lock:
            repo = self._readable(repo_type, repo_id)
            self._check_write(repo)
            parent = self._commit_for(repo, revision)
            if revision not in repo.branches:
                raise HubError(400, f"Can only commit to a branch, got {revision}", "RevisionNotFound")
            files = dict(parent.files)
            summary = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value.get("summary", "")
                    expected = value.get("parentCommit")
                    if expected and expected != parent.oid:
                        raise HubError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    files[value["path"]] = _regular(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    if value["oid"] not in self.hub.lfs:
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    files[value["path"]] = RepoFile(size=int(value["size"]), lfs_sha256=value["oid"],
                                                    oid=git_blob_oid(lfs_pointer(value["oid"], int(value["size"]))))
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            commit = Commit(_new_oid(repo_id, revision, summary), files, summary, parent.oid)
            repo.commits[commit.oid] = commit
            repo.branches[revision] = commit.oid
        self._json({"commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}", "commitOid": commit.oid,
                    "commitMessage": summary, "pullRequestUrl": None})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubState
    url: str


class HubServer:
    """The server and its state. `users` maps tokens to user names, `orgs` organisation names to their members."""

    def __init__(self, users: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None):
        self.hub = HubState(users or {"hf_test_token": "alice"}, orgs or {})
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.url

    def start(self) -> "HubServer":
        server = _Server(("127.0.0.1", 0), HubRequestHandler)
        server.hub = self.hub
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail_next_uploads(self, count: int, mode: str = "drop") -> None:
        """Make the next `count` LFS PUTs fail: `"drop"` hangs up mid-body, `"500"` answers an internal error."""
        if mode not in ("drop", "500"):
            raise ValueError(f"mode must be 'drop' or '500', got {mode!r}")
        with self.hub.lock:
            self.hub.failures_left, self.hub.failure_mode = count, mode

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of a revision with its bytes (LFS content resolved)."""
        with self.hub.lock:
            repo = self.hub.repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            return {path: f.content if f.content is not None else self.hub.lfs[f.lfs_sha256]
                    for path, f in commit.files.items()}

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
