"""ST-P08 and ST-A04: files that are also a zip archive, a tar archive, an HDF5 file or a pickle
stream (polyglots).

The zip check reads the end of the file (where every zip reader looks for its end record), the
tar check its first 512 bytes (where ``tarfile`` reads the first member's header), the HDF5 check
8 bytes at each place the HDF5 library looks for its superblock. The
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
from typing import cast

from tensorsafe.readers.blob import Span
from tensorsafe.errors import LimitExceeded
from tensorsafe.readers.safetensors.layout import ByteSource
from tensorsafe.readers.safetensors.model import Issue
from tensorsafe.pickles.judge import judge_trace
from tensorsafe.pickles.policy import Policy
from tensorsafe.pickles.front import CANNOT_START, PROTO, cannot_be_pickle, failed_import, front_effects
from tensorsafe.pickles.walker import MAX_MEMO_ENTRIES, MAX_OPCODES, PickleTrace, walk
from tensorsafe.readers.sniff import TAR_BLOCK, hdf5_superblock, starts_tar_header
from tensorsafe.readers.zip import MAX_CENTRAL_DIRECTORY_BYTES
from tensorsafe.readers.zip_directory import (CENTRAL_MAGIC, END_MAGIC, END_RECORD, END_SEARCH_BYTES, ZIP64_END_RECORD,
                                              ZIP64_LOCATOR, ZipDirectoryError, find_end_record, read_directory)
from tensorsafe.report import Finding, Location

ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
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
    """ST-P08 when a zip reader opens the file as an archive with members. Two readings:

    - ``zipfile``'s, asked of the one zip reader: the end record it picks in the final 64 KiB, then
      the central directory where it looks for it (behind the zip64 end record and locator that
      ``torch.save`` writes, shifted by the bytes before the archive), holding at least one entry;
    - readers that search back from the end for an end record that fits (they skip a stray
      ``PK\\5\\6`` in the comment, which makes ``zipfile`` give up): any end record whose comment
      ends exactly at the end of the file and whose directory starts with a central entry."""
    tail_start = max(0, src.size - END_SEARCH_BYTES)
    tail = src.read(tail_start, src.size - tail_start)
    if END_MAGIC not in tail:  # the common case, one read: neither reading finds an end record
        return None
    span = cast(Span, src)  # the zip reader calls only ``read`` and ``size``, which every ByteSource has
    if find_end_record(span) is not None:
        try:
            directory = read_directory(span, MAX_CENTRAL_DIRECTORY_BYTES)
        except ZipDirectoryError:
            directory = None
        except LimitExceeded as exc:  # fail closed: a directory too large to read may still open
            return Issue("ST-P08", f"a zip end record ends the file and declares a central directory too large to "
                         f"read ({exc.message}): zip readers may open this file as an archive", None, "zip")
        if directory is not None and directory.entries:
            return Issue("ST-P08", f"a zip archive ends the file (central directory at byte {directory.start_dir:,}): "
                         "zip readers open this file as an archive", directory.end_record, "zip")
    return _end_record_that_fits(src, tail, tail_start)


def _end_record_that_fits(src: ByteSource, tail: bytes, tail_start: int) -> Issue | None:
    """An end record in ``tail`` (the final 64 KiB, from ``tail_start``) whose comment ends at EOF and
    whose central directory (the declared size before it, or before its zip64 end record and
    locator) starts with a central entry."""
    i = tail.rfind(END_MAGIC)
    while i >= 0:
        if i + END_RECORD.size <= len(tail):
            cd_size, = struct.unpack_from("<I", tail, i + 12)
            comment, = struct.unpack_from("<H", tail, i + 20)
            cd_end = tail_start + i
            if tail[max(0, i - ZIP64_LOCATOR.size):i][:4] == ZIP64_LOCATOR_MAGIC:
                cd_end -= ZIP64_LOCATOR.size + ZIP64_END_RECORD.size
            cd_start = cd_end - cd_size
            if i + END_RECORD.size + comment == len(tail) and cd_start >= 0 and src.read(cd_start, 4) == CENTRAL_MAGIC:
                return Issue("ST-P08", f"a zip archive ends the file (central directory at byte {cd_start:,}): zip "
                             "readers open this file as an archive", tail_start + i, "zip")
        i = tail.rfind(END_MAGIC, 0, i)
    return None


def tar_at_start(src: ByteSource) -> Issue | None:
    """ST-P08 when ``tarfile`` takes the first 512 bytes (the length and the header text) for a tar
    header: ``torch.load`` opens a file that is not a zip with ``tarfile`` first (the pre-1.0 layout)
    and unpickles its ``storages`` and ``tensors`` members."""
    if not starts_tar_header(src.read(0, TAR_BLOCK)):
        return None
    return Issue("ST-P08", "the file's first 512 bytes are also a tar header: tarfile (and torch.load's pre-1.0 "
                 "reader) opens this file as an archive", 0, "tar")


def hdf5_inside(src: ByteSource) -> Issue | None:
    """ST-P08 when an HDF5 superblock sits where the HDF5 library looks for one after a user block
    (byte 512, 1024, 2048, ...: inside the tensor data): h5py opens the file, and Keras .h5 loaders
    that test ``h5py.is_hdf5`` load the model it holds. A few 8-byte reads, one per power of two."""
    at = hdf5_superblock(cast(Span, src))  # reads through ``read`` and ``size`` only
    if at is None:
        return None
    return Issue("ST-P08", f"an HDF5 superblock sits at byte {at:,} (after a user block): h5py and Keras .h5 "
                 "loaders open this file as HDF5", at, "hdf5")


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
