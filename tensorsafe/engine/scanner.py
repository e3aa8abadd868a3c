"""The scanner: find every pickle stream in a file, whatever the container, and judge it."""
from __future__ import annotations

import os
import stat
import time
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from tensorsafe.engine import dispatch
from tensorsafe.engine.dtype_sizes import pickled_itemsize
from tensorsafe.engine.zip_scan import scan_trailing_zip
from tensorsafe.readers.blob import MappedFile, Span
from tensorsafe.explain import MAX_EXPLAIN_BYTES, decompile
from tensorsafe.errors import LimitExceeded, ParseError, TensorsafeError, UnreadableFileError
from tensorsafe.limits import ScanLimits
from tensorsafe.pickles.allocation import claimed_storage_bytes
from tensorsafe.pickles.judge import judge_trace
from tensorsafe.pickles.policy import DEFAULT_POLICY, Policy, Tier
from tensorsafe.pickles.values import BytesRef
from tensorsafe.pickles.walker import BuildHook, PickleTrace, collector_paused, walk
from tensorsafe.rules import LIMIT_RULES, Outcome
from tensorsafe.report import FileResult, Finding, ImportUse, Location
from tensorsafe.readers.sniff import Kind, magic_kind, may_hold_zip_at_end, sniff

if TYPE_CHECKING:
    import mmap


STRUCTURE_RULES = frozenset({"PK-S01", "PK-S02", "PK-S03", "PK-S05", "PK-S06", "PK-L01", "PK-L02"})
POLYGLOT_FRONT_KINDS = frozenset({Kind.PICKLE, Kind.UNKNOWN})
"""Fronts that torch.load unpickles while zipfile finds a zip at the end of the same bytes."""
OWN_FRONT_KINDS = frozenset({Kind.PICKLE, Kind.UNKNOWN, Kind.ZIP, Kind.SAFETENSORS})
"""Kinds whose first bytes are walked as a pickle by their own reader (or cannot start one: a zip's
``PK`` is PERSID, which stops any unpickler without a persistent_load). Every other kind's front is
walked too, since ``pickle.load`` reads any file from byte 0: a tar whose first member name is a pickle."""
TRAILING_ZIP_TOO_KINDS = frozenset({Kind.GGUF, Kind.HDF5, Kind.NPY})
"""Model formats read whole by their own reader that ``zipfile.is_zipfile`` (Keras, numpy) would
also open as a zip found at their end: both readings are scanned. (A tar's last member may
itself be a zip; the tar reader scans it as a member.)"""


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
        self.storage_claims: dict[str, int] = {}
        """Storage key -> the most bytes a torch persistent id claims for it, in the last pickle judged
        that has persistent ids (PK-A01: the torch readers empty it before they judge their main pickle)."""
        self._timed_out = False

    # -- recording -------------------------------------------------------------------------------
    def add(self, rule_id: str, message: str, location: Location, trigger: str | None = None) -> None:
        self.result.findings.append(Finding(self.path, rule_id, message, location, trigger))

    def add_error(self, exc: TensorsafeError, rule_id: str, location: Location) -> None:
        if isinstance(exc, LimitExceeded):
            limit_rule = LIMIT_RULES.get(exc.limit, "PK-L01")
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
    def walk(self, buf: bytes | mmap.mmap, start: int, end: int, hook: BuildHook | None = None) -> PickleTrace:
        return walk(buf, start, end, max_opcodes=self.limits.max_opcodes, max_memo=self.limits.max_memo_entries,
                    deadline=self.deadline, build_hook=hook, max_values=self.limits.max_values)

    def judge(self, trace: PickleTrace, span: Span, location: Location, depth: int, *, structure: bool = True) -> None:
        """Record the findings of one walked pickle and scan the bytes it hands to loaders.

        ``structure=False``: a second view of a stream already judged (its parse errors are not news).
        """
        if structure:
            self.result.pickles += 1
        verdicts = judge_trace(trace, self.policy, self.path, location, span.start, pickled_itemsize)
        if verdicts.findings:  # (most pickles have none: each step here is skipped when it has nothing to do)
            known = set(self.result.findings)
            self.result.findings.extend(f for f in verdicts.findings if f not in known
                                        and (structure or f.rule_id not in STRUCTURE_RULES))
        if verdicts.imports:
            self.imports.update(verdicts.imports)
        self.tiers.update(verdicts.tiers)
        if trace.persistent:
            self.storage_keys.update(_storage_keys(trace))
            self.storage_claims = claimed_storage_bytes(trace)
        if self.explain and any(f.outcome is Outcome.FAIL for f in verdicts.findings):
            data = bytes(span.buf[trace.start:min(trace.end or span.end, trace.start + MAX_EXPLAIN_BYTES + 1)])
            self.result.explanations.append((str(location.at(trace.start - span.start)), decompile(data)))
        for payload in verdicts.nested:
            ref = payload.data
            data = bytes(span.buf[ref.start:ref.start + ref.length]) if isinstance(ref, BytesRef) else ref
            offset = payload.offset - span.start
            where = location.inside(f"bytes passed to {payload.loader} @{offset}")
            self.add("PK-C04", f"{payload.loader} is handed {len(data):,} bytes; scanned as a nested pickle",
                     location.at(offset), payload.loader)
            self.scan_span(Span.of_bytes(data), where, depth + 1, pickle_expected=True)

    # -- dispatch --------------------------------------------------------------------------------
    def scan_span(self, span: Span, location: Location, depth: int, *, pickle_expected: bool = False) -> None:
        if depth > self.limits.max_depth:
            self.add("ARC-01", f"archives nested more than {self.limits.max_depth} deep", location,
                     "MAX_ARCHIVE_DEPTH")
            return
        if not self.check_deadline(location):
            return
        kind = sniff(span)
        spelled = magic_kind(span) if kind is Kind.SAFETENSORS else None
        if spelled is not None:  # e.g. a header length of 35,615 starts with gzip's magic
            dispatch.scan_safetensors_lookalike(self, spelled, span, location, depth, pickle_expected)
            return
        if kind in POLYGLOT_FRONT_KINDS and may_hold_zip_at_end(span) \
                and scan_trailing_zip(self, span, location, depth):
            return
        if kind not in OWN_FRONT_KINDS:
            dispatch.scan_pickle_front(self, span, location, depth)
        dispatch.scan_kind(self, kind, span, location, depth, pickle_expected)
        if kind in TRAILING_ZIP_TOO_KINDS and may_hold_zip_at_end(span):
            scan_trailing_zip(self, span, location, depth)

    def finish(self) -> FileResult:
        r = self.result
        r.kind = _kind_name(self.kinds)
        r.imports = sorted((ImportUse(m, n, self.tiers.get((m, n), Tier.UNKNOWN).value, c)
                            for (m, n), c in self.imports.items()), key=lambda u: (u.module, u.name))
        return r


