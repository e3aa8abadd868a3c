"""A small Hugging Face Hub on 127.0.0.1 for tests: repository listings, paths-info (with the Hub's
security status), repo info, and ``resolve`` with HEAD, ETag, X-Repo-Commit and HTTP range
requests. It counts the body bytes it serves per file (before writing them, so a client that has
its bytes finds them counted), so tests can assert what a scan transferred. ``FakeHub.faults`` makes it
misbehave as a hostile or broken server would (tests/hub/test_hub_bounds.py).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
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


@dataclass
class Faults:
    """How the fake Hub misbehaves; the defaults are an honest Hub."""

    drip_seconds: float | None = None
    """``resolve`` GET bodies: one byte, then this many seconds, and so on."""
    head_size: str | None = None
    """HEAD's ``Content-Length``, sent as given (a lie, a huge, negative or non-numeric value)."""
    linked_size: str | None = None
    """HEAD's ``X-Linked-Size``, sent as given."""
    pretend_size: int | None = None
    """HEAD and range answers show only the first N bytes, consistently (the listing tells the truth)."""
    range_total: int | None = None
    """The total size in every ``Content-Range``."""
    content_range: Callable[[int, int, int], str] | None = None
    """The ``Content-Range`` header, from (first byte, last byte, size)."""
    short_body: bool = False
    """206 answers carry half the bytes asked for (and say so in Content-Range and Content-Length)."""
    extra_body: int = 0
    """206 answers carry this many bytes more than asked for (and say so in Content-Length)."""
    get_status: int | None = None
    """Every ``resolve`` GET is answered with this status (and ``retry_after``, if given)."""
    retry_after: str | None = None
    redirect_loop: bool = False
    """``resolve`` (HEAD and GET) redirects to itself, for ever."""
    listing_forever: bool = False
    """Every tree page holds one new file and links to a next page."""
    listing_body: bytes | None = None
    """Tree pages answer these bytes as JSON (e.g. invalid JSON)."""
    listing_size: dict[str, object] = field(default_factory=dict)
    """Repository path -> the ``size`` the listing and paths-info give it."""
    listing_lfs_size: dict[str, object] = field(default_factory=dict)
    """Repository path -> the ``lfs.size`` the listing and paths-info give it."""


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
        self.faults = Faults()
        self.pages_served = 0
        self.stopping = threading.Event()
        self.log: list[str] = []
        self._lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _handler(self))
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

    def count_request(self, ranged: bool) -> None:
        with self._lock:
            if ranged:
                self.range_requests += 1
            else:
                self.full_downloads += 1

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (as a scan does on a refused answer) is no error of the server's."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _etag(repo: FakeRepo, path: str) -> str:
    p = repo.files[path]
    return hashlib.sha256(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode()).hexdigest()


def _entry(repo: FakeRepo, path: str, expand: bool, faults: Faults | None = None) -> dict:
    size = repo.files[path].stat().st_size
    out = {"type": "file", "path": path, "size": size, "oid": _etag(repo, path)[:40]}
    if faults is not None:
        out["size"] = faults.listing_size.get(path, size)
        if path in faults.listing_lfs_size:
            out["lfs"] = {"size": faults.listing_lfs_size[path], "oid": "0" * 64, "pointerSize": 134}
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

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls

        def _json(self, obj, status: int = 200, extra: dict | None = None) -> None:
            self._raw(status, json.dumps(obj).encode(), extra)

        def _raw(self, status: int, body: bytes, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
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
            with hub._lock:
                hub.pages_served += 1
            if hub.faults.listing_body is not None:
                return self._raw(200, hub.faults.listing_body)
            if hub.faults.listing_forever:
                page = int(query.get("cursor", ["0"])[0])
                entry = {"type": "file", "path": f"f{page:09d}.bin", "size": 10, "oid": "0" * 40}
                nxt = f"{hub.endpoint}/api/models/{repo_id}/tree/main?recursive=true&cursor={page + 1}"
                return self._json([entry], extra={"Link": f'<{nxt}>; rel="next"'})
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            expand = query.get("expand", ["False"])[0].lower() == "true"
            depth = prefix.count("/") + 1 if prefix else 0
            entries = [_entry(repo, p, expand, hub.faults) for p in sorted(repo.files)
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
                    out.append(_entry(repo, p, expand, hub.faults))
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
            faults = hub.faults
            if faults.redirect_loop:
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.command == "GET" and hub.fail_resolve_get:
                return self._error(500, "internal error (the fake Hub was told to fail)")
            if self.command == "GET" and faults.get_status is not None:
                extra = {"Retry-After": faults.retry_after} if faults.retry_after is not None else {}
                return self._raw(faults.get_status, b'{"error": "told to fail"}', extra)
            real = repo.files[path].stat().st_size
            size = min(real, faults.pretend_size) if faults.pretend_size is not None else real
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
                if faults.short_body and end - start > 1:
                    end = start + (end - start) // 2
            body_end = min(real, end + faults.extra_body) if status == 206 else end
            self.send_response(status)
            self.send_header("ETag", f'"{_etag(repo, path)}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            length = str(body_end - start)
            if self.command == "HEAD" and faults.head_size is not None:
                length = faults.head_size
            self.send_header("Content-Length", length)
            if self.command == "HEAD" and faults.linked_size is not None:
                self.send_header("X-Linked-Size", faults.linked_size)
            if status == 206:
                total = faults.range_total if faults.range_total is not None else size
                value = faults.content_range(start, end - 1, total) if faults.content_range is not None \
                    else f"bytes {start}-{end - 1}/{total}"
                self.send_header("Content-Range", value)
            self.end_headers()
            if self.command == "HEAD":
                return
            hub.count_request(status == 206)
            with open(repo.files[path], "rb") as fh:
                fh.seek(start)
                left = body_end - start
                step = 1 if faults.drip_seconds is not None else CHUNK
                try:
                    while left and not hub.stopping.is_set():
                        data = fh.read(min(step, left))
                        hub.count(f"{repo_id}/{path}", len(data))
                        self.wfile.write(data)
                        left -= len(data)
                        if faults.drip_seconds is not None:
                            self.wfile.flush()
                            time.sleep(faults.drip_seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass

    return Handler
