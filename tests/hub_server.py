"""A small Hugging Face Hub on 127.0.0.1 for tests: the part of the HTTP protocol that `huggingface_hub` uses.

It stores exactly the bytes the client sends (content-addressed blobs in a temp folder, one snapshot per commit),
serves them back by revision, and checks bearer tokens: writes need a token with write access to the namespace,
reads of a private repository need its owner's token. Model, Space and dataset repositories are kept apart: a model
under its id (``ns/name``), the others as the Hub's URLs name them (``spaces/ns/name``, ``datasets/ns/name``).
Standard library only.
"""

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import yaml

REPO_TYPES = "(models|spaces|datasets)"


def repo_key(kind: str | None, repo_id: str) -> str:
    """How the server files a repository: ``ns/name`` for a model, ``spaces/ns/name`` or ``datasets/ns/name``."""
    kind = (kind or "model").rstrip("s")
    return repo_id if kind == "model" else f"{kind}s/{repo_id}"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Repositories in ``root``; ``tokens`` maps a token to (user, role) with role "write" or "read"."""

    def __init__(self, root: Path, tokens: dict[str, tuple[str, str]]):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = tokens
        self.repos: dict[str, dict] = {}  # repo_key -> {"private", "commits": [(oid, {path: sha256})]}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll, so that stop() (which waits for the next poll) takes milliseconds, not half a second
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ storage
    def store_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / digest
        if not path.exists():
            path.write_bytes(data)
        return digest

    def blob(self, digest: str) -> bytes:
        return (self.root / "blobs" / digest).read_bytes()

    def snapshot(self, repo_id: str, revision: str = "main") -> tuple[str, dict] | None:
        commits = self.repos[repo_id]["commits"]
        if revision in ("main", "HEAD"):
            return commits[-1]
        for oid, files in commits:
            if oid == revision:
                return oid, files
        return None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """What the server holds for a repository at a revision: path -> bytes (for the tests' checks)."""
        _, files = self.snapshot(repo_id, revision)
        return {path: self.blob(digest) for path, digest in files.items()}

    # ------------------------------------------------------------------ HTTP
    def _handler_class(self):
        return type("BoundHubRequestHandler", (HubRequestHandler,), {"hub": self})


class HubRequestHandler(BaseHTTPRequestHandler):
    """The Hub's HTTP routes; ``hub`` (the FakeHub it serves) is set on a subclass per server."""

    hub: "FakeHub"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # -------------------------------------------------- helpers
    def _user(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None, None
        return self.hub.tokens.get(header[len("Bearer ") :], (None, None))

    def _has_bad_token(self):
        header = self.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[len("Bearer ") :] not in self.hub.tokens

    def _send(self, status, body=b"", headers=None, content_type="application/json", head=False):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status, code, message, head=False, headers=None):
        extra = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        self._send(status, {"error": message}, extra, head=head)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _repo_for_read(self, repo_id, head=False):
        repo = self.hub.repos.get(repo_id)
        user, _ = self._user()
        if self._has_bad_token():
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header", head)
            return None
        if repo is None or (repo["private"] and user != repo_id.split("/")[-2]):
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head)
            return None
        return repo

    def _snapshot_for_read(self, repo_id, revision, head=False):
        """(repo, commit oid, files) at a revision, or None after answering the error."""
        repo = self._repo_for_read(repo_id, head)
        if repo is None:
            return None
        snapshot = self.hub.snapshot(repo_id, revision)
        if snapshot is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return None
        return (repo, *snapshot)

    def _check_write(self, repo_id):
        user, role = self._user()
        if user is None:
            self._error(401, "Unauthorized", "Invalid username or password.")
            return False
        if role != "write" or repo_id.split("/")[-2] != user:
            self._error(403, "Forbidden", f"You don't have write access to {repo_id}.")
            return False
        return True

    # -------------------------------------------------- routes
    def do_HEAD(self):
        self._route("HEAD")

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _route(self, method):
        parsed = urlparse(self.path)
        path = unquote(parsed.path)
        self.hub.requests.append((method, path))
        try:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml()
            if method == "GET" and path == "/api/whoami-v2":
                return self._whoami()
            match = re.fullmatch(rf"/api/{REPO_TYPES}/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
            if method == "POST" and match:
                key = repo_key(match[1], match[2])
                return self._preupload(key) if match[3] == "preupload" else self._commit(key, match[4])
            match = re.fullmatch(rf"/api/{REPO_TYPES}/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if method == "GET" and match:
                key = repo_key(match[1], match[2])
                return self._tree(key, match[3], (match[4] or "").strip("/"), parse_qs(parsed.query))
            match = re.fullmatch(rf"/api/{REPO_TYPES}/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if method == "GET" and match:
                return self._model_info(repo_key(match[1], match[2]), match[3] or "main")
            match = re.fullmatch(r"/(?:(spaces|datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if method in ("GET", "HEAD") and match:
                return self._resolve(repo_key(match[1], match[2]), match[3], match[4], head=method == "HEAD")
            self._error(404, "NotFound", f"No route for {method} {path}", head=method == "HEAD")
        except Exception as error:  # a fixture bug must show up as a 500, not a hung client
            self._error(500, "InternalError", repr(error), head=method == "HEAD")

    def _whoami(self):
        user, role = self._user()
        if user is None:
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": role}}})

    def _create_repo(self):
        payload = json.loads(self._body() or b"{}")
        name = payload.get("name", "")
        namespace = payload.get("organization")
        if namespace is None:
            user, _ = self._user()
            namespace = user
        repo_id = name if "/" in name else f"{namespace}/{name}"
        kind = payload.get("type") or "model"
        if kind == "space" and not payload.get("sdk"):
            return self._error(400, "BadRequest", "A Space needs an sdk (gradio, docker or static).")
        key = repo_key(kind, repo_id)
        if not self._check_write(key):
            return
        url = f"{self.hub.endpoint}/{key}"
        with self.hub.lock:
            if key in self.hub.repos:
                return self._send(409, {"error": f"You already created this {kind} repo", "url": url})
            oid = hashlib.sha1(f"init {key} {time.time()}".encode()).hexdigest()
            private = bool(payload.get("private")) or payload.get("visibility") in ("private", "protected")
            self.hub.repos[key] = {"private": private, "commits": [(oid, {})], "sdk": payload.get("sdk")}
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self):
        content = json.loads(self._body() or b"{}").get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as error:
                errors.append({"message": str(error)})
        self._send(400 if errors else 200, {"errors": errors, "warnings": []})

    def _preupload(self, repo_id):
        if repo_id not in self.hub.repos:
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if not self._check_write(repo_id):
            return
        files = json.loads(self._body() or b"{}").get("files", [])
        self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def _commit(self, repo_id, revision):
        if repo_id not in self.hub.repos:
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if not self._check_write(repo_id):
            return
        if revision != "main":
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.hub.lock:
            _, files = self.hub.repos[repo_id]["commits"][-1]
            files = dict(files)
            summary = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    if value.get("encoding") != "base64":
                        return self._error(400, "BadRequest", "only base64 file content is supported")
                    files[value["path"]] = self.hub.store_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                else:
                    return self._error(400, "BadRequest", f"unsupported commit operation {key}")
            oid = hashlib.sha1((summary + json.dumps(sorted(files.items())) + str(time.time())).encode()).hexdigest()
            self.hub.repos[repo_id]["commits"].append((oid, files))
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{oid}"})

    def _model_info(self, repo_id, revision):
        found = self._snapshot_for_read(repo_id, revision)
        if found is None:
            return
        repo, oid, files = found
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self._send(
            200,
            {
                "_id": oid,
                "id": "/".join(repo_id.split("/")[-2:]),
                "modelId": "/".join(repo_id.split("/")[-2:]),
                "author": repo_id.split("/")[-2],
                "sdk": repo.get("sdk"),
                "sha": oid,
                "private": repo["private"],
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": now,
                "createdAt": now,
                "siblings": [{"rfilename": path} for path in sorted(files)],
            },
        )

    def _tree(self, repo_id, revision, prefix, query):
        found = self._snapshot_for_read(repo_id, revision)
        if found is None:
            return
        _, _, files = found
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path, digest in sorted(files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            relative = path[len(prefix) + 1 :] if prefix else path
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                data = self.hub.blob(digest)
                entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path})
        self._send(200, entries)

    def _resolve(self, repo_id, revision, file_path, head):
        found = self._snapshot_for_read(repo_id, revision, head)
        if found is None:
            return
        _, oid, files = found
        if file_path not in files:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist", head, {"X-Repo-Commit": oid})
        data = self.hub.blob(files[file_path])
        headers = {"X-Repo-Commit": oid, "ETag": f'"{git_blob_sha1(data)}"'}
        self._send(200, data, headers, content_type="application/octet-stream", head=head)