COMPRESSION_KINDS = frozenset({"gzip", "bz2", "xz", "lzma", "zlib", "lz4", "zstd", "joblib-zfile"})


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
    if _not_a_regular_file(fs):
        return fs.finish()
    with findings_for_errors(fs):
        with MappedFile(path, read_small=True) as mf, collector_paused():  # see collector_paused: 10-15% of a scan
            fs.result.size = mf.span.size
            fs.scan_span(mf.span, Location(), 0)
    fs.result.seconds = time.perf_counter() - started
    return fs.finish()


def _not_a_regular_file(fs: FileScan) -> bool:
    """Folders (met when they cannot be listed or hold nothing) and special files are reported
    here: opening a FIFO would wait for a writer, a device has no end."""
    try:
        mode = os.stat(fs.path).st_mode
    except (OSError, ValueError):
        return False  # the open reports it (IO-01)
    if stat.S_ISREG(mode):
        return False
    where = Location()
    if stat.S_ISDIR(mode):
        fs.note_kind("folder")
        if os.path.islink(fs.path):
            fs.add("SCAN-04", "a symlink to a folder: not followed (scan its target directly)", where)
            return True
        try:
            os.listdir(fs.path)
        except OSError as exc:
            fs.add("SCAN-04", f"the folder cannot be listed: {exc.strerror or exc}", where)
            return True
        fs.add("SCAN-04", "the path holds no files to scan (--allow-empty accepts that)", where)
        return True
    fs.note_kind("special")
    fs.add("SCAN-01", "not a regular file (a FIFO, socket or device): not read", where)
    return True


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
