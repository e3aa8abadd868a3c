"""The scanner: find every pickle stream in a file, whatever the container, and judge it."""
from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from tensorsafe.blob import MappedFile, Span
from tensorsafe.explain import MAX_EXPLAIN_BYTES, decompile
from tensorsafe.errors import LimitExceeded, ParseError, TensorsafeError, UnreadableFileError
from tensorsafe.limits import ScanLimits
from tensorsafe.pickles.judge import judge_trace
from tensorsafe.pickles.policy import DEFAULT_POLICY, Policy, Tier
from tensorsafe.pickles.values import BytesRef
from tensorsafe.pickles.walker import BuildHook, PickleTrace, collector_paused, walk
from tensorsafe.rules import Outcome
from tensorsafe.report import FileResult, Finding, ImportUse, Location, Report
from tensorsafe.sniff import Kind, may_hold_zip_at_end, sniff

STRUCTURE_RULES = frozenset({"PK-S01", "PK-S02", "PK-S03", "PK-S05", "PK-L01"})
POLYGLOT_FRONT_KINDS = frozenset({Kind.PICKLE, Kind.UNKNOWN})
"""Fronts that torch.load unpickles while zipfile finds a zip at the end of the same bytes."""
SKIPPED_DIRECTORIES = frozenset({".git", ".hg", ".svn", "__pycache__"})


class FileScan:
    """State for scanning one file: findings, imports seen, the deadline."""

    def __init__(self, path: str, policy: Policy, limits: ScanLimits, explain: bool = False):
        self.path = path
        self.explain = explain
        self.policy = policy
        self.limits = limits
        self.result = FileResult(path=path, kind="other")
        self.imports: Counter = Counter()
        self.tiers: dict[tuple[str, str], Tier] = {}
        self.deadline = time.monotonic() + limits.timeout_seconds
        self.kinds: list[str] = []
        self.storage_keys: set[str] = set()
        self._timed_out = False

    # -- recording -------------------------------------------------------------------------------
    def add(self, rule_id: str, message: str, location: Location, trigger: str | None = None) -> None:
        self.result.findings.append(Finding(self.path, rule_id, message, location, trigger))

    def add_error(self, exc: TensorsafeError, rule_id: str, location: Location) -> None:
        if isinstance(exc, LimitExceeded):
            limit_rule = "IO-02" if exc.limit == "MAX_SCAN_SECONDS" else "ARC-03" \
                if exc.limit == "MAX_DECOMPRESSED_BYTES" else "PK-L01"
            self.add(limit_rule, f"{exc.message} (limit {exc.limit})", location, exc.limit)
        else:
            self.add(rule_id, exc.message, location)

    def note_kind(self, kind: str) -> None:
        self.kinds.append(kind)

    def check_deadline(self, location: Location) -> bool:
        if time.monotonic() <= self.deadline:
            return True
        if not self._timed_out:
            self._timed_out = True
            self.add("IO-02", f"scan stopped after {self.limits.timeout_seconds:g} s", location,
                     "MAX_SCAN_SECONDS")
        return False

    # -- pickles ---------------------------------------------------------------------------------
    def walk(self, buf, start: int, end: int, hook: BuildHook | None = None) -> PickleTrace:
        return walk(buf, start, end, max_opcodes=self.limits.max_opcodes, max_memo=self.limits.max_memo_entries,
                    deadline=self.deadline, build_hook=hook)

    def judge(self, trace: PickleTrace, span: Span, location: Location, depth: int, *, structure: bool = True) -> None:
        """Record the findings of one walked pickle and scan the bytes it hands to loaders.

        ``structure=False``: a second view of a stream already judged (its parse errors are not news).
        """
        if structure:
            self.result.pickles += 1
        verdicts = judge_trace(trace, self.policy, self.path, location, span.start)
        known = set(self.result.findings)
        self.result.findings.extend(f for f in verdicts.findings if f not in known
                                    and (structure or f.rule_id not in STRUCTURE_RULES))
        self.imports.update(verdicts.imports)
        self.tiers.update(verdicts.tiers)
        self.storage_keys.update(_storage_keys(trace))
        if self.explain and any(f.outcome is Outcome.FAIL for f in verdicts.findings):
            data = bytes(span.buf[trace.start:min(trace.end or span.end, trace.start + MAX_EXPLAIN_BYTES + 1)])
            self.result.explanations.append((str(location.at(trace.start - span.start)), decompile(data)))
        for payload in verdicts.nested:
            data = payload.data
            if isinstance(data, BytesRef):
                data = bytes(span.buf[data.start:data.start + data.length])
            offset = payload.offset - span.start
            where = location.inside(f"bytes passed to {payload.loader} @{offset}")
            self.add("PK-C04", f"{payload.loader} is handed {len(data):,} bytes; scanned as a nested pickle",
                     location.at(offset), payload.loader)
            self.scan_span(Span.of_bytes(data), where, depth + 1, pickle_expected=True)

    # -- dispatch --------------------------------------------------------------------------------
    def scan_span(self, span: Span, location: Location, depth: int, *, pickle_expected: bool = False) -> None:
        from tensorsafe.containers import dispatch

        if depth > self.limits.max_depth:
            self.add("ARC-01", f"archives nested more than {self.limits.max_depth} deep", location,
                     "MAX_ARCHIVE_DEPTH")
            return
        if not self.check_deadline(location):
            return
        kind = sniff(span)
        if kind in POLYGLOT_FRONT_KINDS and may_hold_zip_at_end(span) \
                and dispatch.scan_trailing_zip(self, span, location, depth):
            return
        dispatch.scan_kind(self, kind, span, location, depth, pickle_expected)

    def finish(self) -> FileResult:
        r = self.result
        r.kind = _kind_name(self.kinds)
        r.imports = sorted((ImportUse(m, n, self.tiers.get((m, n), Tier.UNKNOWN).value, c)
                            for (m, n), c in self.imports.items()), key=lambda u: (u.module, u.name))
        return r


