"""A tiny stand-in for the Hugging Face Hub (huggingface_hub 2.4.0), so tests never touch the network.

Serves ``root/<owner>/<name>/<branch>/<files...>``; each branch has a fixed fake commit sha (also usable
as a revision). Endpoints: ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (Range honoured),
``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes) and
``GET /api/models/{repo}/tree/{rev}[/{path}]``. Files >= ``lfs_threshold`` bytes look like LFS (sha256
ETag + X-Linked-Etag/Size). No X-Xet-* header is sent, so the client always uses plain HTTP.
Writes (what ``create_repo`` and ``create_commit`` send): ``POST /api/repos/create``,
``POST /api/validate-yaml`` (a README's front matter; part of the hub's checks),
``POST /api/models/{repo}/preupload/{rev}`` and ``POST /api/models/{repo}/commit/{rev}`` (ndjson).
Every file is accepted as a regular (base64, in the commit) upload: the stand-in serves no
LFS or Xet upload, so large files travel inline.

huggingface_hub copies HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET, ... into
``huggingface_hub.constants`` at import time, so setting env vars inside a test is too late: use
:func:`point_client_at`, which patches the constants (and sets the env vars for subprocesses).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CREATE = "/api/repos/create"
_VALIDATE = "/api/validate-yaml"
_PREUPLOAD = re.compile(r"^/api/models/([^/]+/[^/]+)/preupload/([^/]+)$")
_COMMIT = re.compile(r"^/api/models/([^/]+/[^/]+)/commit/([^/]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def commit_sha(repo_id: str, revision: str) -> str:
    """The fake, stable 40-hex commit sha of a branch."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


