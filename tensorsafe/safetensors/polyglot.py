"""ST-P08 and ST-A04: files that are also a zip archive or a pickle stream (polyglots).

The zip check reads the end of the file (where every zip reader looks for its end record). The
pickle check walks the file's first bytes with the scanner's own opcode walker, from byte 0 to
wherever the stream really ends (STOP, an error, or the end of the file: no window), so nothing
is imported or executed and nothing a loader would reach is left unread.

What a loader gets from such a front decides the verdict. ``pickle.load`` runs opcodes one by one
until STOP or its first error: every import (``find_class``) and call reached before an error has
already happened. So a front that imports or calls anything fails (ST-P08) even when it errors
later; one that reaches STOP having done neither returns plain data (ST-A04, an advisory: the
``safetensors`` writer makes such fronts now and then); one that errors first, having done
neither, gives a loader nothing at all.
"""
from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

from tensorsafe.readers.blob import Span
from tensorsafe.errors import LimitExceeded
from tensorsafe.readers.safetensors.layout import ByteSource
from tensorsafe.readers.safetensors.model import Issue
from tensorsafe.pickles.judge import judge_trace
from tensorsafe.pickles.policy import Policy
from tensorsafe.pickles.front import CANNOT_START, PROTO, cannot_be_pickle, failed_import, front_effects
from tensorsafe.pickles.walker import MAX_MEMO_ENTRIES, MAX_OPCODES, PickleTrace, walk
from tensorsafe.readers.zip_directory import CENTRAL_MAGIC, END_MAGIC, END_RECORD, END_SEARCH_BYTES
from tensorsafe.report import Finding, Location

EOCD_SIZE = END_RECORD.size
FRONT_LOCATION = "<pickle at start of safetensors file>"
DEFAULT_WALK_SECONDS = 300.0
"""The deadline of a front walk outside a scan (the scanner's per-file default)."""


@dataclass(frozen=True)
class WalkBounds:
    """The limits of one front walk: the scan's opcode and memo limits and its deadline."""

    max_opcodes: int = MAX_OPCODES
    max_memo: int = MAX_MEMO_ENTRIES
    deadline: float | None = None


@dataclass
class PickleFront:
    """The file's front walked as a pickle: its trace (offsets from ``base``) and the verdict."""

    trace: PickleTrace
    base: int
    issue: Issue | None

    @property
    def acts(self) -> bool:
        """A loader reading the front imports or calls something."""
        return self.issue is not None and self.issue.rule_id == "ST-P08"


def zip_at_end(src: ByteSource) -> Issue | None:
    """A zip end record whose comment ends exactly at EOF and whose central directory starts right."""
    size = src.size
    tail_start = max(0, size - END_SEARCH_BYTES)
    tail = src.read(tail_start, size - tail_start)
    i = tail.rfind(END_MAGIC)
    while i >= 0:
        if i + EOCD_SIZE <= len(tail):
            cd_size, = struct.unpack_from("<I", tail, i + 12)
            comment, = struct.unpack_from("<H", tail, i + 20)
            cd_start = tail_start + i - cd_size
            if i + EOCD_SIZE + comment == len(tail) and cd_start >= 0 and src.read(cd_start, 4) == CENTRAL_MAGIC:
                return Issue("ST-P08", f"a zip archive ends the file (central directory at byte {cd_start:,}): zip "
                             "readers open this file as an archive", tail_start + i, "zip")
        i = tail.rfind(END_MAGIC, 0, i)
    return None


def pickle_front(src: ByteSource, bounds: WalkBounds | None = None) -> PickleFront | None:
    """The front of ``src`` walked as a pickle to its real end and judged; ``None`` when its first
    bytes already fail as a pickle stream (no walk needed). The one decision of ``validate`` and ``scan``."""
    if cannot_be_pickle(src.read(0, 3)):
        return None
    if bounds is None:
        bounds = WalkBounds(deadline=time.monotonic() + DEFAULT_WALK_SECONDS)
    trace, base = _walk_front(src, bounds)
    return PickleFront(trace, base, front_issue(trace, base))


def front_issue(trace: PickleTrace, base: int = 0) -> Issue | None:
    """ST-P08 when a loader reading the trace would import or call anything (or the walk could not
    be finished), ST-A04 when it would return plain data, ``None`` when it would fail having done nothing."""
    effects = front_effects(trace)
    if effects:
        offset, what, trigger = min(effects, key=lambda e: e[0])
        more = f" and {len(effects) - 1:,} more imports or calls" if len(effects) > 1 else ""
        ends = f"reaches STOP at byte {trace.end - base:,}" if trace.stopped else \
            f"runs to byte {trace.end - base:,} before it fails"
        return Issue("ST-P08", f"the file's first bytes are also a pickle stream that {what} at byte "
                     f"{offset - base:,}{more} (it {ends}): pickle.load runs it", offset - base, trigger)
    if isinstance(trace.error, LimitExceeded):
        return Issue("ST-P08", f"the file's first bytes are also a pickle stream that could not be followed to "
                     f"its end ({trace.error.message}): a loader may import from it", 0, trace.error.limit)
    if trace.stopped and failed_import(trace) is None:
        return Issue("ST-A04", f"the first {trace.end - base:,} bytes are also a pickle stream that imports and "
                     f"calls nothing ({trace.opcodes} opcodes): pickle.load would return plain data", 0, "pickle")
    return None


def front_findings(front: PickleFront, policy: Policy, path: str, location: Location = Location()) -> list[Finding]:
    """The scanner judge's import and call findings for a front that acts (ST-P08), located inside
    :data:`FRONT_LOCATION`; its parse errors are left out (a polyglot front is expected to end in one)."""
    if not front.acts:
        return []
    verdicts = judge_trace(front.trace, policy, path, location.inside(FRONT_LOCATION), front.base)
    return [f for f in verdicts.findings if not f.rule_id.startswith("PK-S")]


def _walk_front(src: ByteSource, bounds: WalkBounds) -> tuple[PickleTrace, int]:
    """Walk from byte 0 to the end of the file: in place where the bytes are mapped (a span, a file
    with a descriptor), else read whole."""
    kw = {"max_opcodes": bounds.max_opcodes, "max_memo": bounds.max_memo, "deadline": bounds.deadline}
    if isinstance(src, Span):
        return walk(src.buf, src.start, src.end, **kw), src.start
    fileno = getattr(src, "fileno", None)
    if fileno is not None and src.size > 0:
        try:
            mm = mmap.mmap(fileno(), src.size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            mm = None
        if mm is not None:
            try:
                return walk(mm, 0, src.size, **kw), 0
            finally:
                try:
                    mm.close()
                except BufferError:  # a view still open: the collector closes the map
                    pass
    data = src.read(0, src.size)
    return walk(data, 0, len(data), **kw), 0
