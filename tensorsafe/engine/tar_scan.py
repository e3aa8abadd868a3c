"""Tar archives, including the oldest ``torch.save`` layout (sys_info, pickle, storages, tensors)."""
from __future__ import annotations

import struct
import tarfile
import time
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span, SpanReader
from tensorsafe.tensors import STORAGE_ELEMENT_SIZE
from tensorsafe.errors import LimitExceeded
from tensorsafe.pickles.values import Global
from tensorsafe.engine.model_archive import report_model_archive_code
from tensorsafe.engine.zip_scan import scan_trailing_zip
from tensorsafe.report import Location
from tensorsafe.readers.sniff import may_hold_zip_at_end
from tensorsafe.readers.member_names import escapes_folder
from tensorsafe.readers.zip_directory import find_end_record

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

TORCH_TAR_MEMBERS = frozenset({"sys_info", "pickle", "storages", "tensors"})


def scan_tar(fs: "FileScan", span: Span, location: Location, depth: int) -> bool:
    """Scan the members ``tarfile`` lists; True when it lists them (the bytes are a tar), False
    when the archive cannot be read (ARC-05)."""
    try:
        members = _members(span, fs.limits.max_members, fs.deadline)
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as exc:
        fs.note_kind("tar")
        fs.add("ARC-05", f"tar archive cannot be read: {exc}", location)
        return False
    except LimitExceeded as exc:
        fs.note_kind("tar")
        fs.add_error(exc, "ARC-05", location)
        return False
    names = {m.name for m in members}
    torch_tar = {"pickle", "storages"} <= names
    fs.note_kind("pytorch-tar" if torch_tar else "tar")
    report_model_archive_code(fs, (m.name for m in members), location)  # TorchServe: --archive-format tgz
    for m in members:
        if not fs.check_deadline(location):
            return True
        where = location.inside(m.name)
        if _unsafe_name(m):
            fs.add("ARC-04", f"tar member {m.name!r} is {'a link' if (m.issym() or m.islnk()) else 'an unsafe path'}",
                   where, m.name)
        if not _has_data(m):
            continue
        try:
            body = _member_body(span, m, fs.limits.max_decompressed_bytes)
        except LimitExceeded as exc:
            fs.add_error(exc, "ARC-03", where)
            continue
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            fs.add("ARC-05", f"tar member {m.name!r} cannot be read: {exc}", where)
            continue
        if torch_tar and m.name == "storages":
            _scan_torch_storages(fs, body, where, depth + 1)
        elif torch_tar and m.name == "tensors":
            _scan_torch_tensors(fs, body, where, depth + 1)
        else:
            fs.scan_span(body, where, depth + 1, pickle_expected=torch_tar and m.name in TORCH_TAR_MEMBERS)
    if may_hold_zip_at_end(span) and not _zip_end_in_member(span, members):
        scan_trailing_zip(fs, span, location, depth)  # zipfile.is_zipfile says yes: Keras opens a .keras so
    return True


def _zip_end_in_member(span: Span, members: list[tarfile.TarInfo]) -> bool:
    """Is the zip end record ``zipfile`` would find inside a member's data (a zip kept in the tar,
    scanned as that member), rather than after the archive?"""
    at = find_end_record(span)
    if at is None:
        return False
    return any(m.offset_data <= at < m.offset_data + m.size for m in members if _has_data(m))


def _has_data(m: tarfile.TarInfo) -> bool:
    """``tarfile.extractfile`` reads a member of an unknown type as a regular file."""
    return m.isreg() or m.type not in tarfile.SUPPORTED_TYPES


def _member_body(span: Span, m: tarfile.TarInfo, limit: int) -> Span:
    """The bytes ``extractfile`` returns: a sparse member's data chunks are spread out over its
    holes (zeros), so it is rebuilt the way tarfile rebuilds it, within the decompression bound."""
    if m.sparse is None:
        return span.sub(m.offset_data, m.size)
    if m.size > limit:
        raise LimitExceeded("MAX_DECOMPRESSED_BYTES", limit, f"sparse tar member expands to {m.size:,} bytes")
    with tarfile.open(fileobj=span.reader(), mode="r:") as tar:
        member = tar.extractfile(m)
        data = member.read() if member is not None else b""
    return Span.of_bytes(data)


def _members(span: Span, max_members: int, deadline: float) -> list[tarfile.TarInfo]:
    """The members ``tarfile`` lists, then those after its end: GNU tar skips a bad header (and
    ``tar -i`` / ``ignore_zeros`` the end-of-archive blocks) to extract members ``tarfile`` never lists."""
    members: list[tarfile.TarInfo] = []
    with tarfile.open(fileobj=span.reader(), mode="r:") as tar:
        for info in tar:
            members.append(info)
            if len(members) > max_members:
                raise LimitExceeded("MAX_ZIP_MEMBERS", max_members, f"more than {max_members:,} tar members")
        end = tar.offset
    after = _first_data_block(span, end)
    if after is not None:
        _add_members_after_end(span, after, members, max_members, deadline)
    return members


