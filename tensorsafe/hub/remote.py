"""A remote file read by HTTP range requests: only the bytes the scanner asks for, counted and bounded.

:class:`RemoteBuffer` stands where a memory map stands for a local file (``Span.buf``): slicing,
indexing and ``find`` fetch the missing byte ranges first, so the existing container readers walk
it unchanged. Fetched ranges land in a sparse temporary file that is memory-mapped, and a set of
intervals records which ranges hold real bytes; nothing outside those intervals is ever handed to
a check, so a hole can never be judged as zeros.

:class:`RemoteFileScan` gives the pickle walker (the hot loop, which needs a real buffer) a window
of fetched bytes, and grows the window while the walk runs off its end (see :meth:`walk`).
"""
from __future__ import annotations

import bisect
import mmap
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from tensorsafe.readers.blob import Span
from tensorsafe.engine.joblib_arrays import is_array_wrapper
from tensorsafe.errors import LimitExceeded, ParseError
from tensorsafe.hub.http import RemoteReadError
from tensorsafe.limits import DEFAULT_MAX_REMOTE_BYTES, ScanLimits
from tensorsafe.pickles.policy import Policy
from tensorsafe.pickles.walker import BuildHook, PickleTrace
from tensorsafe.report import FileResult, Location
from tensorsafe.engine.scanner import FileScan, findings_for_errors
from tensorsafe.readers.sniff import ZIP_LOCAL_MAGIC, may_hold_zip_at_end
from tensorsafe.readers.zip_directory import read_directory

READAHEAD = 16 << 10
"""A small read fetches at least this much (headers and names sit next to each other)."""
FIRST_WALK_WINDOW = 256 << 10
WINDOW_GROWTH = 4
PREFETCH_THREADS = 8
PREFETCH_MERGE_GAP = 4 << 10
"""Prefetched ranges closer than this are fetched as one (fewer requests for a few more bytes)."""
ZIP_HEADER_SLACK = 30 + 256
"""Bytes fetched at each local header beyond its name: the fixed part and room for the extra field."""
MAX_PREFETCHED_PICKLE = 4 << 20
MAX_PREFETCHED_DIRECTORY = 64 << 20
"""A bigger central directory is not prefetched (the scan reads it, under its own bounds)."""
MAX_REMOTE_FILE_BYTES = 1 << 40
"""Largest remote file read by range requests (the server's size is checked against it first):
fetched ranges land in a sparse temporary file of the file's size."""

__all__ = ["RemoteBuffer", "RemoteReadError", "scan_buffer"]


class RangeSource(Protocol):
    """Where the bytes come from: ``fetch(start, end)`` returns exactly ``end - start`` bytes or raises."""

    size: int

    def fetch(self, start: int, end: int) -> bytes: ...


