"""A loopback fake of the Hugging Face Hub HTTP API, enough for huggingface_hub 2.x / transformers 5 /
datasets 5 to create repos, upload (preupload, LFS batch + PUT + verify, NDJSON commit) and download
(repo info, tree, paths-info, resolve) over real HTTP.

Clients must see `HF_ENDPOINT=<hub.url>`, a dummy `HF_TOKEN` and `HF_HUB_DISABLE_XET=1` *before*
they import huggingface_hub (its constants are read at import), so tests run them in subprocesses
with `hub.env()`.

    with FakeHub() as hub:                      # a daemon thread on 127.0.0.1:<free port>
        hub.fail("POST", r"/commit/", status=500, times=1)   # inject a failure
        subprocess.run([...], env=hub.env(tmp_path))

Standalone (stops after `--idle-timeout` seconds without a request):

    python tests/fake_hub.py --port 8765 --idle-timeout 600

Endpoints and headers follow huggingface_hub 2.4's client code (hf_api.py, _commit_api.py, lfs.py,
file_download.py). Repos start, as on the Hub, with one commit holding `.gitattributes`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
LFS_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".parquet", ".arrow", ".png", ".jpg", ".gguf", ".npy", ".zip")
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = b"".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n".encode() for ext in LFS_EXTENSIONS)


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes | None  # None for LFS files: the bytes live in the LFS store
    lfs_oid: str | None = None
    size: int = 0

    @property
    def blob_oid(self) -> str:
        if self.lfs_oid is None:
            return git_blob_oid(self.content)
        return git_blob_oid(lfs_pointer(self.lfs_oid, self.size))


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.oid == oid), None)


@dataclass
class Fault:
    """Answer `status` instead of serving requests whose method and path match, `times` times (None: always)."""

    method: str
    pattern: str
    status: int
    times: int | None
    message: str


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


_API = re.compile(r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")
_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_LFS_BATCH = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")


class FakeHub:
    """In-memory Hub state plus an HTTP server on 127.0.0.1 (a free port unless one is given)."""

    def __init__(self, port: int = 0, idle_timeout: float | None = None):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status): what clients asked for
        self.timings: list[tuple[float, str, str]] = []  # (seconds since start, method, path)
        self._start = time.monotonic()
        self.drop_on_commit: set[tuple[str, str]] = set()  # (repo_id, path): files a commit silently loses (a broken server)
        self.lock = threading.RLock()
        self.idle_timeout = idle_timeout
        self._last_request = time.monotonic()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        if self.idle_timeout:
            threading.Thread(target=self._watch_idle, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch_idle(self) -> None:
        while True:
            time.sleep(min(1.0, self.idle_timeout))
            if time.monotonic() - self._last_request > self.idle_timeout:
                self.stop()
                return

    def env(self, home: str | Path | None = None) -> dict[str, str]:
        """Environment variables that point huggingface_hub (in a new process) at this server."""
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}  # offline flags, caches
        env.update(
            HF_ENDPOINT=self.url,
            HF_TOKEN="hf_fake_token_for_tests",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_ETAG_TIMEOUT="5",
            HF_HUB_DOWNLOAD_TIMEOUT="10",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            TOKENIZERS_PARALLELISM="false",
        )
        if home is not None:
            env["HF_HOME"] = str(home)
        return env

    # -- test controls -------------------------------------------------------------------------
    def fail(self, method: str, pattern: str, status: int = 500, times: int | None = 1, message: str = "injected failure") -> None:
        """Make the next `times` requests matching `method` and the regex `pattern` fail with `status`."""
        with self.lock:
            self.faults.append(Fault(method.upper(), pattern, status, times, message))

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Content of every file of a repo at a revision (LFS files resolved)."""
        with self.lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            return {path: self._content(f) for path, f in commit.files.items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            return [c.message for c in repo.commits] if repo else []

    # -- state helpers -------------------------------------------------------------------------
    def _content(self, f: StoredFile) -> bytes:
        return f.content if f.lfs_oid is None else self.lfs[f.lfs_oid]

    def _repo(self, kind: str, repo_id: str) -> Repo:
        repo = self.repos.get((kind.rstrip("s"), repo_id))
        if repo is None:
            raise HubError(404, f"Repository Not Found for url: {repo_id}.", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, branch: str, message: str, files: dict[str, StoredFile]) -> Commit:
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(repo.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{files[path].blob_oid}\n".encode())
        commit = Commit(digest.hexdigest(), message, files)
        repo.commits.append(commit)
        repo.branches[branch] = commit.oid
        return commit

    def _entry(self, path: str, f: StoredFile) -> dict:
        entry = {"type": "file", "oid": f.blob_oid, "size": f.size, "path": path}
        if f.lfs_oid is not None:
            entry["lfs"] = {"oid": f.lfs_oid, "size": f.size, "pointerSize": len(lfs_pointer(f.lfs_oid, f.size))}
        return entry

    @staticmethod
    def _folder(path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        # -- plumbing --------------------------------------------------------------------------
        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json") -> None:
            with hub.lock:
                hub.requests.append((self.command, self.path, status))
                hub.timings.append((time.monotonic() - hub._start, self.command, self.path))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, err: HubError) -> None:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message}, err.status, headers)

        def _dispatch(self) -> None:
            hub._last_request = time.monotonic()
            body = self._body() if self.command in ("POST", "PUT") else b""
            path = urlsplit(self.path).path
            with hub.lock:
                for fault in hub.faults:
                    if fault.method == self.command and re.search(fault.pattern, path) and fault.times != 0:
                        if fault.times is not None:
                            fault.times -= 1
                        return self._error(HubError(fault.status, fault.message))
            try:
                self._route(path, parse_qs(urlsplit(self.path).query), body)
            except HubError as err:
                self._error(err)

        do_GET = do_HEAD = do_POST = do_PUT = _dispatch

        def _authorized(self) -> None:
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                raise HubError(401, "Invalid credentials in Authorization header")

        # -- routes ----------------------------------------------------------------------------
        def _route(self, path: str, query: dict, body: bytes) -> None:
            method = self.command
            if path == "/api/whoami-v2":
                self._authorized()
                return self._json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                                   "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}}})
            if path == "/api/repos/create" and method == "POST":
                return self._create_repo(json.loads(body))
            if path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(json.loads(body))
            if path.startswith("/__lfs__/"):
                return self._lfs_object(path.removeprefix("/__lfs__/"), body)
            if match := _LFS_BATCH.match(path):
                return self._lfs_batch(match["kind"] or "models", unquote(match["repo"]), json.loads(body))
            if match := _RESOLVE.match(path):
                return self._resolve(match["kind"] or "models", unquote(match["repo"]), match["rev"], unquote(match["path"]))
            if match := _API.match(path):
                return self._api(method, match["kind"], unquote(match["repo"]), match["rest"] or "", query, body)
            raise HubError(404, f"fake hub: no route for {method} {path}")

        def _create_repo(self, payload: dict) -> None:
            self._authorized()
            kind = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            prefix = "" if kind == "model" else f"{kind}s/"
            url = f"{hub.url}/{prefix}{repo_id}"
            with hub.lock:
                if (kind, repo_id) in hub.repos:
                    return self._json({"error": "You already created this repo", "url": url}, 409)
                repo = Repo(kind, repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
                hub._new_commit(repo, "main", "initial commit", {".gitattributes": StoredFile(GITATTRIBUTES, size=len(GITATTRIBUTES))})
                hub.repos[(kind, repo_id)] = repo
            self._json({"url": url, "name": repo_id})

        def _validate_yaml(self, payload: dict) -> None:
            content = payload.get("content", "")
            match = re.match(r"^---\n(.*?)\n---", content, re.S)
            try:
                meta = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as err:
                return self._json({"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}, 400)
            if not isinstance(meta, dict) and meta is not None:
                return self._json({"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, 400)
            self._json({"errors": [], "warnings": []})

        def _lfs_batch(self, kind: str, repo_id: str, payload: dict) -> None:
            self._authorized()
            with hub.lock:
                hub._repo(kind, repo_id)
                objects = []
                for obj in payload["objects"]:
                    answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                    if obj["oid"] not in hub.lfs:  # already stored objects need no upload (no "actions")
                        href = f"{hub.url}/__lfs__/{kind}/{repo_id}/{obj['oid']}"  # the repo in the URL lets tests target faults
                        answer["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
                    objects.append(answer)
            self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

        def _lfs_object(self, rest: str, body: bytes) -> None:
            rest = rest.split("/", 3)[-1]  # {kind}/{namespace}/{name}/{oid}[/verify]
            if self.command == "PUT":
                oid = rest
                if hashlib.sha256(body).hexdigest() != oid:
                    raise HubError(400, f"LFS object does not match its oid {oid}")
                with hub.lock:
                    hub.lfs[oid] = body
                return self._send(200)
            if self.command == "POST" and rest.endswith("/verify"):
                payload = json.loads(body)
                with hub.lock:
                    stored = hub.lfs.get(payload["oid"])
                if stored is None or len(stored) != payload["size"]:
                    raise HubError(404, f"LFS object {payload['oid']} was not uploaded")
                return self._json({"success": True})
            raise HubError(404, "no such LFS route")

        def _resolve(self, kind: str, repo_id: str, revision: str, path: str) -> None:
            with hub.lock:
                repo = hub._repo(kind, repo_id)
                commit = hub._commit(repo, revision)
                stored = commit.files.get(path)
                if stored is None:
                    raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
                content = hub._content(stored)
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.blob_oid}"'}
            if stored.lfs_oid is not None:
                headers.update({"X-Linked-Etag": f'"{stored.lfs_oid}"', "X-Linked-Size": str(stored.size)})
            self._send(200, content, headers, content_type="application/octet-stream")

        def _api(self, method: str, kind: str, repo_id: str, rest: str, query: dict, body: bytes) -> None:
            with hub.lock:
                repo = hub._repo(kind, repo_id)
            if rest in ("", "/") or rest.startswith("/revision/"):
                revision = unquote(rest.removeprefix("/revision/")) if rest.startswith("/revision/") else "main"
                return self._info(repo, revision)
            action, _, tail = rest.lstrip("/").partition("/")
            revision, _, sub = tail.partition("/")
            if action == "preupload" and method == "POST":
                return self._preupload(repo, revision, json.loads(body))
            if action == "commit" and method == "POST":
                return self._commit(repo, unquote(revision), body, query)
            if action == "tree" and method == "GET":
                return self._tree(repo, revision, unquote(sub), query.get("recursive", ["False"])[0].lower() == "true")
            if action == "branch" and method == "POST":
                return self._create_branch(repo, unquote(revision))
            if action == "paths-info" and method == "POST":
                paths = parse_qs(body.decode()).get("paths", [])
                return self._paths_info(repo, revision, paths)
            raise HubError(404, f"fake hub: no route for {method} /api/{kind}/{repo_id}{rest}")

        def _info(self, repo: Repo, revision: str) -> None:
            with hub.lock:
                commit = hub._commit(repo, revision)
                siblings = [{"rfilename": p, "size": f.size, "blobId": f.blob_oid} for p, f in sorted(commit.files.items())]
            self._json({"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                        "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                        "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
                        "siblings": siblings})

        def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
            self._authorized()
            with hub.lock:
                head = hub._commit(repo, revision)
            files = []
            for item in payload["files"]:
                sample = base64.b64decode(item["sample"])
                binary = b"\0" in sample or item["path"].lower().endswith(LFS_EXTENSIONS)
                mode = "lfs" if binary or item["size"] > LFS_THRESHOLD else "regular"
                files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": None})
            self._json({"files": files, "commitOid": head.oid})

        def _commit(self, repo: Repo, branch: str, body: bytes, query: dict) -> None:
            self._authorized()
            if query.get("create_pr"):
                raise HubError(400, "the fake hub does not implement pull requests")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                raise HubError(400, "commit payload must start with a header line")
            header = lines[0]["value"]
            with hub.lock:
                files = dict(hub._commit(repo, branch).files)
                parent = header.get("parentCommit")
                if parent and parent != repo.branches.get(branch):
                    raise HubError(412, "A commit has happened since the parent commit. Please retry.")
                for line in lines[1:]:
                    key, value = line["key"], line["value"]
                    path = value["path"]
                    if (repo.repo_id, path) in hub.drop_on_commit:
                        continue
                    if key == "file":
                        content = base64.b64decode(value["content"])
                        files[path] = StoredFile(content, size=len(content))
                    elif key == "lfsFile":
                        if value["oid"] not in hub.lfs:
                            raise HubError(400, f"LFS object {value['oid']} for {path} was never uploaded")
                        files[path] = StoredFile(None, value["oid"], len(hub.lfs[value["oid"]]))
                    elif key == "deletedFile":
                        if path not in files:
                            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                        del files[path]
                    elif key == "deletedFolder":
                        prefix = path.rstrip("/") + "/"
                        files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                    else:
                        raise HubError(400, f"unsupported commit operation {key}")
                commit = hub._new_commit(repo, branch, header.get("summary", ""), files)
            prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
            self._json({"success": True, "commitOid": commit.oid, "commitUrl": f"{hub.url}/{prefix}{repo.repo_id}/commit/{commit.oid}",
                        "pullRequestUrl": None})

        def _create_branch(self, repo: Repo, branch: str) -> None:
            self._authorized()
            with hub.lock:
                if branch in repo.branches:
                    return self._json({"error": f"Reference already exists: refs/heads/{branch}"}, 409)
                repo.branches[branch] = repo.branches["main"]
            self._json({})

        def _tree(self, repo: Repo, revision: str, sub: str, recursive: bool) -> None:
            with hub.lock:
                commit = hub._commit(repo, revision)
                prefix = sub.strip("/") + "/" if sub.strip("/") else ""
                inside = {p: f for p, f in commit.files.items() if p.startswith(prefix)}
                if prefix and not inside:
                    raise HubError(404, f"{sub} does not exist", "EntryNotFound")
                entries, folders = [], set()
                for path, stored in sorted(inside.items()):
                    parts = path[len(prefix):].split("/")
                    for depth in range(1, len(parts)):
                        folder = prefix + "/".join(parts[:depth])
                        if (recursive or depth == 1) and folder not in folders:
                            folders.add(folder)
                            entries.append(hub._folder(folder))
                    if recursive or len(parts) == 1:
                        entries.append(hub._entry(path, stored))
            self._json(entries)

        def _paths_info(self, repo: Repo, revision: str, paths: list[str]) -> None:
            with hub.lock:
                commit = hub._commit(repo, revision)
                out = []
                for path in paths:
                    path = path.strip("/")
                    if path in commit.files:
                        out.append(hub._entry(path, commit.files[path]))
                    elif any(p.startswith(path + "/") for p in commit.files):
                        out.append(hub._folder(path))
            self._json(out)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a loopback fake Hugging Face Hub (for tests and demos).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--idle-timeout", type=float, default=600, help="stop after this many seconds without a request")
    args = parser.parse_args()
    hub = FakeHub(args.port, idle_timeout=args.idle_timeout).start()
    print(f"HF_ENDPOINT={hub.url} HF_TOKEN=hf_fake HF_HUB_DISABLE_XET=1  (stops after {args.idle_timeout:.0f} s idle)", flush=True)
    hub._thread.join()


if __name__ == "__main__":
    main()
