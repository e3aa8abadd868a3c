"""Hugging Face Hub repositories as ``hf://OWNER/REPO[@REVISION][/PATH]``, through huggingface_hub.

Everything goes through huggingface_hub, so its settings apply: the cache (``HF_HOME``,
``HF_HUB_CACHE``), the token (``HF_TOKEN`` or ``hf auth login``), the endpoint (``HF_ENDPOINT``)
and offline mode (``HF_HUB_OFFLINE=1``: only what the cache holds). The endpoint and the cache
folder are read when a call is made, not when this module is imported.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

from tensorsafe.errors import UsageError
from tensorsafe.hub.urls import HUB_SCHEME, is_hub_url  # noqa: F401  (re-exported)
from tensorsafe.hub.http import (
    Deadline,
    RemoteReadError,
    get_json,
    parse_size,
    read_body,
    request,
)

REPO_TYPES = {"datasets": "dataset", "spaces": "space", "models": "model"}
HTTP_RETRIES = 2
"""Retries of a failed request (waits of 1 s, then 2 s, or the server's ``Retry-After``), all inside
the deadline."""
MAX_LISTING_PAGES = 1_000
"""Most pages of one repository or folder listing (the Hub sends 1,000 entries a page)."""
MAX_LISTING_FILES = 100_000
"""Most files in one repository or folder listing."""
LISTING_SECONDS = 300.0
"""Deadline of one listing when the caller gives none (a scan uses its ``--timeout``)."""
_COMMIT = re.compile(r"[0-9a-f]{40}")
FLAGGED_STATUSES = frozenset({"unsafe", "suspicious", "caution", "dangerous"})


@dataclass(frozen=True)
class HubPath:
    """A repository, a revision (``None``: the default branch) and a path inside it ("" for all)."""

    repo_id: str
    revision: str | None = None
    path: str = ""
    repo_type: str = "model"

    def at(self, path: str) -> HubPath:
        return replace(self, path=path)

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_SCHEME}{prefix}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class HubFile:
    """A file as the listing names it: its size, and the LFS object's size where it has one."""

    where: HubPath
    size: int | None
    lfs_size: int | None = None


@dataclass(frozen=True)
class FileMetadata:
    url: str
    size: int
    commit: str | None
    etag: str | None


@dataclass(frozen=True)
class HubVerdict:
    """The Hub's own security scan of one file: ``status`` as the Hub says it, ``detail`` why."""

    status: str
    detail: str = ""

    @property
    def flagged(self) -> bool:
        return self.status in FLAGGED_STATUSES

    @property
    def known(self) -> bool:
        return self.status == "safe" or self.flagged

    def __str__(self) -> str:
        return f"{self.status} ({self.detail})" if self.detail else self.status


def split_paths(paths: Iterable[str | os.PathLike]) -> tuple[list, list[str]]:
    """(local paths, hf:// URLs)."""
    local: list = []
    remote: list[str] = []
    for p in paths:
        (remote if is_hub_url(p) else local).append(p if not is_hub_url(p) else _url_text(p))
    return local, remote


def _url_text(p: str | os.PathLike) -> str:
    """``hf:/a/b`` (what ``pathlib`` makes of ``hf://a/b``) back to ``hf://a/b``."""
    return str(parse_hub_url(p))


def parse_hub_url(p: str | os.PathLike) -> HubPath:
    """``hf://[datasets/|spaces/]OWNER/REPO[@REVISION][/PATH]``; a revision ``refs/pr/N`` may be
    written as is or URL-encoded (``refs%2Fpr%2F1``)."""
    text = os.fspath(p)
    if not text.startswith("hf:/"):
        raise UsageError(f"not a Hub URL (hf://OWNER/REPO[@REVISION][/PATH]): {text}")
    parts = [x for x in text[len("hf:"):].split("/") if x]
    repo_type = "model"
    if parts and parts[0] in REPO_TYPES:
        repo_type = REPO_TYPES[parts.pop(0)]
    if len(parts) < 2 or not parts[0] or parts[0].startswith("@"):
        raise UsageError(f"a Hub URL names OWNER/REPO: {text}")
    owner, name = parts[0], parts[1]
    revision = None
    rest = parts[2:]
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if revision == "refs" and len(rest) >= 2:  # refs/pr/N or refs/convert/parquet
            revision = "/".join([revision, *rest[:2]])
            rest = rest[2:]
        if not revision:
            raise UsageError(f"empty revision after '@': {text}")
    if not name:
        raise UsageError(f"a Hub URL names OWNER/REPO: {text}")
    return HubPath(f"{owner}/{name}", revision, "/".join(rest), repo_type)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_error(hp: HubPath, exc: Exception) -> RemoteReadError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RemoteReadError(f"{type(exc).__name__}: {first}", path=str(hp))


def _api_url(hp: HubPath, route: str) -> str:
    from urllib.parse import quote

    revision = quote(hp.revision, safe="") if hp.revision else "main"
    return f"{_endpoint()}/api/{hp.repo_type}s/{hp.repo_id}/{route}/{revision}"


def _entries(value: object, hp: HubPath, what: str) -> list[dict]:
    """A listing or paths-info answer: a list of ``{"type", "path", ...}`` objects, or an error."""
    if not isinstance(value, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                              and e.get("type") in ("file", "directory") for e in value):
        raise RemoteReadError(f"{what}: the answer is not a list of files and folders", path=str(hp))
    return value


def _hub_file(hp: HubPath, entry: dict) -> HubFile:
    where = hp.at(entry["path"])
    size = entry.get("size")
    lfs = entry.get("lfs")
    lfs_size = lfs.get("size") if isinstance(lfs, dict) else None
    for name, value in (("size", size), ("LFS size", lfs_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise RemoteReadError(f"the listing gives {name} {value!r}, not a byte count", path=str(where))
    return HubFile(where, size, lfs_size)


def paths_info(hp: HubPath, paths: list[str], deadline: Deadline, *, expand: bool = False) -> list[dict]:
    """The Hub's ``paths-info`` entries of ``paths`` (``expand``: with the Hub's security scan)."""
    value, _ = get_json("POST", _api_url(hp, "paths-info"), deadline, what="paths-info", path=str(hp),
                        data={"paths": paths, "expand": expand}, retries=HTTP_RETRIES)
    return _entries(value, hp, "paths-info")


def list_files(hp: HubPath, deadline: Deadline | None = None, *, max_pages: int = MAX_LISTING_PAGES,
               max_files: int = MAX_LISTING_FILES) -> list[HubFile]:
    """The files under ``hp`` (the file itself when it names one), in a stable order.

    The listing is read page by page under ``deadline``; more than ``max_pages`` pages or
    ``max_files`` files is an error naming the limit, never a partial listing taken for the whole."""
    from urllib.parse import quote

    deadline = deadline or Deadline(LISTING_SECONDS)
    if hp.path:
        infos = paths_info(hp, [hp.path], deadline)
        mine = [e for e in infos if e["path"] == hp.path]
        if not mine:
            raise RemoteReadError("no such file or folder in the repository", path=str(hp))
        if mine[0]["type"] == "file":
            return [_hub_file(hp, mine[0])]
    url: str | None = _api_url(hp, "tree") + ("/" + quote(hp.path, safe="") if hp.path else "")
    params: dict | None = {"recursive": "true", "expand": "false"}
    files: list[HubFile] = []
    pages = 0
    while url is not None:
        pages += 1
        if pages > max_pages:
            raise RemoteReadError(f"the listing has more than {max_pages:,} pages (limit MAX_LISTING_PAGES); "
                                  "not scanned, since part of it would be taken for the whole", path=str(hp))
        value, url = get_json("GET", url, deadline, what=f"listing page {pages}", path=str(hp), params=params,
                              retries=HTTP_RETRIES)
        params = None  # the next-page URL carries its own query
        files += [_hub_file(hp, e) for e in _entries(value, hp, "listing") if e["type"] == "file"]
        if len(files) > max_files:
            raise RemoteReadError(f"the listing has more than {max_files:,} files (limit MAX_LISTING_FILES); "
                                  "not scanned, since part of it would be taken for the whole", path=str(hp))
    return sorted(files, key=lambda f: f.where.path)


def file_metadata(hp: HubPath, deadline: Deadline | None = None) -> FileMetadata:
    """A HEAD request: size, commit and ETag, and a resolve URL pinned to that commit.

    The size is ``X-Linked-Size`` (an LFS file, at the Hub's redirect to its storage) or
    ``Content-Length``; where both are given they must agree."""
    from huggingface_hub import hf_hub_url

    deadline = deadline or Deadline(LISTING_SECONDS)
    url = hf_hub_url(hp.repo_id, hp.path, repo_type=hp.repo_type, revision=hp.revision, endpoint=_endpoint())
    with request("HEAD", url, deadline, what="HEAD", path=str(hp), headers={"Accept-Encoding": "identity"},
                 retries=HTTP_RETRIES, redirects="relative") as r:
        headers, redirected = r.headers, r.is_redirect
    sizes = {}
    if headers.get("X-Linked-Size") is not None:
        sizes["X-Linked-Size"] = parse_size(headers["X-Linked-Size"], "X-Linked-Size", str(hp))
    if not redirected and headers.get("Content-Length") is not None:
        sizes["Content-Length"] = parse_size(headers["Content-Length"], "Content-Length", str(hp))
    if not sizes:
        raise RemoteReadError("the Hub did not say how large the file is", path=str(hp))
    if len(set(sizes.values())) > 1:
        raise RemoteReadError("HEAD gives two sizes: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()),
                              path=str(hp))
    commit = headers.get("X-Repo-Commit")
    commit = commit if commit and _COMMIT.fullmatch(commit) else None
    etag = headers.get("X-Linked-Etag") or headers.get("ETag")
    pinned = hf_hub_url(hp.repo_id, hp.path, repo_type=hp.repo_type, revision=commit or hp.revision,
                        endpoint=_endpoint())
    return FileMetadata(pinned, next(iter(sizes.values())), commit, etag.strip('"') if etag else None)


def check_sizes(f: HubFile, meta: FileMetadata) -> None:
    """The listing's size, its LFS size and HEAD's size are one number, or the file is not read:
    a file is never judged on a prefix one source admits to."""
    sources = {"HEAD": meta.size, "the listing": f.size, "the listing's LFS entry": f.lfs_size}
    known = {k: v for k, v in sources.items() if v is not None}
    if len(set(known.values())) > 1:
        raise RemoteReadError("the size sources disagree (" + ", ".join(f"{k}: {v:,}" for k, v in known.items())
                              + " bytes); not judged", path=str(f.where))


def cached_file(hp: HubPath, commit: str | None = None) -> Path | None:
    """The file in huggingface_hub's cache for ``commit`` (or the revision), if it is there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hp.repo_id, hp.path, revision=commit or hp.revision, repo_type=hp.repo_type)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def download(hp: HubPath) -> Path:
    """The file or folder in huggingface_hub's cache, downloaded when missing (offline: cache only).

    A folder (or the whole repository) is fetched with ``snapshot_download``, limited to that folder."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if hp.path and not offline() and _is_file(hp):
            return Path(hf_hub_download(hp.repo_id, hp.path, revision=hp.revision, repo_type=hp.repo_type))
        if hp.path and offline():
            hit = cached_file(hp)
            if hit is not None:
                return hit
        patterns = [f"{hp.path}/*"] if hp.path else None
        root = Path(snapshot_download(hp.repo_id, revision=hp.revision, repo_type=hp.repo_type,
                                      allow_patterns=patterns))
    except RemoteReadError:
        raise
    except Exception as exc:
        raise _hub_error(hp, exc) from exc
    local = root / hp.path if hp.path else root
    if not local.exists():
        raise RemoteReadError("not in the local cache (offline mode)" if offline() else
                              "no such file or folder in the repository", path=str(hp))
    return local


def _is_file(hp: HubPath) -> bool:
    infos = [e for e in paths_info(hp, [hp.path], Deadline(LISTING_SECONDS)) if e["path"] == hp.path]
    if not infos:
        raise RemoteReadError("no such file or folder in the repository", path=str(hp))
    return infos[0]["type"] == "file"


def hub_verdicts(hp: HubPath, paths: list[str]) -> dict[str, HubVerdict]:
    """The Hub's security scan of each path (``paths-info`` with ``expand``); unscanned paths are left out."""
    out: dict[str, HubVerdict] = {}
    deadline = Deadline(LISTING_SECONDS)
    try:
        for i in range(0, len(paths), 100):
            for info in paths_info(hp, paths[i:i + 100], deadline, expand=True):
                security = info.get("securityFileStatus")
                if isinstance(security, dict):
                    out[info["path"]] = _verdict({"status": security.get("status"),
                                                  "safe": security.get("status") == "safe",
                                                  "av_scan": security.get("avScan"),
                                                  "pickle_import_scan": security.get("pickleImportScan")})
    except RemoteReadError:
        raise
    except Exception as exc:
        raise _hub_error(hp, exc) from exc
    return out


def _verdict(security: dict) -> HubVerdict:
    status = str(security.get("status") or ("safe" if security.get("safe") else "unknown"))
    details = []
    av = security.get("av_scan") or {}
    if av.get("virusFound"):
        details.append("antivirus: " + ", ".join(av.get("virusNames") or ["virus found"]))
    pickle_scan = security.get("pickle_import_scan") or {}
    level = pickle_scan.get("highestSafetyLevel")
    if level and level != "innocuous":
        flagged = [f"{i.get('module')}.{i.get('name')}" for i in pickle_scan.get("imports") or []
                   if i.get("safety") not in (None, "innocuous")]
        details.append(f"pickle imports {level}" + (": " + ", ".join(flagged[:5]) if flagged else ""))
        if level == "dangerous" and status == "safe":
            status = "unsafe"
    return HubVerdict(status, "; ".join(details))


class HubRangeSource:
    """Byte ranges of one Hub file by HTTP range requests, under the file's deadline.

    An answer that is not exactly the range asked for is refused: not 206, a ``Content-Range``
    that is malformed, names other bytes or gives another total size than the one the scan was
    sized by, a ``Content-Length`` or a body of any other length. A server that ignores ``Range``
    is not read to the end of a multi-GB file."""

    def __init__(self, meta: FileMetadata, where: HubPath, deadline: Deadline | None = None):
        self.url = meta.url
        self.size = meta.size
        self.where = where
        self.deadline = deadline or Deadline(LISTING_SECONDS)

    def fetch(self, start: int, end: int) -> bytes:
        name, want = str(self.where), end - start
        what = f"bytes {start:,}-{end - 1:,}"
        self.deadline.check(what, name)
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        with request("GET", self.url, self.deadline, what=what, path=name, headers=headers,
                     retries=HTTP_RETRIES) as response:
            if response.status_code != 206:
                raise RemoteReadError(f"the server answered a range request with HTTP {response.status_code}, "
                                      "not 206 (partial content)", path=name)
            self._check_headers(response.headers, start, end)
            data = read_body(response, self.deadline, want, what=what, path=name)
        if len(data) != want:
            raise RemoteReadError(f"asked for {what} ({want:,} bytes) and got {len(data):,}", path=name)
        return data

    def _check_headers(self, headers, start: int, end: int) -> None:
        name = str(self.where)
        content_range = headers.get("Content-Range", "")
        m = re.fullmatch(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20})", content_range.strip())
        if m is None:
            raise RemoteReadError(f"the server sent a malformed Content-Range {content_range[:80]!r}", path=name)
        first, last, total = (int(g) for g in m.groups())
        if total != self.size:
            raise RemoteReadError(f"the size sources disagree (Content-Range total: {total:,}, HEAD: "
                                  f"{self.size:,} bytes); not judged", path=name)
        if (first, last) != (start, end - 1):
            raise RemoteReadError(f"asked for bytes {start:,}-{end - 1:,}, the server sent {first:,}-{last:,}",
                                  path=name)
        if headers.get("Content-Length") is not None \
                and parse_size(headers["Content-Length"], "Content-Length", name) != end - start:
            raise RemoteReadError(f"asked for {end - start:,} bytes, the server announces "
                                  f"{headers['Content-Length']} (Content-Length)", path=name)