def _add_members_after_end(span: Span, after: int, members: list[tarfile.TarInfo], max_members: int,
                           deadline: float) -> None:
    """Append the members ``ignore_zeros`` finds from ``after`` on, until the bytes stop reading as
    tar (junk shorter than a header, a member cut short: what was listed stays listed)."""
    try:
        with tarfile.open(fileobj=_DeadlineReader(span.sub(after, span.size), deadline), mode="r:",
                          ignore_zeros=True) as tar:
            for info in tar:
                info.offset += after
                info.offset_data += after
                members.append(info)
                if len(members) > max_members:
                    raise LimitExceeded("MAX_ZIP_MEMBERS", max_members, f"more than {max_members:,} tar members")
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError):
        return


def _first_data_block(span: Span, end: int, chunk: int = 1 << 20) -> int | None:
    """Offset of the first 512-byte block from ``end`` on that is not all zeros (the end-of-archive
    blocks and record padding are zeros), or None."""
    for lo in range(end, span.size, chunk):
        data = span.read(lo, chunk)
        stripped = data.lstrip(b"\0")
        if stripped:
            at = lo + len(data) - len(stripped)
            return at - (at - end) % tarfile.BLOCKSIZE
    return None


class _DeadlineReader(SpanReader):
    """A span reader that stops at the scan's deadline: ``ignore_zeros`` walks junk block by block."""

    def __init__(self, span: Span, deadline: float):
        super().__init__(span)
        self.deadline = deadline

    def read(self, n: int = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise LimitExceeded("MAX_SCAN_SECONDS", 0, "scan stopped while looking for tar members after the end")
        return super().read(n)


def _unsafe_name(m: tarfile.TarInfo) -> bool:
    return m.issym() or m.islnk() or escapes_folder(m.name)


class _Cursor:
    """Reads the legacy torch tar members: pickles interleaved with raw sizes and data."""

    def __init__(self, fs: "FileScan", body: Span, location: Location, depth: int):
        self.fs, self.body, self.location, self.depth = fs, body, location, depth
        self.pos = body.start

    def pickle(self):
        trace = self.fs.walk(self.body.buf, self.pos, self.body.end)
        self.fs.judge(trace, self.body, self.location, self.depth)
        if not trace.stopped:
            return None
        self.pos = trace.end
        return trace.root

    def ints(self, fmt: str) -> tuple | None:
        size = struct.calcsize(fmt)
        if self.pos + size > self.body.end:
            return None
        values = struct.unpack(fmt, bytes(self.body.buf[self.pos:self.pos + size]))
        self.pos += size
        return values

    def fail(self, message: str) -> None:
        self.fs.add("TORCH-02", message, self.location.at(self.pos - self.body.start))

    def finish(self) -> None:
        if self.pos < self.body.end:
            self.fs.add("TORCH-01", f"{self.body.end - self.pos:,} bytes follow the last record",
                        self.location.at(self.pos - self.body.start))


def _scan_torch_storages(fs: "FileScan", body: Span, location: Location, depth: int) -> None:
    cur = _Cursor(fs, body, location, depth)
    count = cur.pickle()
    if not isinstance(count, int) or count < 0:
        return cur.fail("storage count is not a literal integer")
    for _ in range(count):
        record = cur.pickle()
        if not (isinstance(record, tuple) and len(record) == 3 and isinstance(record[2], Global)):
            return cur.fail("storage record is not (key, location, storage type)")
        itemsize = STORAGE_ELEMENT_SIZE.get(record[2].name)
        size = cur.ints("<q")
        if itemsize is None or size is None or size[0] < 0:
            return cur.fail("storage size cannot be read")
        cur.pos += size[0] * itemsize
        if cur.pos > body.end:
            return cur.fail("storage data runs past the end of the member")
    if cur.pickle() is None:
        return
    cur.finish()


def _scan_torch_tensors(fs: "FileScan", body: Span, location: Location, depth: int) -> None:
    cur = _Cursor(fs, body, location, depth)
    count = cur.pickle()
    if not isinstance(count, int) or count < 0:
        return cur.fail("tensor count is not a literal integer")
    for _ in range(count):
        if cur.pickle() is None:
            return
        ndim = cur.ints("<ii")
        if ndim is None or not 0 <= ndim[0] <= 64:
            return cur.fail("tensor rank cannot be read")
        if cur.ints(f"<{2 * ndim[0] + 1}q") is None:
            return cur.fail("tensor sizes run past the end of the member")
    cur.finish()
