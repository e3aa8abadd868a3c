"""``scan``, ``validate`` and ``inspect`` of ``hf://`` paths: files judged from the bytes fetched by
range requests (counted in ``FileResult.bytes_read``), or, with ``deep`` or offline, from
huggingface_hub's cache.

Results are named by their ``hf://`` URL. A failure to list, resolve or read a file is an
``IO-03`` finding (exit 2): a file that could not be read is never reported clean.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from tensorsafe.readers.blob import Span
from tensorsafe.errors import UnreadableFileError
from tensorsafe.hub.client import (
    MAX_LISTING_FILES,
    MAX_LISTING_PAGES,
    HubFile,
    HubPath,
    HubRangeSource,
    HubVerdict,
    cached_file,
    check_sizes,
    download,
    file_metadata,
    hub_verdicts,
    list_files,
    offline,
    parse_hub_url,
    split_paths,  # noqa: F401  (lives in hub.py: the CLI calls it without loading the scan engine)
)
from tensorsafe.hub.http import Deadline
from tensorsafe.limits import DEFAULT_LIMITS, MAX_SCAN_SECONDS, ScanLimits
from tensorsafe.engine.scanner import scan_file
from tensorsafe.listing import iter_files
from tensorsafe.pickles.policy import DEFAULT_POLICY, Policy
from tensorsafe.readers.safetensors.read import read_unambiguous_header
from tensorsafe.safetensors.validator import SAFETENSORS_SUFFIX, check_source, to_findings, validate_file
from tensorsafe.hub.remote import (
    DEFAULT_MAX_REMOTE_BYTES,
    RemoteBuffer,
    RemoteReadError,
    scan_buffer,
)
from tensorsafe.report import FileResult, Finding, Report


def _io_error(path: str, exc: Exception) -> FileResult:
    """The file (or listing) was not judged: ``IO-03`` (``IO-02`` when the deadline passed)."""
    if isinstance(exc, UnreadableFileError):
        rule_id, message = exc.rule_id, exc.message
    else:
        rule_id, message = "IO-03", f"{type(exc).__name__}: {exc}"
    if rule_id not in ("IO-02", "IO-03"):
        rule_id = "IO-03"
    return FileResult(path=path, kind="other", findings=[Finding(path, rule_id, message)], bytes_read=0)


def _default_policy() -> Policy:
    """The built-in policy: the library reads no policy file by itself (pass one to apply it)."""
    return DEFAULT_POLICY


# -- scan ----------------------------------------------------------------------------------------------
def scan_hub(url: str | os.PathLike, policy: Policy | None = None, limits: ScanLimits | None = None, *,
             explain: bool = False, deep: bool = False, verdicts: bool = False,
             max_bytes: int = DEFAULT_MAX_REMOTE_BYTES, max_pages: int = MAX_LISTING_PAGES,
             max_files: int = MAX_LISTING_FILES) -> Report:
    """Scan a Hub file, folder or repository.

    Online, each file is read by range requests (at most ``max_bytes`` each, every request of it
    inside ``limits.timeout_seconds``), unless it is already in the cache; ``deep`` downloads it
    into the cache and scans it whole. Offline, the cache is scanned. The listing has its own
    deadline of ``limits.timeout_seconds`` and reads at most ``max_pages`` pages and ``max_files``
    files. ``verdicts`` adds the Hub's own security scan of each file beside ours (``HUB-01``
    where they disagree)."""
    policy = policy if policy is not None else _default_policy()
    limits = limits or ScanLimits()
    try:
        hp = parse_hub_url(url)
    except Exception as exc:
        return Report([_io_error(os.fspath(url), exc)])
    report = Report()
    if offline() or deep:
        report.files += _scan_downloaded(hp, policy, limits, explain)
    else:
        try:
            files = list_files(hp, Deadline(limits.timeout_seconds), max_pages=max_pages, max_files=max_files)
        except Exception as exc:
            return Report([_io_error(str(hp), exc)])
        report.files += [scan_remote_file(f, policy, limits, explain=explain, max_bytes=max_bytes) for f in files]
    if verdicts:
        add_hub_verdicts(hp, report)
    return report


def _scan_downloaded(hp: HubPath, policy: Policy, limits: ScanLimits, explain: bool) -> list[FileResult]:
    try:
        local = download(hp)
    except RemoteReadError as exc:
        return [_io_error(str(hp), exc)]
    results = []
    for path in iter_files([local]):
        rel = path.relative_to(local).as_posix() if local.is_dir() else ""
        where = hp.at(f"{hp.path}/{rel}".strip("/") if rel else hp.path)
        fr = scan_file(path, policy, limits, explain=explain)
        _rename(fr, str(where))
        fr.bytes_read = 0 if offline() else fr.size  # deep: the whole file was needed
        results.append(fr)
    return results


def _rename(fr: FileResult, path: str) -> None:
    fr.path = path
    fr.findings = [Finding(path, f.rule_id, f.message, f.location, f.trigger, f.outcome, f.severity)
                   for f in fr.findings]


def scan_remote_file(f: HubFile, policy: Policy, limits: ScanLimits = ScanLimits(), *, explain: bool = False,
                     max_bytes: int = DEFAULT_MAX_REMOTE_BYTES) -> FileResult:
    """Scan one Hub file by range requests; never raises for bad content or a failed read.

    One deadline (``limits.timeout_seconds``) covers the HEAD, every range request, retry and wait,
    and the walk; the sizes given by the listing, HEAD and every ``Content-Range`` must agree."""
    name = str(f.where)
    started = time.perf_counter()
    deadline = Deadline(limits.timeout_seconds)
    try:
        meta = file_metadata(f.where, deadline)
        check_sizes(f, meta)
        local = cached_file(f.where, meta.commit)
        if local is not None and os.path.getsize(local) == meta.size:
            fr = scan_file(local, policy, limits, explain=explain)
            _rename(fr, name)
            fr.bytes_read = 0
            return fr
        buf = RemoteBuffer(HubRangeSource(meta, f.where, deadline), max_bytes=max_bytes)
    except Exception as exc:
        return _io_error(name, exc)
    result = scan_buffer(name, buf, policy, limits, explain=explain, deadline=deadline.at)
    result.seconds = time.perf_counter() - started
    return result


# -- hub verdicts ------------------------------------------------------------------------------------------
def add_hub_verdicts(hp: HubPath, report: Report) -> None:
    """Put the Hub's verdict beside ours; a disagreement is a HUB-01 finding on the file."""
    by_path = {parse_hub_url(fr.path).path: fr for fr in report.files if fr.path.startswith("hf://")}
    if offline():
        for fr in by_path.values():
            fr.hub_verdict = "not available offline"
        return
    try:
        found = hub_verdicts(hp, sorted(p for p in by_path if p))
    except RemoteReadError as exc:
        for fr in by_path.values():
            fr.hub_verdict = f"not available ({exc.message})"
        return
    for path, fr in by_path.items():
        verdict = found.get(path)
        fr.hub_verdict = str(verdict) if verdict is not None else "not scanned by the Hub"
        if verdict is not None:
            _compare(fr, verdict)