COMPRESSION_KINDS = frozenset({"gzip", "bz2", "xz", "lzma", "zlib"})


def _kind_name(kinds: list[str]) -> str:
    """The outer container, with what it compresses (``gzip:pickle``)."""
    if not kinds:
        return "other"
    if kinds[0] in COMPRESSION_KINDS and len(kinds) > 1:
        return f"{kinds[0]}:{kinds[1]}"
    return kinds[0]


def _storage_keys(trace: PickleTrace) -> set[str]:
    """Keys of the storages a torch pickle points at (``('storage', type, key, ...)`` ids)."""
    keys = set()
    for ref in trace.persistent:
        pid = ref.pid
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[2], str):
            keys.add(pid[2])
    return keys


def scan_file(path: str | os.PathLike, policy: Policy = DEFAULT_POLICY, limits: ScanLimits = ScanLimits(),
              *, explain: bool = False) -> FileResult:
    """Scan one file; never raises for bad content (errors become findings).

    ``explain``: keep fickling's decompiled view of every pickle that fails the policy.
    """
    fs = FileScan(os.fspath(path), policy, limits, explain)
    started = time.perf_counter()
    with findings_for_errors(fs):
        with MappedFile(path) as mf, collector_paused():  # see collector_paused: 10-15% of a scan
            fs.result.size = mf.span.size
            fs.scan_span(mf.span, Location(), 0)
    fs.result.seconds = time.perf_counter() - started
    return fs.finish()


@contextmanager
def findings_for_errors(fs: FileScan) -> Iterator[None]:
    """Every error of a file's scan becomes a finding: a bug never turns into a crash or a clean verdict.

    An unreadable file is its error's ``rule_id`` (IO-01 locally, IO-03 for a failed remote read)."""
    try:
        yield
    except UnreadableFileError as exc:
        fs.add(exc.rule_id, exc.message, Location())
    except (ParseError, LimitExceeded) as exc:
        fs.add_error(exc, "ARC-05", Location())
    except RecursionError:
        fs.add("ARC-05", "structure nested too deeply to follow", Location())
    except Exception as exc:
        fs.add("ARC-05", f"internal error while scanning ({type(exc).__name__}: {exc}); the file was not judged",
               Location())


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every file under ``paths`` (folders recursively, VCS folders skipped), in a stable order."""
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRECTORIES)
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def scan(paths: str | os.PathLike | Iterable[str | os.PathLike], policy: Policy | None = None,
         limits: ScanLimits | None = None, *, explain: bool = False) -> Report:
    """Scan files and folders; the library form of ``tensorsafe scan``.

    Without ``policy``, each file gets the built-in policy extended by the ``[tool.tensorsafe]``
    table of the nearest pyproject.toml in its repository. ``hf://OWNER/REPO[@REV][/PATH]`` URLs
    are scanned on the Hub by range requests (:func:`tensorsafe.hub_scan.scan_hub` has the options).
    """
    from tensorsafe.hub import is_hub_url

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = Report()
    for given in paths:
        if is_hub_url(given):
            from tensorsafe.hub_scan import scan_hub

            report.files += scan_hub(given, policy, limits, explain=explain).files
            continue
        for path in iter_files([given]):
            file_policy = policy if policy is not None else _policy_for(path)
            report.files.append(scan_file(path, file_policy, limits or ScanLimits(), explain=explain))
    return report


def _policy_for(path: Path) -> Policy:
    from tensorsafe.policy_file import policy_for_path

    return policy_for_path(path)
