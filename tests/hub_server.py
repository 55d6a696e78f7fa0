"""A small Hugging Face Hub-compatible HTTP server for the test suite (standard library only).

No machine that runs our tests reaches huggingface.co, yet pushing and loading pipelines must be tested with the
real ``huggingface_hub`` client. This server answers the subset of the Hub HTTP API that the client uses for
``create_repo``, ``upload_folder`` / ``create_commit`` (pre-upload, Git-LFS "basic" transfer, NDJSON commit),
``repo_info`` / ``model_info``, ``list_repo_files`` / ``list_repo_tree``, ``hf_hub_download`` and
``snapshot_download``; therefore ``DiffusionPipeline.from_pretrained`` and ``save_pretrained(push_to_hub=True)``
work against it too.

Behaviour that matters for tests:

* Point the client at it with ``HF_ENDPOINT=<server.url>`` *before* ``huggingface_hub`` is imported, and set
  ``HF_HUB_DISABLE_XET=1`` (the Xet upload protocol is not implemented; without it, large files would not upload).
* One access token is valid (``token``). Writes need it (``401`` otherwise, as on the Hub); reads of public repos
  are anonymous; private repos answer ``401 RepoNotFound`` without it.
* Files go to Git-LFS when they match the repository's ``.gitattributes`` LFS patterns (``*.safetensors`` ...),
  look binary (a NUL byte in the pre-upload sample) or weigh 10 MiB or more; the rest are committed inline. So a
  saved pipeline exercises both upload paths.
* One branch, ``main``; any commit id (or a prefix of at least 7 characters) is also a valid revision.
* ``server.requests`` records ``(method, path)`` of every request, e.g. to assert that nothing was uploaded.

Run it by hand with ``python tests/hub_server.py --port 8123 --token hf_local`` (it prints its URL).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["HubServer", "reserve_socket"]

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# Written as the first commit of every repository, as the Hub does; its `filter=lfs` patterns decide the upload mode.
_DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.safetensors",
        "*.bin",
        "*.pt",
        "*.pth",
        "*.ckpt",
        "*.pkl",
        "*.pickle",
        "*.npy",
        "*.npz",
        "*.h5",
        "*.msgpack",
        "*.onnx",
        "*.parquet",
        "*.arrow",
        "*.zip",
        "*.tar",
        "*.gz",
        "*tfevents*",
    )
).encode()
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def reserve_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind (without listening) a TCP socket, so its port is known and held before the server starts.

    Args:
        host (`str`): interface to bind.
        port (`int`): port to bind, 0 for any free one.

    Returns:
        `socket.socket`: the bound socket; pass it to [`HubServer`] as `sock`.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    return sock


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One file of a commit. `blob_id` is the git object id (of the LFS pointer for LFS files)."""

    sha256: str
    size: int
    blob_id: str
    lfs: bool