def _compare(fr: FileResult, hub: HubVerdict) -> None:
    ours = fr.verdict
    if hub.flagged and ours == "clean":
        fr.findings.append(Finding(fr.path, "HUB-01", f"the Hub's scan calls this file {hub}; tensorsafe found "
                                   "nothing that fails the policy", trigger=hub.status))
    elif hub.status == "safe" and ours == "fail":
        fr.findings.append(Finding(fr.path, "HUB-01", "the Hub's scan calls this file safe; tensorsafe fails it "
                                   "(see the findings above)", trigger=hub.status))


# -- validate ------------------------------------------------------------------------------------------------
def validate_hub(url: str | os.PathLike, limits=None, *, deep: bool = False,
                 max_bytes: int = DEFAULT_MAX_REMOTE_BYTES) -> Report:
    """Validate the safetensors headers of a Hub file or folder: ``8 + N`` bytes (at least 512: the
    tar check), the 64 KiB polyglot windows and the 8-byte HDF5 superblock probes per file, by range
    requests (``deep``, or offline: the cached file, whole).

    In a folder, files named ``*.safetensors`` are validated; a file named explicitly always is."""
    try:
        hp = parse_hub_url(url)
    except Exception as exc:
        return Report([_io_error(os.fspath(url), exc)])
    if offline() or deep:
        try:
            local = download(hp)
        except RemoteReadError as exc:
            return Report([_io_error(str(hp), exc)])
        report = Report()
        files = [local] if local.is_file() else sorted(local.rglob(f"*{SAFETENSORS_SUFFIX}"))
        for path in files:
            fr = validate_file(path, limits, deep=deep)
            rel = path.relative_to(local).as_posix() if local.is_dir() else ""
            _rename(fr, str(hp.at(f"{hp.path}/{rel}".strip("/") if rel else hp.path)))
            fr.bytes_read = 0 if offline() else fr.size
            report.files.append(fr)
        return report
    try:
        files = list_files(hp, Deadline(getattr(limits, "timeout_seconds", MAX_SCAN_SECONDS)))
    except Exception as exc:
        return Report([_io_error(str(hp), exc)])
    if len(files) != 1 or files[0].where.path != hp.path:
        files = [f for f in files if f.where.path.endswith(SAFETENSORS_SUFFIX)]
    return Report([validate_remote_file(f, limits if limits is not None else DEFAULT_LIMITS,
                                        max_bytes=max_bytes) for f in files])