class RemoteBuffer:
    """The remote file as a read-only buffer; every access fetches what is missing first.

    ``failed`` keeps the first fetch error: callers that swallow exceptions cannot turn a failed
    read into a verdict, because the scan checks it at the end (fail closed).
    """

    def __init__(self, source: RangeSource, *, max_bytes: int = DEFAULT_MAX_REMOTE_BYTES,
                 readahead: int = READAHEAD):
        self.source = source
        self.size = source.size
        self.max_bytes = max_bytes
        self.readahead = readahead
        self.bytes_read = 0
        self.requests = 0
        self.failed: RemoteReadError | None = None
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._count_lock = threading.Lock()
        if not isinstance(self.size, int) or not 0 <= self.size <= MAX_REMOTE_FILE_BYTES:
            raise RemoteReadError(f"the server gives the file a size of {self.size!r} bytes; not read (limit "
                                  f"MAX_REMOTE_FILE_BYTES, {MAX_REMOTE_FILE_BYTES:,} bytes)")
        self._file = tempfile.TemporaryFile(prefix="tensorsafe-remote-")
        self.view: mmap.mmap | bytes = b""
        if self.size:
            try:
                self._file.truncate(self.size)  # sparse: holes take no disk space
                self.view = mmap.mmap(self._file.fileno(), self.size)
            except (OSError, ValueError, OverflowError) as exc:
                self._file.close()
                raise RemoteReadError(f"cannot hold a {self.size:,}-byte remote file for reading: {exc}") from exc

    # -- the interval set --------------------------------------------------------------------------
    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of ``[lo, hi)`` not fetched yet."""
        gaps, pos = [], lo
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        while pos < hi and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if e <= pos:
                i += 1
                continue
            if s > pos:
                gaps.append((pos, min(s, hi)))
            pos = max(pos, e)
            i += 1
        if pos < hi:
            gaps.append((pos, hi))
        return gaps

    def covered(self, lo: int, hi: int) -> bool:
        return not self.missing(lo, hi)

    def _add(self, lo: int, hi: int) -> None:
        i = bisect.bisect_left(self._ends, lo)
        j = bisect.bisect_right(self._starts, hi)
        if i < j:
            lo, hi = min(lo, self._starts[i]), max(hi, self._ends[j - 1])
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]

    # -- fetching ------------------------------------------------------------------------------------
    def ensure(self, lo: int, hi: int, *, readahead: bool = True) -> None:
        """Fetch whatever of ``[lo, hi)`` is missing (each gap widened to the read-ahead)."""
        lo, hi = max(0, lo), min(self.size, hi)
        if lo >= hi:
            return
        gaps = self.missing(lo, hi)
        if readahead:
            gaps = [(s, min(self.size, max(e, s + self.readahead))) for s, e in gaps]
            gaps = [g for s, e in gaps for g in self.missing(s, e)]
        self._fetch_all(gaps)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch many small ranges at once (the local headers of a zip), in parallel."""
        wanted: list[tuple[int, int]] = []
        for s, e in sorted(ranges):
            s, e = max(0, s), min(self.size, e)
            if s >= e:
                continue
            if wanted and s <= wanted[-1][1] + PREFETCH_MERGE_GAP:
                wanted[-1] = (wanted[-1][0], max(e, wanted[-1][1]))
            else:
                wanted.append((s, e))
        self._fetch_all([g for s, e in wanted for g in self.missing(s, e)], parallel=True)

    def _fetch_all(self, gaps: list[tuple[int, int]], parallel: bool = False) -> None:
        if not gaps:
            return
        if self.failed is not None:
            raise self.failed
        need = sum(e - s for s, e in gaps)
        if self.bytes_read + need > self.max_bytes:
            self._fail(RemoteReadError(
                f"reading {need:,} more bytes would pass the remote read budget of {self.max_bytes:,} bytes "
                f"({self.bytes_read:,} read); scan with --deep to download the file whole"))
        if parallel and len(gaps) > 1:
            with ThreadPoolExecutor(min(PREFETCH_THREADS, len(gaps))) as pool:
                results = list(pool.map(lambda g: self._fetch_one(*g), gaps))
        else:
            results = [self._fetch_one(s, e) for s, e in gaps]
        for (s, e), data in zip(gaps, results):
            if isinstance(data, RemoteReadError):
                self._fail(data)
        for (s, e), data in zip(gaps, results):
            self.view[s:e] = data
            self._add(s, e)

    def _fetch_one(self, start: int, end: int) -> bytes | RemoteReadError:
        try:
            data = self.source.fetch(start, end)
        except RemoteReadError as exc:
            return exc
        except Exception as exc:  # any failure of the transport is an unread range, never a verdict
            return RemoteReadError(f"cannot read bytes {start:,}-{end - 1:,}: {type(exc).__name__}: {exc}")
        with self._count_lock:
            self.requests += 1
            self.bytes_read += len(data)
        if len(data) != end - start:
            return RemoteReadError(f"asked for bytes {start:,}-{end - 1:,} and got {len(data):,} bytes")
        return data

    def _fail(self, exc: RemoteReadError) -> None:
        if self.failed is None:
            self.failed = exc
        raise exc

    # -- the buffer interface the scanner uses (bytes-like indexing and find) --------------------------
    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.size)
            if step != 1:
                raise TypeError("RemoteBuffer slices take no step")
            self.ensure(lo, hi)
            return self.view[lo:hi] if lo < hi else b""
        index = key + self.size if key < 0 else key
        if not 0 <= index < self.size:
            raise IndexError("RemoteBuffer index out of range")
        self.ensure(index, index + 1)
        return self.view[index]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = self.size if end is None else min(end, self.size)
        self.ensure(start, end)
        return self.view.find(sub, start, end)

    def close(self) -> None:
        if isinstance(self.view, mmap.mmap):
            self.view.close()
        self._file.close()


