"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1, so the tests run the real `huggingface_hub` client.

It speaks the routes that huggingface_hub 2.x uses to create repos, upload (preupload, basic LFS batch + PUT,
NDJSON commit), branch, list and download, with the Hub's error shape (`{"error": ...}` plus the `X-Error-Code`
/ `X-Error-Message` headers that `hf_raise_for_status` reads). Repos are kept as real revisions: every commit
gets an id and keeps its parent, branches point at commits, and any commit id stays resolvable. File contents
live content-addressed in a temporary folder; private repos are visible only with their owner's token.

Xet: the server never offers it. Downloads carry no `X-Xet-Hash` header, so every client downloads over plain
HTTP; the LFS batch answer names the `basic` transfer. Uploads are different: huggingface_hub 2.x picks Xet for
LFS files on the client side alone (whenever `hf_xet` is importable and `HF_HUB_DISABLE_XET` is unset) without
asking the server, so clients that upload LFS files here set `HF_HUB_DISABLE_XET=1`, the documented switch that
makes the client use basic LFS. With `regular_uploads=True` the server instead takes every file as a regular
(inline) file, the way the Hub takes small text files, which lets an untouched default client push as well.

Test modules load the `hub_server` fixture with `pytest_plugins = ["hub_server"]` (PYTEST_DONT_REWRITE: this
module has no asserts, and it is imported before pytest registers it as a plugin).
"""

import base64
import fnmatch
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

TEST_USER = "tester"
TEST_TOKEN = "hf_loopback_tester_token_0123456789"
OTHER_USER = "someone-else"
OTHER_TOKEN = "hf_loopback_other_token_9876543210"
DEFAULT_BRANCH = "main"
MAX_REGULAR_SIZE = 10 * 1024 * 1024
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.npz", "*.npy", "*.zip", "*.tar*", "*.pkl")
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
REPO_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_ROUTE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/([^/]+)(?:/([^/]+))?(?:/(.+))?)?$")
LFS_ROUTE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)$")
RESOLVE_ROUTE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
UPLOAD_ROUTE = re.compile(r"^/_lfs/([0-9a-f]{64})$")
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


class HubError(Exception):
    """An error answered in the Hub's shape: status, `{"error": message}`, `X-Error-Code` / `X-Error-Message`."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class Blob:
    """One file version: its git object id, size, content address and whether it is stored in LFS."""

    oid: str
    size: int
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit:
        """A branch name (`refs/heads/` optional) or a full commit id; RevisionNotFound otherwise."""
        name = revision.removeprefix("refs/heads/")
        oid = self.branches.get(name, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def card_metadata(readme: bytes | None) -> dict:
    """The YAML front matter of a README as a dict ({} when there is none)."""
    match = FRONT_MATTER.match(readme.decode("utf-8", "replace")) if readme else None
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else {}


def model_index_errors(metadata: dict) -> list[str]:
    """The structural checks the Hub applies to `model-index` (name, results, task type, metric values)."""
    errors = []
    for i, entry in enumerate(metadata.get("model-index") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            errors.append(f'"model-index[{i}].name" must be a string')
            continue
        for j, result in enumerate(entry.get("results") or []):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance(result.get("task"), dict) or "type" not in result["task"]:
                errors.append(f'"{where}.task.type" is required')
            if not isinstance(result.get("dataset"), dict) or not {"name", "type"} <= set(result["dataset"]):
                errors.append(f'"{where}.dataset" needs "name" and "type"')
            for k, metric in enumerate(result.get("metrics") or []):
                if not isinstance(metric, dict) or "type" not in metric or "value" not in metric:
                    errors.append(f'"{where}.metrics[{k}]" needs "type" and "value"')
    return errors


class HubServer:
    """The state and lifecycle of one loopback Hub: users, repos, object store, the HTTP thread."""

    def __init__(self, root: Path, regular_uploads: bool = False):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tokens = {TEST_TOKEN: TEST_USER, OTHER_TOKEN: OTHER_USER}
        self.regular_uploads = regular_uploads
        self.repos: dict[tuple[str, str], Repo] = {}
        self.pending_uploads: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubRequestHandler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="loopback-hub", daemon=True)

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- storage ---------------------------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:]

    def store(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self.object_path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return sha256

    def read(self, blob: Blob) -> bytes:
        return self.object_path(blob.sha256).read_bytes()

    def should_use_lfs(self, path: str, size: int, sample: bytes) -> bool:
        """The Hub's rule: LFS for the usual binary suffixes, for binary content and for files over 10 MiB."""
        if self.regular_uploads:
            return False
        name = path.rsplit("/", 1)[-1]
        return size >= MAX_REGULAR_SIZE or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)

    # -- repos and access ------------------------------------------------------------------------------

    def user_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def repo_for_read(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def repo_for_write(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repo_for_read(repo_type, repo_id, user)
        if user is None:
            raise HubError(401, "You must be authenticated to write to this repo")
        if user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool, user: str) -> Repo:
        repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private, created_at=now_iso())
        self.repos[(repo_type, repo_id)] = repo
        attributes = GITATTRIBUTES.encode()
        blob = Blob(git_blob_id(attributes), len(attributes), self.store(attributes), lfs=False)
        self.add_commit(repo, DEFAULT_BRANCH, None, "initial commit", "", user, {".gitattributes": blob})
        return repo

    def add_commit(
        self, repo: Repo, branch: str, parent: str | None, title: str, message: str, user: str, files: dict
    ) -> Commit:
        date = now_iso()
        tree = sorted((p, b.oid) for p, b in files.items())
        seed = json.dumps([repo.repo_id, parent, title, message, user, date, len(repo.commits), tree])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent, title, message, user, date, dict(files))
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{REPO_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # -- client configuration --------------------------------------------------------------------------

    def client_env(self, home: Path, token: str | None = None, disable_xet: bool = False) -> dict[str, str]:
        """Environment for a subprocess whose huggingface_hub/diffusers talk to this server from a fresh HF_HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if token:
            env["HF_TOKEN"] = token
        if disable_xet:
            env["HF_HUB_DISABLE_XET"] = "1"
        return env

    def patch_client(self, monkeypatch: pytest.MonkeyPatch, home: Path, disable_xet: bool = True) -> None:
        """Point this process's huggingface_hub at the server (its constants are read at import time)."""
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", disable_xet)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to a `handle_*` method; any `HubError` becomes a Hub-shaped error answer."""

    protocol_version = "HTTP/1.1"
    server_version = "loopback-hub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format: str, *args) -> None:
        """Quiet: requests are recorded in `hub.requests` (method and path, never headers) instead."""

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_HEAD(self) -> None:
        self.dispatch("HEAD")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.hub.requests.append((method, split.path))
        try:
            self.body = self.read_body()
            self.user = self.hub.user_for(self.headers.get("Authorization"))
            with self.hub.lock:
                self.route(method, split.path)
        except HubError as error:
            self.send_error_json(error)
        except (ValueError, KeyError, TypeError) as error:
            self.send_error_json(HubError(400, f"Bad request: {error!r}"))
        except Exception as error:  # a bug here: answer it as the Hub would, rather than drop the connection
            self.send_error_json(HubError(500, f"Loopback Hub error: {error!r}"))

    def route(self, method: str, path: str) -> None:
        simple = {
            ("POST", "/api/repos/create"): self.handle_create_repo,
            ("POST", "/api/repos/delete"): self.handle_delete_repo,
            ("GET", "/api/whoami-v2"): self.handle_whoami,
            ("POST", "/api/validate-yaml"): self.handle_validate_yaml,
        }
        if (method, path) in simple:
            return simple[(method, path)]()
        if match := UPLOAD_ROUTE.match(path):
            return self.handle_lfs_put(match.group(1)) if method == "PUT" else self.not_found(path)
        if match := LFS_ROUTE.match(path):
            repo_type = (match.group(1) or "models")[:-1]
            return self.handle_lfs(repo_type, match.group(2), match.group(3))
        if (match := RESOLVE_ROUTE.match(path)) and method in ("GET", "HEAD"):
            repo_type = (match.group(1) or "models")[:-1]
            return self.handle_resolve(repo_type, match.group(2), unquote(match.group(3)), unquote(match.group(4)))
        if match := API_ROUTE.match(path):
            return self.route_api(method, match.group(1)[:-1], match.group(2), *match.groups()[2:])
        self.not_found(path)

    def route_api(self, method: str, repo_type: str, repo_id: str, action, arg, rest) -> None:
        arg = unquote(arg) if arg else None
        rest = unquote(rest) if rest else ""
        if action is None and method == "GET":
            return self.handle_info(repo_type, repo_id, DEFAULT_BRANCH)
        handlers = {
            ("GET", "revision"): lambda: self.handle_info(repo_type, repo_id, arg),
            ("GET", "tree"): lambda: self.handle_tree(repo_type, repo_id, arg, rest),
            ("GET", "refs"): lambda: self.handle_refs(repo_type, repo_id),
            ("GET", "commits"): lambda: self.handle_commits(repo_type, repo_id, arg),
            ("POST", "preupload"): lambda: self.handle_preupload(repo_type, repo_id, arg),
            ("POST", "commit"): lambda: self.handle_commit(repo_type, repo_id, arg),
            ("POST", "branch"): lambda: self.handle_create_branch(repo_type, repo_id, arg),
            ("DELETE", "branch"): lambda: self.handle_delete_branch(repo_type, repo_id, arg),
            ("GET", "xet-write-token"): self.refuse_xet,
            ("GET", "xet-read-token"): self.refuse_xet,
        }
        handler = handlers.get((method, action))
        if handler is None or (action not in ("refs",) and arg is None):
            return self.not_found(f"/api/{repo_type}s/{repo_id}/{action}")
        handler()

    # -- plumbing --------------------------------------------------------------------------------------

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self) -> dict:
        return json.loads(self.body or b"{}")

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    def send_error_json(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self.send_json({"error": error.message}, error.status, headers)

    def not_found(self, path: str) -> None:
        raise HubError(404, f"Sorry, we can't find the page you are looking for: {path}")

    def refuse_xet(self) -> None:
        raise HubError(
            501, "This loopback Hub offers basic LFS transfers only, not Xet: set HF_HUB_DISABLE_XET=1 to upload"
        )

    def require_user(self) -> str:
        if self.user is None:
            raise HubError(401, "Invalid username or password.")
        return self.user

    # -- account and repos -----------------------------------------------------------------------------

    def handle_whoami(self) -> None:
        user = self.require_user()
        self.send_json({"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def handle_create_repo(self) -> None:
        user = self.require_user()
        payload = self.json_body()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if namespace != user:
            raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
        if (repo_type, repo_id) in self.hub.repos:
            url = self.hub.repo_url(self.hub.repos[(repo_type, repo_id)])
            self.send_json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
            return
        private = payload.get("visibility") == "private" or payload.get("private") is True
        repo = self.hub.create_repo(repo_type, repo_id, private, user)
        self.send_json({"url": self.hub.repo_url(repo), "name": repo_id, "id": repo_id})

    def handle_delete_repo(self) -> None:
        user = self.require_user()
        payload = self.json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        self.hub.repo_for_write(repo_type, repo_id, user)
        del self.hub.repos[(repo_type, repo_id)]
        self.send_json({})

    def handle_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.hub.repo_for_read(repo_type, repo_id, self.user)
        commit = repo.resolve(revision)
        readme = commit.files.get("README.md")
        metadata = card_metadata(self.hub.read(readme) if readme else None)
        with_blobs = self.query.get("blobs") in ("1", "true", "True")
        siblings = [self.sibling(path, blob, with_blobs) for path, blob in sorted(commit.files.items())]
        tags = list(metadata.get("tags") or [])
        self.send_json(
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo.owner,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": tags + [t for t in (metadata.get("library_name"),) if t and t not in tags],
                "pipeline_tag": metadata.get("pipeline_tag"),
                "library_name": metadata.get("library_name"),
                "cardData": metadata or None,
                "siblings": siblings,
                "usedStorage": sum(blob.size for blob in commit.files.values()),
            }
        )

    @staticmethod
    def sibling(path: str, blob: Blob, with_blobs: bool) -> dict:
        entry = {"rfilename": path}
        if with_blobs:
            entry.update(size=blob.size, blobId=blob.oid)
            if blob.lfs:
                pointer_size = len(lfs_pointer(blob.sha256, blob.size))
                entry["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": pointer_size}
        return entry

    def handle_tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        commit = self.hub.repo_for_read(repo_type, repo_id, self.user).resolve(revision)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        recursive = self.query.get("recursive") in ("1", "true", "True")
        below = {p[len(prefix) :]: b for p, b in commit.files.items() if p.startswith(prefix)}
        if prefix and not below:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        files, folders = [], {}
        for relative, blob in sorted(below.items()):
            parts = relative.split("/")
            depth_ok = recursive or len(parts) == 1
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    folders.setdefault(prefix + "/".join(parts[:i]), []).append(blob.oid)
            if depth_ok:
                files.append(self.tree_file(prefix + relative, blob))
        listing = [
            {"type": "directory", "oid": hashlib.sha1("".join(oids).encode()).hexdigest(), "size": 0, "path": p}
            for p, oids in sorted(folders.items())
        ]
        self.send_json(listing + files)

    @staticmethod
    def tree_file(path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
        if blob.lfs:
            pointer_size = len(lfs_pointer(blob.sha256, blob.size))
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": pointer_size}
        return entry

    def handle_refs(self, repo_type: str, repo_id: str) -> None:
        repo = self.hub.repo_for_read(repo_type, repo_id, self.user)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in repo.branches.items()
        ]
        self.send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def handle_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.hub.repo_for_read(repo_type, repo_id, self.user)
        history, commit = [], repo.resolve(revision)
        while commit is not None:
            history.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self.send_json(history)

    def handle_create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        repo = self.hub.repo_for_write(repo_type, repo_id, self.user)
        if branch in repo.branches:
            raise HubError(409, "Reference already exists")
        if re.fullmatch(r"[0-9a-f]{40}", branch) or branch.startswith("refs/"):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        start = self.json_body().get("startingPoint") or DEFAULT_BRANCH
        repo.branches[branch] = repo.resolve(start).oid
        self.send_json({})

    def handle_delete_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        repo = self.hub.repo_for_write(repo_type, repo_id, self.user)
        if branch == DEFAULT_BRANCH or branch not in repo.branches:
            raise HubError(400 if branch == DEFAULT_BRANCH else 404, f"Cannot delete branch {branch}")
        del repo.branches[branch]
        self.send_json({})

    def handle_validate_yaml(self) -> None:
        content = self.json_body().get("content", "")
        try:
            match = FRONT_MATTER.match(content)
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            self.send_json({"errors": [{"message": f"Invalid YAML: {error}"}]}, 400)
            return
        if not isinstance(metadata, dict):
            self.send_json({"errors": [{"message": "The metadata must be a YAML mapping"}]}, 400)
            return
        errors = model_index_errors(metadata)
        warnings = [] if metadata else [{"message": "Empty or missing yaml metadata in repo card"}]
        status = 400 if errors else 200
        self.send_json({"errors": [{"message": e} for e in errors], "warnings": warnings}, status)

    # -- uploads ---------------------------------------------------------------------------------------

    def handle_preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.hub.repo_for_write(repo_type, repo_id, self.user)
        files = repo.resolve(revision).files if revision in repo.branches else {}
        answers = []
        for item in self.json_body()["files"]:
            sample = base64.b64decode(item.get("sample", ""))
            lfs = self.hub.should_use_lfs(item["path"], int(item["size"]), sample)
            existing = files.get(item["path"])
            remote_oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            mode = "lfs" if lfs else "regular"
            answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        self.send_json({"files": answers, "commitOid": repo.branches.get(revision)})

    def handle_lfs(self, repo_type: str, repo_id: str, action: str) -> None:
        repo = self.hub.repo_for_write(repo_type, repo_id, self.user)
        payload = self.json_body()
        if action == "verify":
            path = self.hub.object_path(payload["oid"])
            if not path.exists() or path.stat().st_size != payload["size"]:
                raise HubError(404, f"Object {payload['oid']} was not uploaded")
            self.send_json({})
            return
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "This server accepts LFS uploads over the basic transfer only")
        objects = []
        for item in payload["objects"]:
            oid, size = item["oid"], int(item["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid oid"}})
            elif self.hub.object_path(oid).exists():
                objects.append({"oid": oid, "size": size})
            else:
                self.hub.pending_uploads[oid] = size
                verify = f"{self.hub.repo_url(repo)}.git/info/lfs/objects/verify"
                actions = {"upload": {"href": f"{self.hub.url}/_lfs/{oid}"}, "verify": {"href": verify}}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        self.send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def handle_lfs_put(self, oid: str) -> None:
        """The basic transfer's PUT: like a presigned URL, it needs no token, only a pending batch answer."""
        stored = self.hub.object_path(oid)
        expected_size = self.hub.pending_uploads.get(oid, stored.stat().st_size if stored.exists() else None)
        if expected_size is None:
            raise HubError(403, f"No upload was requested for object {oid}")
        if len(self.body) != expected_size or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} and size {expected_size}")
        self.hub.store(self.body)
        self.hub.pending_uploads.pop(oid, None)
        self.send_bytes(200, b"", "text/plain", {"ETag": f'"{oid}"'})

    def handle_commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.hub.repo_for_write(repo_type, repo_id, self.user)
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the loopback Hub")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to an existing branch)", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            self.apply_operation(files, line["key"], line["value"])
        commit = self.hub.add_commit(
            repo, revision, head.oid, header.get("summary") or "", header.get("description") or "", self.user, files
        )
        url = f"{self.hub.repo_url(repo)}/commit/{commit.oid}"
        self.send_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def apply_operation(self, files: dict[str, Blob], key: str, value: dict) -> None:
        path = value["path"]
        if key == "file":
            content = base64.b64decode(value["content"])
            if self.hub.should_use_lfs(path, len(content), content[:512]):
                raise HubError(400, f"Your push was rejected because {path} is a binary or large file: use LFS")
            files[path] = Blob(git_blob_id(content), len(content), self.hub.store(content), lfs=False)
        elif key == "lfsFile":
            sha256 = value["oid"]
            stored = self.hub.object_path(sha256)
            if not stored.exists():
                raise HubError(422, f"LFS object {sha256} for {path} was never uploaded")
            size = stored.stat().st_size
            files[path] = Blob(git_blob_id(lfs_pointer(sha256, size)), size, sha256, lfs=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for name in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                del files[name]
        else:
            raise HubError(400, f"Unsupported commit operation: {key}")

    # -- downloads -------------------------------------------------------------------------------------

    def handle_resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        commit = self.hub.repo_for_read(repo_type, repo_id, self.user).resolve(revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        content = self.hub.read(blob)
        status, start = 200, 0
        if match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end = int(match.group(1)), int(match.group(2) or len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            status, content = 206, content[start : end + 1]
        self.send_bytes(status, content, "application/octet-stream", headers)


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running loopback Hub; this process's huggingface_hub points at it (uploads over basic LFS)."""
    server = HubServer(tmp_path / "loopback-hub").start()
    server.patch_client(monkeypatch, tmp_path / "hf-home")
    try:
        yield server
    finally:
        server.stop()