def validate_remote_file(f: HubFile, limits, *, max_bytes: int = DEFAULT_MAX_REMOTE_BYTES) -> FileResult:
    name = str(f.where)
    started = time.perf_counter()
    deadline = Deadline(getattr(limits, "timeout_seconds", MAX_SCAN_SECONDS))
    try:
        meta = file_metadata(f.where, deadline)
        check_sizes(f, meta)
        buf = RemoteBuffer(HubRangeSource(meta, f.where, deadline), max_bytes=max_bytes, readahead=0)
    except Exception as exc:
        return _io_error(name, exc)
    result = FileResult(path=name, kind="safetensors", size=meta.size)
    try:
        check = check_source(Span(buf, 0, buf.size), limits)
        result.findings = to_findings(name, check.issues)
    except UnreadableFileError as exc:
        result.findings = [_io_error(name, exc).findings[0]]
    except Exception as exc:
        result.findings = [Finding(name, "IO-03", f"the file was not judged ({type(exc).__name__}: {exc})")]
    finally:
        buf.close()
    if buf.failed is not None and not any(x.rule_id in ("IO-02", "IO-03") for x in result.findings):
        result.findings.append(Finding(name, buf.failed.rule_id, buf.failed.message))
    result.bytes_read = buf.bytes_read
    result.seconds = time.perf_counter() - started
    return result


# -- inspect / convert -----------------------------------------------------------------------------------------
def remote_header(url: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_REMOTE_BYTES):
    """A Hub safetensors file's checked header, read by range requests (``8 + N`` bytes), with the
    number of bytes read; raises ``HeaderFormatError`` or ``RemoteReadError``."""
    hp = parse_hub_url(url)
    deadline = Deadline(MAX_SCAN_SECONDS)
    meta = file_metadata(hp, deadline)
    buf = RemoteBuffer(HubRangeSource(meta, hp, deadline), max_bytes=max_bytes, readahead=0)
    try:
        header = read_unambiguous_header(Span(buf, 0, buf.size))
    finally:
        buf.close()
    return header, buf.bytes_read


def local_copy(url: str | os.PathLike) -> Path:
    """The Hub file or folder in huggingface_hub's cache (downloaded when missing); raises
    ``RemoteReadError``."""
    return download(parse_hub_url(url))