class RemoteFileScan(FileScan):
    """A :class:`FileScan` whose pickle walks read a window of fetched bytes.

    The walk of a window is the prefix of the walk of the whole stream up to the window's end, so
    it is the whole walk when it stops (STOP) before the end, or fails before the end for a reason
    that does not depend on where the bytes end. A walk that ran out of bytes (truncated), or
    failed on a text argument with no newline before the window's end (pickle.py reads such an
    argument up to the end of the stream), is walked again over a window ``WINDOW_GROWTH`` times
    larger. A build hook (joblib arrays) can jump past the window, so a walk that meets one is
    redone over the whole stream with the real hook.
    """

    def walk(self, buf, start: int, end: int, hook: BuildHook | None = None) -> PickleTrace:
        if not isinstance(buf, RemoteBuffer):
            return super().walk(buf, start, end, hook)
        window = FIRST_WALK_WINDOW
        while True:
            stop = min(end, start + window)
            buf.ensure(start, stop)
            probe = _HookProbe() if hook is not None and stop < end else None
            trace = super().walk(buf.view, start, stop, probe if probe is not None else hook)
            if probe is not None and probe.fired:
                window = end - start
                continue
            if stop >= end or trace.stopped or isinstance(trace.error, LimitExceeded) \
                    or not _ran_off_window(trace, buf, stop):
                return trace
            window *= WINDOW_GROWTH


class _HookProbe:
    """Stands in for a build hook during a windowed walk: stops the walk where the hook would act."""

    def __init__(self):
        self.fired = False

    def __call__(self, obj: object, pos: int, frame_end: int) -> int | None:
        if is_array_wrapper(obj):
            self.fired = True
            raise ParseError("a joblib array needs the whole stream")
        return None


LINE_OPCODES = {0x63: 2, 0x69: 2, 0x50: 1, 0x67: 1, 0x70: 1, 0x49: 1, 0x4C: 1, 0x46: 1, 0x53: 1, 0x56: 1}
"""Opcodes with newline-ended arguments, and how many: GLOBAL and INST 2; PERSID, GET, PUT, INT,
LONG, FLOAT, STRING, UNICODE 1."""


def _ran_off_window(trace: PickleTrace, buf: RemoteBuffer, stop: int) -> bool:
    """Did the walk's result depend on where the window ends? Truncation says so; otherwise only a
    text argument read up to the end (no newline left for it) can, and then the failing opcode is
    the one that read it."""
    if trace.truncated:
        return True
    if trace.error is None or not trace.start <= trace.end < stop:
        return False
    lines = LINE_OPCODES.get(buf.view[trace.end], 0)
    return lines > 0 and buf.view[trace.end + 1:stop].count(b"\n") < lines


def scan_buffer(name: str, buf: RemoteBuffer, policy: Policy, limits: ScanLimits = ScanLimits(), *,
                explain: bool = False, deadline: float | None = None) -> FileResult:
    """Scan a remote file as the scanner scans a local one; never raises. A failed fetch, even one
    a container reader caught, is an ``IO-03`` finding (``IO-02`` for the deadline): the file was not
    judged. ``deadline`` (``time.monotonic``) is the one its requests run under. Closes ``buf``."""
    fs = RemoteFileScan(name, policy, limits, explain)
    if deadline is not None:
        fs.deadline = deadline
    fs.result.size = buf.size
    started = time.perf_counter()
    try:
        with findings_for_errors(fs):
            span = Span(buf, 0, buf.size)
            prefetch_zip(buf, span)
            fs.scan_span(span, Location(), 0)
    finally:
        buf.close()
    if buf.failed is not None and not any(f.rule_id in ("IO-02", "IO-03") for f in fs.result.findings):
        fs.add(buf.failed.rule_id, buf.failed.message, Location())
    fs.result.seconds = time.perf_counter() - started
    result = fs.finish()
    result.bytes_read = buf.bytes_read
    return result


def prefetch_zip(buf: RemoteBuffer, span: Span) -> None:
    """A zip's local headers (and its small pickles) in one parallel round instead of one request
    each; the scan reads them again from the buffer. Only an optimisation: errors are the scan's."""
    if not (span.head(4) == ZIP_LOCAL_MAGIC or may_hold_zip_at_end(span)):
        return
    try:
        entries = read_directory(span, MAX_PREFETCHED_DIRECTORY).entries
    except RemoteReadError:
        raise
    except Exception:
        return
    ranges = []
    for entry in entries:
        end = entry.header_offset + ZIP_HEADER_SLACK + entry.name_length
        if entry.name.endswith(".pkl") and entry.compress_size <= MAX_PREFETCHED_PICKLE:
            end += entry.compress_size
        ranges.append((entry.header_offset, end))
    buf.prefetch(ranges)
