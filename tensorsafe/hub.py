"""Hugging Face Hub repositories as ``hf://OWNER/REPO[@REVISION][/PATH]``, through huggingface_hub.

Everything goes through huggingface_hub, so its settings apply: the cache (``HF_HOME``,
``HF_HUB_CACHE``), the token (``HF_TOKEN`` or ``hf auth login``), the endpoint (``HF_ENDPOINT``)
and offline mode (``HF_HUB_OFFLINE=1``: only what the cache holds). The endpoint and the cache
folder are read when a call is made, not when this module is imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

from tensorsafe.errors import UsageError
from tensorsafe.remote import RemoteReadError

HUB_SCHEME = "hf://"
REPO_TYPES = {"datasets": "dataset", "spaces": "space", "models": "model"}
HTTP_RETRIES = 2
"""Retries of a failed range request (huggingface_hub's backoff: 1 s, then 2 s)."""
FLAGGED_STATUSES = frozenset({"unsafe", "suspicious", "caution", "dangerous"})


@dataclass(frozen=True)
class HubPath:
    """A repository, a revision (``None``: the default branch) and a path inside it ("" for all)."""

    repo_id: str
    revision: str | None = None
    path: str = ""
    repo_type: str = "model"

    def at(self, path: str) -> "HubPath":
        return replace(self, path=path)

    def __str__(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_SCHEME}{prefix}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


@dataclass(frozen=True)
class HubFile:
    where: HubPath
    size: int | None


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


def is_hub_url(p: str | os.PathLike) -> bool:
    """``hf://...`` (also as ``hf:/...``, which is what a ``pathlib.Path`` makes of it), unless a
    local path of that name exists."""
    s = os.fspath(p)
    return s.startswith("hf:/") and not os.path.exists(s)


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


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint())


def _hub_error(hp: HubPath, exc: Exception) -> RemoteReadError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RemoteReadError(f"{type(exc).__name__}: {first}", path=str(hp))


def list_files(hp: HubPath) -> list[HubFile]:
    """The files under ``hp`` (the file itself when it names one), in a stable order."""
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    api = _api()
    try:
        if hp.path:
            infos = api.get_paths_info(hp.repo_id, [hp.path], revision=hp.revision, repo_type=hp.repo_type)
            if not infos:
                raise RemoteReadError("no such file or folder in the repository", path=str(hp))
            if isinstance(infos[0], RepoFile):
                return [HubFile(hp, infos[0].size)]
            if not isinstance(infos[0], RepoFolder):
                raise RemoteReadError("not a file or folder", path=str(hp))
        tree = api.list_repo_tree(hp.repo_id, hp.path or None, recursive=True, revision=hp.revision,
                                  repo_type=hp.repo_type)
        files = [HubFile(hp.at(e.path), e.size) for e in tree if isinstance(e, RepoFile)]
    except RemoteReadError:
        raise
    except Exception as exc:
        raise _hub_error(hp, exc) from exc
    return sorted(files, key=lambda f: f.where.path)


def file_metadata(hp: HubPath) -> FileMetadata:
    """A HEAD request: size, commit and ETag, and a resolve URL pinned to that commit."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(hp.repo_id, hp.path, repo_type=hp.repo_type, revision=hp.revision,
                                               endpoint=_endpoint()))
    except Exception as exc:
        raise _hub_error(hp, exc) from exc
    if meta.size is None:
        raise RemoteReadError("the Hub did not say how large the file is", path=str(hp))
    pinned = hf_hub_url(hp.repo_id, hp.path, repo_type=hp.repo_type, revision=meta.commit_hash or hp.revision,
                        endpoint=_endpoint())
    return FileMetadata(pinned, meta.size, meta.commit_hash, meta.etag)


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
    from huggingface_hub.hf_api import RepoFile

    infos = _api().get_paths_info(hp.repo_id, [hp.path], revision=hp.revision, repo_type=hp.repo_type)
    if not infos:
        raise RemoteReadError("no such file or folder in the repository", path=str(hp))
    return isinstance(infos[0], RepoFile)


def hub_verdicts(hp: HubPath, paths: list[str]) -> dict[str, HubVerdict]:
    """The Hub's security scan of each path (``paths-info`` with ``expand``); unscanned paths are left out."""
    out: dict[str, HubVerdict] = {}
    api = _api()
    try:
        for i in range(0, len(paths), 100):
            for info in api.get_paths_info(hp.repo_id, paths[i:i + 100], expand=True, revision=hp.revision,
                                           repo_type=hp.repo_type):
                security = getattr(info, "security", None)
                if security:
                    out[info.path] = _verdict(security)
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
    """Byte ranges of one Hub file by HTTP range requests, with huggingface_hub's session, headers
    (token) and retries. An answer that is not exactly the range asked for is refused: a server
    that ignores ``Range`` is not read to the end of a multi-GB file."""

    def __init__(self, meta: FileMetadata, where: HubPath):
        self.url = meta.url
        self.size = meta.size
        self.where = where

    def fetch(self, start: int, end: int) -> bytes:
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

        want = end - start
        headers = {**build_hf_headers(), "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        with http_stream_backoff("GET", self.url, headers=headers, max_retries=HTTP_RETRIES,
                                 timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            if response.status_code != 206:
                raise RemoteReadError(f"the server answered a range request with HTTP {response.status_code}, "
                                      "not 206 (partial content)", path=str(self.where))
            expected = f"bytes {start}-{end - 1}/"
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(expected):
                raise RemoteReadError(f"asked for bytes {start}-{end - 1}, the server sent {content_range!r}",
                                      path=str(self.where))
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > want:
                    raise RemoteReadError(f"the server sent more than the {want:,} bytes asked for",
                                          path=str(self.where))
        return bytes(data)