class _Missing(Exception):
    """A Hub-style error: the X-Error-Code header is what the client maps to an exception class."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class HubServer:
    def __init__(self, root: str | Path, token: str | None = None, lfs_threshold: int = 1 << 20) -> None:
        self.root = Path(root)
        self.token = token  # when set, every request needs "Authorization: Bearer <token>"
        self.lfs_threshold = lfs_threshold
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bytes_sent = 0  # body bytes of file transfers (resolve GETs)
        self.token_seen = False
        self._drops: dict[str, int] = {}
        self.rate: float | None = None  # bytes per second of each file transfer (None: as fast as it goes)
        self._hashes: dict[tuple[Path, int, int], tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = _quiet_on_hangup(self._httpd.handle_error)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- test helpers -------------------------------------------------------------------------
    def drop_after(self, path_suffix: str, nbytes: int) -> None:
        """Next GET of a file ending in ``path_suffix`` sends ``nbytes`` of its body, then hangs up."""
        self._drops[path_suffix] = nbytes

    def transfers(self, path_suffix: str = "") -> list[tuple[str, str, dict[str, str]]]:
        """GETs of resolve URLs (i.e. file transfers), optionally only for one file. Header keys are lower-case."""
        return [r for r in self.requests
                if r[0] == "GET" and "/resolve/" in r[1] and urlsplit(r[1]).path.endswith(path_suffix)]

    # --- repo model ---------------------------------------------------------------------------
    def _revision_dir(self, repo_id: str, revision: str) -> tuple[Path, str]:
        repo = self.root / repo_id
        if not repo.is_dir():
            raise _Missing(404, "RepoNotFound", f"Repository {repo_id} not found")
        for branch in sorted(p for p in repo.iterdir() if p.is_dir()):
            sha = commit_sha(repo_id, branch.name)
            if revision in (branch.name, sha):
                return branch, sha
        raise _Missing(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _hashes_of(self, path: Path) -> tuple[str, str]:
        """(git blob sha1, sha256), cached by mtime+size so big files are hashed once."""
        st = path.stat()
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._hashes:
            data = path.read_bytes()
            git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            self._hashes[key] = (git, hashlib.sha256(data).hexdigest())
        return self._hashes[key]

    def _entry(self, base: Path, path: Path) -> dict[str, Any]:
        """One file as the tree API describes it."""
        size = path.stat().st_size
        git, sha256 = self._hashes_of(path)
        entry: dict[str, Any] = {"type": "file", "path": path.relative_to(base).as_posix(), "size": size, "oid": git}
        if size >= self.lfs_threshold:
            entry["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
        return entry


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and Content-Length framing, as the client expects
        timeout = 30  # don't let idle keep-alive connections pin threads forever

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._handle(body=False)

        def do_GET(self) -> None:
            self._handle(body=True)

        def do_POST(self) -> None:
            self._handle(body=True)

        def _handle(self, body: bool) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}  # lower-case keys: easy lookups
            with hub._lock:
                hub.requests.append((self.command, self.path, headers))
            auth = self.headers.get("Authorization")
            if hub.token is not None and auth == f"Bearer {hub.token}":
                hub.token_seen = True
            url = urlsplit(self.path)
            try:
                if hub.token is not None and auth != f"Bearer {hub.token}":
                    # What the Hub answers for a gated repo without a valid token -> GatedRepoError.
                    raise _Missing(401, "GatedRepo", "Access to this model is restricted. You must be authenticated.")
                if self.command == "POST":
                    self._write(url.path, self.rfile.read(int(self.headers.get("Content-Length", 0))))
                elif m := _RESOLVE.match(url.path):
                    self._resolve(unquote(m[1]), unquote(m[2]), unquote(m[3]), body)
                elif m := _TREE.match(url.path):
                    self._tree(unquote(m[1]), unquote(m[2]), unquote(m[3] or ""), parse_qs(url.query))
                elif m := _INFO.match(url.path):
                    self._info(unquote(m[1]), unquote(m[2] or "main"), parse_qs(url.query))
                else:
                    raise _Missing(404, None, f"No route for {url.path}")
            except _Missing as e:
                extra = {"X-Error-Message": e.message}
                if e.code:
                    extra["X-Error-Code"] = e.code
                if e.commit:
                    extra["X-Repo-Commit"] = e.commit  # the client caches "file absent at this commit"
                self._send(e.status, json.dumps({"error": e.message}).encode(), "application/json", extra, body)

        def _send(self, status: int, data: bytes, ctype: str, extra: dict[str, str], body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _write(self, path: str, data: bytes) -> None:
            if path == _VALIDATE:  # what the hub checks of a README's front matter, in part
                self._validate_yaml(json.loads(data)["content"])
                return
            if path == _CREATE:
                req = json.loads(data)
                repo_id = f"{req.get('organization') or 'user'}/{req['name']}"
                reply: Any = {"url": f"{hub.url}/{repo_id}", "name": repo_id}
                if (hub.root / repo_id).exists():  # the hub names the repo in its 409 too
                    reply["error"] = f"You already created this model repo: {repo_id}"
                    self._send(409, json.dumps(reply).encode(), "application/json", {}, True)
                    return
                (hub.root / repo_id / "main").mkdir(parents=True)
            elif m := _PREUPLOAD.match(path):
                hub._revision_dir(unquote(m[1]), unquote(m[2]))
                reply = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in json.loads(data)["files"]]}
            elif m := _COMMIT.match(path):
                repo_id = unquote(m[1])
                base, sha = hub._revision_dir(repo_id, unquote(m[2]))
                for line in data.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        target = (base / item["value"]["path"]).resolve()
                        if not target.is_relative_to(base.resolve()):
                            raise _Missing(400, None, f"bad path {item['value']['path']}")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(item["value"]["content"]))
                    elif item["key"] != "header":
                        raise _Missing(400, None, f"the stand-in hub takes no {item['key']} operation")
                reply = {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
            else:
                raise _Missing(404, None, f"No route for POST {path}")
            self._send(200, json.dumps(reply).encode(), "application/json", {}, True)

        def _validate_yaml(self, content: str) -> None:
            """The front matter must be a YAML mapping whose base_model is a repo id or a list of
            them and whose tags are a list of strings (400 with errors, as the hub answers)."""
            errors = []
            try:
                meta = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
            except yaml.YAMLError as exc:
                meta, errors = {}, [f"YAML: {exc}"]
            if not isinstance(meta, dict):
                meta, errors = {}, ["the front matter is not a mapping"]
            base = meta.get("base_model", [])
            for b in [base] if isinstance(base, str) else base if isinstance(base, list) else [None]:
                if not isinstance(b, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", b):
                    errors.append(f'"base_model" must be a repo id or a list of them, got {b!r}')
            tags = meta.get("tags", [])
            if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                errors.append('"tags" must be a list of strings')
            reply = {"errors": [{"message": e} for e in errors]} if errors else {"warnings": []}
            self._send(400 if errors else 200, json.dumps(reply).encode(), "application/json", {}, True)

        def _info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
            base, sha = hub._revision_dir(repo_id, revision)
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for p in sorted(f for f in base.rglob("*") if f.is_file()):
                e = hub._entry(base, p)
                sib: dict[str, Any] = {"rfilename": e["path"]}
                if blobs:  # files_metadata=True sends ?blobs=true
                    sib.update(size=e["size"], blobId=e["oid"])
                    if "lfs" in e:
                        sib["lfs"] = {"size": e["size"], "sha256": e["lfs"]["oid"], "pointerSize": 134}
                siblings.append(sib)
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": hub.token is not None,
                    "gated": False, "disabled": False, "tags": [], "siblings": siblings}
            self._send(200, json.dumps(info).encode(), "application/json", {}, True)

        def _tree(self, repo_id: str, revision: str, sub: str, query: dict[str, list[str]]) -> None:
            base, _ = hub._revision_dir(repo_id, revision)
            start = (base / sub).resolve()
            if not start.is_relative_to(base.resolve()) or not start.is_dir():
                raise _Missing(404, "EntryNotFound", f"{sub} does not exist on {revision}")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = []
            for p in sorted(start.rglob("*") if recursive else start.iterdir()):
                if p.is_file():
                    entries.append(hub._entry(base, p))
                else:  # folder oid is not used by the client for downloads; any stable hex will do
                    rel = p.relative_to(base).as_posix()
                    entries.append({"type": "directory", "path": rel, "oid": hashlib.sha1(rel.encode()).hexdigest()})
            self._send(200, json.dumps(entries).encode(), "application/json", {}, True)

        def _resolve(self, repo_id: str, revision: str, filename: str, body: bool) -> None:
            base, sha = hub._revision_dir(repo_id, revision)
            path = (base / filename).resolve()
            if not path.is_relative_to(base.resolve()) or not path.is_file():
                raise _Missing(404, "EntryNotFound", f"{filename} does not exist on {revision}", commit=sha)
            size = path.stat().st_size
            git, sha256 = hub._hashes_of(path)
            extra = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            if size >= hub.lfs_threshold:  # the client treats a sha256 etag as an LFS file
                extra.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(size)})
            else:
                extra["ETag"] = f'"{git}"'
            start, end, status = 0, size - 1, 200
            if body and (m := _RANGE.match(self.headers.get("Range", ""))):
                start, end, status = int(m[1]), int(m[2] or size - 1), 206
                if start >= size:
                    extra["Content-Range"] = f"bytes */{size}"
                    self._send(416, b"", "text/plain", extra, body)
                    return
                end = min(end, size - 1)
                extra["Content-Range"] = f"bytes {start}-{end}/{size}"
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))  # full length, even when we drop early
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if not body:
                return
            limit = end - start + 1
            with hub._lock:
                suffix = next((s for s in hub._drops if filename.endswith(s)), None)
                if suffix is not None:
                    limit = min(limit, hub._drops.pop(suffix))
                    self.close_connection = True  # hang up after the short body -> client sees truncation
            with path.open("rb") as f:
                f.seek(start)
                remaining = limit
                step = 1 << (12 if hub.rate else 16)
                while remaining > 0 and (chunk := f.read(min(remaining, step))):
                    self.wfile.write(chunk)
                    if hub.rate:
                        time.sleep(len(chunk) / hub.rate)
                    remaining -= len(chunk)
                    with hub._lock:
                        hub.bytes_sent += len(chunk)

    return Handler


def _quiet_on_hangup(handle_error: Any) -> Any:
    """A client that hangs up mid-transfer (killed on purpose) is not a server error."""
    def handle(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(request, client_address)
    return handle


def point_client_at(monkeypatch: Any, url: str, home: str | Path) -> None:
    """Aim an already-imported huggingface_hub at ``url``, with HF_HOME/HF_HUB_CACHE under ``home``.

    Env vars are set for subprocesses and for code that reads them at call time (HF_TOKEN); the
    constants are patched because huggingface_hub copied the env vars into them at import.
    """
    from huggingface_hub import constants, hf_api

    home = Path(home)
    values = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",  # used by hf_hub_url
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),  # no stray token from the developer's machine
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,  # tests/conftest.py sets HF_HUB_OFFLINE=1 for everything else
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    env = {"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # read at call time: no implicit token
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # the HfApi behind huggingface_hub.model_info etc.
