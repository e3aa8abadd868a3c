"""A small Hugging Face Hub on 127.0.0.1 for tests: repository listings, paths-info (with the Hub's
security status), repo info, and ``resolve`` with HEAD, ETag, X-Repo-Commit and HTTP range
requests. It counts the body bytes it serves per file, so tests can assert what a scan transferred.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


@dataclass
class FakeRepo:
    files: dict[str, Path]
    """Repository path -> local file holding its bytes."""
    security: dict[str, dict] = field(default_factory=dict)
    """Repository path -> the Hub's ``securityFileStatus`` for it."""
    commit: str = COMMIT


class FakeHub:
    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.served: dict[str, int] = {}
        """Body bytes of ``resolve`` answers, per ``repo/path``."""
        self.range_requests = 0
        self.full_downloads = 0
        self.fail_resolve_get = False
        """Answer every ``resolve`` GET with HTTP 500 (HEAD and the API still work)."""
        self.ignore_ranges = False
        """Answer range requests with the whole file (200), as a server without range support would."""
        self.log: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, Path], security: dict[str, dict] | None = None) -> None:
        self.repos[repo_id] = FakeRepo(files, security or {})

    def bytes_served(self, repo_id: str | None = None) -> int:
        return sum(n for k, n in self.served.items() if repo_id is None or k.startswith(repo_id + "/"))

    def reset_counts(self) -> None:
        self.served.clear()
        self.range_requests = self.full_downloads = 0

    def count(self, key: str, n: int) -> None:
        with self._lock:
            self.served[key] = self.served.get(key, 0) + n

    def start(self) -> "FakeHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _etag(repo: FakeRepo, path: str) -> str:
    p = repo.files[path]
    return hashlib.sha256(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode()).hexdigest()


def _entry(repo: FakeRepo, path: str, expand: bool) -> dict:
    size = repo.files[path].stat().st_size
    out = {"type": "file", "path": path, "size": size, "oid": _etag(repo, path)[:40]}
    if expand and path in repo.security:
        out["securityFileStatus"] = repo.security[path]
    return out


def _folders(repo: FakeRepo, prefix: str) -> set[str]:
    found = set()
    for path in repo.files:
        if prefix and not path.startswith(prefix + "/"):
            continue
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if not prefix or folder.startswith(prefix + "/"):
                found.add(folder)
    return found


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _json(self, obj, status: int = 200) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self.send_response(status)
            body = json.dumps({"error": message}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
            return repo

        # -- routes --------------------------------------------------------------------------------------
        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.log.append(f"{self.command} {self.path}")
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/(.+)", path)
            if m and self.command == "POST":
                return self._paths_info(m.group(1))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m:
                return self._tree(m.group(1), m.group(3) or "", parse_qs(url.query))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if m:
                return self._info(m.group(1))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(1), m.group(3))
            self._error(404, f"no route for {path}")

        def _info(self, repo_id: str) -> None:
            repo = self._repo(repo_id)
            if repo is not None:
                self._json({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                            "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

        def _tree(self, repo_id: str, prefix: str, query: dict) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            expand = query.get("expand", ["False"])[0].lower() == "true"
            depth = prefix.count("/") + 1 if prefix else 0
            entries = [_entry(repo, p, expand) for p in sorted(repo.files)
                       if (not prefix or p.startswith(prefix + "/")) and (recursive or p.count("/") == depth)]
            entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(_folders(repo, prefix))
                        if recursive or f.count("/") == depth]
            self._json(entries)

        def _paths_info(self, repo_id: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
            expand = form.get("expand", ["False"])[0].lower() == "true"
            out = []
            for p in form.get("paths", []):
                if p in repo.files:
                    out.append(_entry(repo, p, expand))
                elif p in _folders(repo, ""):
                    out.append({"type": "directory", "path": p, "oid": "0" * 40})
            self._json(out)

        def _resolve(self, repo_id: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if path not in repo.files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.command == "GET" and hub.fail_resolve_get:
                return self._error(500, "internal error (the fake Hub was told to fail)")
            size = repo.files[path].stat().st_size
            start, end, status = 0, size, 200
            ranged = self.headers.get("Range")
            if ranged and not hub.ignore_ranges:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged.strip())
                if not m or int(m.group(1)) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                status = 206
            self.send_response(status)
            self.send_header("ETag", f'"{_etag(repo, path)}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            if status == 206:
                hub.range_requests += 1
            else:
                hub.full_downloads += 1
            with open(repo.files[path], "rb") as fh:
                fh.seek(start)
                left = end - start
                try:
                    while left:
                        data = fh.read(min(CHUNK, left))
                        self.wfile.write(data)
                        hub.count(f"{repo_id}/{path}", len(data))
                        left -= len(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

    return Handler