@dataclasses.dataclass
class _Commit:
    oid: str
    title: str
    date: str
    files: dict[str, _Entry]


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: list[_Commit]

    @property
    def head(self) -> _Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> _Commit | None:
        revision = urllib.parse.unquote(revision)
        if revision in ("main", "HEAD", "refs/heads/main"):
            return self.head
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            for commit in reversed(self.commits):
                if commit.oid.startswith(revision):
                    return commit
        return None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Store:
    """Repositories (in memory) and file contents (content-addressed by sha256 under `root`)."""

    def __init__(self, root: Path):
        self.objects = Path(root) / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lock = threading.RLock()
        self.upload_tickets: dict[str, str] = {}  # sha256 -> ticket of the LFS upload URL handed out
        self._counter = 0

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha256)
        if not path.exists():
            tmp = path.with_name(f"{sha256}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha256

    def regular_entry(self, data: bytes) -> _Entry:
        return _Entry(sha256=self.put(data), size=len(data), blob_id=_git_blob_id(data), lfs=False)

    def new_oid(self, repo_id: str, title: str) -> str:
        with self.lock:
            self._counter += 1
            seed = f"{repo_id}\0{title}\0{self._counter}\0{secrets.token_hex(8)}"
        return hashlib.sha1(seed.encode()).hexdigest()


class HubServer:
    """A Hub-compatible server on a background thread.

    Args:
        root (`str` or `Path`): folder for file contents (created if missing).
        host (`str`): interface to listen on (ignored when `sock` is given).
        port (`int`): port, 0 for any free one (ignored when `sock` is given).
        token (`str`): the only access token the server accepts.
        user (`str`): the user that `token` belongs to; namespace of repos created without one.
        sock (`socket.socket`, *optional*): a socket from [`reserve_socket`], to listen on a port chosen earlier.

    Example:
        ```python
        with HubServer(tmp_dir, token="hf_local") as hub:
            print(hub.url)  # set HF_ENDPOINT to this before importing huggingface_hub
        ```
    """

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "hf_local_test_token",
        user: str = "local-user",
        sock: socket.socket | None = None,
    ):
        if not isinstance(token, str) or not token:
            raise ValueError(f"`token` must be a non-empty string, got {token!r}.")
        if not _NAME_RE.match(user):
            raise ValueError(f"`user` must be a valid Hub user name, got {user!r}.")
        self.token = token
        self.user = user
        self.store = _Store(Path(root))
        self.requests: list[tuple[str, str]] = []
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        if sock is not None:
            self._httpd = ThreadingHTTPServer(sock.getsockname()[:2], handler, bind_and_activate=False)
            self._httpd.socket.close()
            self._httpd.socket = sock
            self._httpd.server_address = sock.getsockname()[:2]
            self._httpd.server_activate()
        else:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the server, the value for `HF_ENDPOINT`."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        """Serve on a daemon thread; returns `self`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted (for the command line)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- helpers for tests --------------------------------------------------------------------------
    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        """Whether `repo_id` exists (without going through HTTP)."""
        return (repo_type, repo_id) in self.store.repos

    def file_entry(self, repo_id: str, path: str, repo_type: str = "model") -> dict:
        """Size, sha256 and storage kind (`"lfs"` or `"regular"`) of a file at the head of `main`."""
        entry = self.store.repos[(repo_type, repo_id)].head.files[path]
        return {"size": entry.size, "sha256": entry.sha256, "storage": "lfs" if entry.lfs else "regular"}

    def write_requests(self) -> list[tuple[str, str]]:
        """The recorded requests that create repositories, upload or commit."""
        markers = ("/api/repos/", "/preupload/", "/commit/", "/info/lfs/", "/lfs-upload/")
        return [r for r in self.requests if any(m in r[1] for m in markers)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sde-diffusers-hub/1.0"
    hub: HubServer  # set on the bound subclass

    _API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")
    _LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/batch$")
    _RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass  # tests read `hub.requests` instead of stderr

    # --- plumbing -----------------------------------------------------------------------------------
    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def _handle(self) -> None:
        # Read the body first, whatever happens next: a keep-alive connection breaks if it is left unread.
        self.body = self._read_body()
        parsed = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(parsed.query)
        self.hub.requests.append((self.command, parsed.path))
        try:
            self._route(parsed.path)
        except _HttpError as err:
            self._error(err.status, err.message, err.code)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
            self._error(400, f"Bad request: {err}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status=status, headers=headers)

    @property
    def _base_url(self) -> str:
        # URLs handed back (repo URL, LFS upload URL) use the address the client reached us at.
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.hub.url

    def _authenticated(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip(), self.hub.token)

    def _require_auth(self) -> None:
        auth = self.headers.get("Authorization")
        if auth is None:
            raise _HttpError(401, "Invalid username or password.")
        if not self._authenticated():
            raise _HttpError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.hub.store.repos.get((repo_type, repo_id))
        # A private repo looks absent to anyone else, as on the Hub.
        if repo is None or (repo.private and not self._authenticated()):
            raise _HttpError(
                401 if self.headers.get("Authorization") is None else 404,
                "Repository not found",
                "RepoNotFound",
            )
        return repo

    @staticmethod
    def _commit(repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {urllib.parse.unquote(revision)}", "RevisionNotFound")
        return commit

    # --- routing ------------------------------------------------------------------------------------
    def _route(self, path: str) -> None:
        method = self.command
        if path == "/api/whoami-v2" and method == "GET":
            self._require_auth()
            return self._json(
                {
                    "type": "user",
                    "name": self.hub.user,
                    "fullname": self.hub.user,
                    "orgs": [],
                    "auth": {
                        "type": "access_token",
                        "accessToken": {"displayName": "local", "role": "write"},
                    },
                }
            )
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo()
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml()
        match = self._API_REPO.match(path)
        if match:
            repo_type = _REPO_TYPES[match.group(1)]
            repo_id = f"{match.group(2)}/{match.group(3)}"
            return self._repo_api(method, repo_type, repo_id, match.group(4) or "")
        match = self._LFS_BATCH.match(path)
        if match and method == "POST":
            repo_type = {None: "model", "datasets": "dataset", "spaces": "space"}[match.group(1)]
            return self._lfs_batch(repo_type, f"{match.group(2)}/{match.group(3)}")
        if path.startswith("/lfs-upload/") and method == "PUT":
            return self._lfs_put(path.rsplit("/", 1)[-1])
        match = self._RESOLVE.match(path)
        if match and method in ("GET", "HEAD"):
            repo_type = {None: "model", "datasets": "dataset", "spaces": "space"}[match.group(1)]
            repo_id = f"{match.group(2)}/{match.group(3)}"
            return self._download(repo_type, repo_id, match.group(4), urllib.parse.unquote(match.group(5)))
        raise _HttpError(404, f"Not found: {method} {path}")

    # --- repositories -------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        self._require_auth()
        payload = json.loads(self.body or b"{}")
        name, namespace = payload.get("name"), payload.get("organization") or self.hub.user
        repo_type = payload.get("type") or "model"
        if (
            repo_type not in _URL_PREFIX
            or not isinstance(name, str)
            or not _NAME_RE.match(name)
            or not _NAME_RE.match(namespace)
        ):
            raise _HttpError(400, f"Invalid repository name or type: {namespace}/{name} ({repo_type})")
        repo_id = f"{namespace}/{name}"
        url = f"{self._base_url}/{_URL_PREFIX[repo_type]}{repo_id}"
        store = self.hub.store
        with store.lock:
            if (repo_type, repo_id) in store.repos:
                return self._json(
                    {"error": "You already created this model repo", "url": url},
                    status=409,
                    headers={"X-Error-Message": "You already created this model repo"},
                )
            created = _now()
            first = _Commit(
                oid=store.new_oid(repo_id, "initial commit"),
                title="initial commit",
                date=created,
                files={".gitattributes": store.regular_entry(_DEFAULT_GITATTRIBUTES)},
            )
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            store.repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private, created, [first])
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._require_auth()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub.store.lock:
            if self.hub.store.repos.pop((repo_type, repo_id), None) is None:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
        self._send(200)

    def _validate_yaml(self) -> None:
        payload = json.loads(self.body or b"{}")
        content = payload.get("content", "")
        # Only the framing is checked: a README whose front matter is opened must close it.
        if content.startswith("---") and not re.search(r"^---\s*$", content[3:], flags=re.MULTILINE):
            return self._json({"errors": [{"message": "front matter is not closed by '---'"}]}, status=400)
        self._json({"errors": [], "warnings": []})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: str) -> None:
        action, _, tail = rest.partition("/")
        if action in ("preupload", "commit") and method == "POST":
            self._require_auth()
        repo = self._repo(repo_type, repo_id)
        if action in ("", "revision") and method in ("GET", "HEAD"):
            commit = self._commit(repo, tail.split("/", 1)[0] if action == "revision" else "main")
            return self._json(self._info(repo, commit))
        if action == "tree" and method == "GET":
            revision, _, subpath = tail.partition("/")
            commit = self._commit(repo, revision)
            recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = self._tree(commit, urllib.parse.unquote(subpath), recursive)
            if subpath and not entries:
                raise _HttpError(404, f"{subpath} does not exist", "EntryNotFound")
            return self._json(entries)
        if action == "paths-info" and method == "POST":
            commit = self._commit(repo, tail)
            if "json" in self.headers.get("Content-Type", ""):
                paths = json.loads(self.body or b"{}").get("paths", [])
            else:
                paths = urllib.parse.parse_qs(self.body.decode()).get("paths", [])
            entries = {e["path"]: e for e in self._tree(commit, "", recursive=True)}
            return self._json([entries[p] for p in paths if p in entries])
        if action == "refs" and method == "GET":
            return self._json(
                {
                    "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}],
                    "converts": [],
                    "tags": [],
                }
            )
        if action == "commits" and method == "GET":
            commit = self._commit(repo, tail or "main")
            history = repo.commits[: repo.commits.index(commit) + 1]
            return self._json(
                [
                    {"id": c.oid, "title": c.title, "message": "", "authors": [], "date": c.date}
                    for c in reversed(history)
                ]
            )
        if action == "preupload" and method == "POST":
            return self._preupload(repo, tail)
        if action == "commit" and method == "POST":
            with self.hub.store.lock:
                return self._apply_commit(repo, tail)
        raise _HttpError(404, f"Not supported: {method} /api/{repo_type}s/{repo_id}/{rest}")

    def _info(self, repo: _Repo, commit: _Commit) -> dict:
        info = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [self._sibling(path, entry) for path, entry in sorted(commit.files.items())],
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    def _sibling(self, path: str, entry: _Entry) -> dict:
        sibling = {"rfilename": path}
        if "blobs" in self.query:  # `files_metadata=True`
            sibling.update(size=entry.size, blobId=entry.blob_id)
            if entry.lfs:
                sibling["lfs"] = {
                    "sha256": entry.sha256,
                    "size": entry.size,
                    "pointerSize": len(_lfs_pointer(entry.sha256, entry.size)),
                }
        return sibling

    @staticmethod
    def _tree(commit: _Commit, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        start = f"{prefix}/" if prefix else ""
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(start):
                continue
            parts = path[len(start) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = start + "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        }
                    )
            if recursive or len(parts) == 1:
                entry = commit.files[path]
                item = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
                if entry.lfs:
                    item["lfs"] = {
                        "oid": entry.sha256,
                        "size": entry.size,
                        "pointerSize": len(_lfs_pointer(entry.sha256, entry.size)),
                    }
                entries.append(item)
        return entries

    # --- uploads ------------------------------------------------------------------------------------
    @staticmethod
    def _lfs_patterns(commit: _Commit, store: _Store) -> list[str]:
        entry = commit.files.get(".gitattributes")
        if entry is None:
            return []
        text = store.object_path(entry.sha256).read_text(errors="replace")
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.split()]

    def _preupload(self, repo: _Repo, revision: str) -> None:
        if "create_pr" in self.query:
            raise _HttpError(400, "This test server does not support pull requests.")
        commit = self._commit(repo, revision)
        patterns = self._lfs_patterns(commit, self.hub.store)
        files = []
        for item in json.loads(self.body or b"{}")["files"]:
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            name = path.rsplit("/", 1)[-1]
            as_lfs = size > 0 and (
                size >= _LFS_SIZE_THRESHOLD
                or b"\0" in sample
                or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)
            )
            current = commit.files.get(path)
            # The client skips unchanged files by comparing this with its own sha256 (LFS) / git blob id.
            remote_oid = None if current is None else (current.sha256 if current.lfs else current.blob_id)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if as_lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote_oid,
                }
            )
        self._json({"files": files, "commitOid": commit.oid})

    def _apply_commit(self, repo: _Repo, revision: str) -> None:
        if "create_pr" in self.query:
            raise _HttpError(400, "This test server does not support pull requests.")
        if urllib.parse.unquote(revision) not in ("main", "refs/heads/main"):
            raise _HttpError(400, "This test server only commits to 'main'.")
        store = self.hub.store
        files = dict(repo.head.files)
        title = "Upload files"
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value.get("summary") or title
                parent = value.get("parentCommit")
                if parent and not repo.head.oid.startswith(parent):
                    raise _HttpError(412, "parentCommit is not the head of main")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HttpError(400, "Only base64-encoded file contents are supported.")
                files[value["path"]] = store.regular_entry(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                sha256, size = value["oid"], int(value["size"])
                path = store.object_path(sha256)
                if not path.exists() or path.stat().st_size != size:
                    raise _HttpError(400, f"LFS object {sha256} of {value['path']} was not uploaded.")
                files[value["path"]] = _Entry(
                    sha256=sha256, size=size, lfs=True, blob_id=_git_blob_id(_lfs_pointer(sha256, size))
                )
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HttpError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(folder)]:
                    del files[path]
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}.")
        commit = _Commit(oid=store.new_oid(repo.repo_id, title), title=title, date=_now(), files=files)
        repo.commits.append(commit)
        url = f"{self._base_url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        self._json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": url,
                "commitMessage": title,
                "pullRequestUrl": None,
            }
        )

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_auth()
        self._repo(repo_type, repo_id)
        payload = json.loads(self.body or b"{}")
        if payload.get("operation", "upload") != "upload":
            raise _HttpError(400, "This test server only accepts LFS uploads.")
        store = self.hub.store
        objects = []
        for obj in payload.get("objects", []):
            item = {"oid": obj["oid"], "size": int(obj["size"]), "authenticated": True}
            if not store.object_path(obj["oid"]).exists():
                # The upload URL carries its own credential, like a pre-signed storage URL.
                with store.lock:
                    ticket = store.upload_tickets.setdefault(obj["oid"], secrets.token_urlsafe(16))
                href = f"{self._base_url}/lfs-upload/{obj['oid']}?ticket={ticket}"
                item["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(item)
        self._json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, sha256: str) -> None:
        store = self.hub.store
        ticket = self.query.get("ticket", [""])[0]
        expected = store.upload_tickets.get(sha256)
        if expected is None or not hmac.compare_digest(ticket, expected):
            raise _HttpError(403, "Invalid or expired upload URL.")
        if hashlib.sha256(self.body).hexdigest() != sha256:
            raise _HttpError(400, "Uploaded content does not match its sha256.")
        store.put(self.body)
        with store.lock:
            store.upload_tickets.pop(sha256, None)
        self._send(200)

    # --- downloads ----------------------------------------------------------------------------------
    def _download(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        entry = commit.files.get(filename)
        if entry is None:
            raise _HttpError(404, f"Entry not found: {filename}", "EntryNotFound")
        headers = {
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "ETag": f'"{entry.sha256 if entry.lfs else entry.blob_id}"',
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        start, end, status = 0, entry.size - 1, 200
        byte_range = self.headers.get("Range", "")
        if byte_range.startswith("bytes=") and entry.size > 0:
            first, _, last = byte_range[6:].split(",")[0].partition("-")
            start = int(first) if first else max(0, entry.size - int(last))
            end = min(int(last), entry.size - 1) if first and last else entry.size - 1
            if start >= entry.size:
                return self._send(416, headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        with open(self.hub.store.object_path(entry.sha256), "rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                chunk = fh.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a local Hugging Face Hub-compatible API for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default="hub-server-data", help="folder for uploaded file contents")
    parser.add_argument("--token", default="hf_local_test_token")
    args = parser.parse_args()
    server = HubServer(args.root, host=args.host, port=args.port, token=args.token)
    print(f"HUB_URL={server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
