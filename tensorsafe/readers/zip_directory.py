"""The zip central directory, read step for step the way CPython 3.11's ``zipfile`` reads it.

``zipfile.ZipFile`` builds a ``ZipInfo`` per member (dates, a names dict, a file object per
read): for a checkpoint with thousands of tensors that was a fifth of the whole scan. This reader
makes the same reads and decisions, and raises where ``zipfile`` raises (same messages):

- the end record: the last 22 bytes when the archive has no comment, else the last ``PK\\5\\6``
  in the final 64 KiB; then the zip64 locator right before it and the zip64 end record right
  before that (both looked for at fixed places, as ``zipfile`` does);
- ``concat``, the shift of every offset when bytes were prepended to the archive;
- per entry: signature, UTF-8 or cp437 name cut at its first NUL, extract version at most 6.3,
  the zip64 extra field (sizes and offset replaced only where the classic field is saturated).

``tests/readers/test_zip_directory.py`` checks it against ``zipfile`` on generated and mutated archives.

torch's reader (miniz, in ``PyTorchStreamReader``) finds the directory elsewhere when the end records
say so: :func:`torch_directory_place` says where, so that the scanner reads that directory too.
Reads go through :meth:`Span.read` only (no buffer protocol), so a remote buffer works as a local file does.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from tensorsafe.readers.blob import Span
from tensorsafe.errors import LimitExceeded, ParseError

END_RECORD = struct.Struct("<4s4H2LH")
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
CENTRAL_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_EXTRA_HEADER = struct.Struct("<HH").unpack_from
_U8 = struct.Struct("<Q").unpack_from
MAX_COMMENT = 1 << 16
END_MAGIC = b"PK\x05\x06"
CENTRAL_MAGIC = b"PK\x01\x02"
END_SEARCH_BYTES = MAX_COMMENT + END_RECORD.size
"""How far from the end ``zipfile`` looks for the end record: the record plus the longest comment."""
MAX_EXTRACT_VERSION = 63
"""``zipfile.MAX_EXTRACT_VERSION``: zipfile refuses entries that need a newer reader."""
UTF8_NAME_FLAG = 0x800


class ZipDirectoryError(ParseError):
    """Where ``zipfile`` raises ``BadZipFile`` (or ``NotImplementedError``, ``UnicodeDecodeError``)."""


class Entry(NamedTuple):
    """One central directory entry, as ``zipfile.ZipInfo`` would hold it after reading (a tuple:
    thousands are made per checkpoint)."""

    name: str
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    method: int
    flags: int
    name_length: int
    """Bytes of the name as stored (before the cut at a NUL)."""


@dataclass(frozen=True)
class Directory:
    entries: list[Entry]
    start_dir: int
    """Where the central directory starts (``zipfile.ZipFile.start_dir``)."""
    end_record: int
    """Where the end record is (:func:`find_end_record`)."""
    size: int = 0
    """The central directory's size, as the end record (zip64 or classic) declares it."""
    concat: int = 0
    """The shift ``zipfile`` adds to every offset (bytes before the archive)."""


class DirectoryPlace(NamedTuple):
    """Where a reader reads the central directory: offset, size and the entry count it expects."""

    offset: int
    size: int
    entry_count: int


def read_directory(span: Span, max_read: int) -> Directory:
    """The archive's central directory; raises ``ParseError`` where ``zipfile`` cannot read it.

    ``max_read``: the largest central directory read at once (``LimitExceeded`` beyond it).
    """
    record, location = _end_record(span)
    size_cd, offset_cd = record[5], record[6]
    concat = location - size_cd - offset_cd
    if record[0] == b"PK\x06\x06":
        concat -= ZIP64_END_RECORD.size + ZIP64_LOCATOR.size
    start_dir = offset_cd + concat
    if start_dir < 0:
        raise ZipDirectoryError("Bad offset for central directory")
    if size_cd > max_read:
        raise LimitExceeded("MAX_READ_BYTES", max_read, f"a single read of {size_cd:,} bytes is too large")
    data = span.read(start_dir, size_cd)
    return Directory(_entries(data, size_cd, concat), start_dir, location, size_cd, concat)


def read_entries_at(span: Span, place: DirectoryPlace, max_read: int) -> list[Entry]:
    """The entries of the central directory at ``place``, offsets taken as they are (no shift):
    the directory :func:`torch_directory_place` finds. Raises ``ParseError`` as :func:`read_directory` does."""
    if place.size > max_read:
        raise LimitExceeded("MAX_READ_BYTES", max_read, f"a single read of {place.size:,} bytes is too large")
    return _entries(span.read(place.offset, place.size), place.size, 0)


def torch_directory_place(span: Span) -> DirectoryPlace | None:
    """Where torch's zip reader (miniz's ``mz_zip_reader_read_central_dir``) reads the central
    directory; ``None`` where it gives up before reading one.

    miniz differs from ``zipfile`` in the two ways that matter here: it takes the declared offset as
    it is (``zipfile`` shifts it so the directory ends at the end record, which lets a second
    directory hide in a gap or in the archive comment), and it reads the zip64 end record where the
    locator points (``zipfile``: right before the locator). Its own sanity checks are kept, so that
    a place it would refuse is not reported as one it reads.
    """
    location = _miniz_end_record(span)
    if location is None:
        return None
    (_, this_disk, dir_disk, on_disk, count, size, offset, _) = END_RECORD.unpack(span.read(location, END_RECORD.size))
    locator = _zip64_locator(span, location)
    if locator is not None:
        at, disks = locator
        if at > span.size - ZIP64_END_RECORD.size:
            return None
        raw = span.read(at, ZIP64_END_RECORD.size)
        if raw[:4] == b"PK\x06\x06":
            fields = ZIP64_END_RECORD.unpack(raw)
            if fields[1] < ZIP64_END_RECORD.size - 12 or disks != 1 or max(fields[6:9]) > 0xFFFF_FFFF:
                return None
            this_disk, dir_disk, on_disk, count, size, offset = fields[4:10]
    if count != on_disk or ((this_disk | dir_disk) and (this_disk, dir_disk) != (1, 1)):
        return None
    if size < count * CENTRAL_ENTRY.size or offset + size > span.size:
        return None
    return DirectoryPlace(offset, size, count)


def _miniz_end_record(span: Span) -> int | None:
    """miniz's end record: the last ``PK\\5\\6`` with a whole record after it, in the final 64 KiB."""
    if span.size >= END_RECORD.size and span.read(span.size - END_RECORD.size, 4) == END_MAGIC:
        return span.size - END_RECORD.size  # the common case, one small read
    first = max(span.size - END_SEARCH_BYTES, 0)
    data = span.read(first, span.size - first)
    at = data.rfind(END_MAGIC, 0, max(len(data) - END_RECORD.size + len(END_MAGIC), 0))
    return None if at < 0 else first + at


def _zip64_locator(span: Span, location: int) -> tuple[int, int] | None:
    """The zip64 locator right before the end record at ``location``: where it says the zip64 end
    record is, and its disk count (``None``: there is none)."""
    if location < ZIP64_LOCATOR.size + ZIP64_END_RECORD.size:
        return None
    sig, _, at, disks = ZIP64_LOCATOR.unpack(span.read(location - ZIP64_LOCATOR.size, ZIP64_LOCATOR.size))
    return (at, disks) if sig == b"PK\x06\x07" else None


def find_end_record(span: Span) -> int | None:
    """Where ``zipfile._EndRecData`` finds the end record: the last 22 bytes when they are one with no
    comment, else the last ``PK\\5\\6`` in the final :data:`END_SEARCH_BYTES` (``None``: no zip for it).
    Every reader in the project that asks "is there a zip at the end" asks this."""
    size = span.size
    if size < END_RECORD.size:  # no room for a record (zipfile's search finds none either)
        return None
    tail = span.read(size - END_RECORD.size, END_RECORD.size)
    if len(tail) == END_RECORD.size and tail[:4] == END_MAGIC and tail[-2:] == b"\0\0":
        return size - END_RECORD.size
    first = max(size - END_SEARCH_BYTES, 0)
    data = span.read(first, size - first)
    at = data.rfind(END_MAGIC)
    if at < 0 or len(data) - at < END_RECORD.size:
        return None
    return first + at


def _end_record(span: Span) -> tuple[list, int]:
    """``zipfile._EndRecData``: the end record's fields (zip64 ones when present) and its offset."""
    location = find_end_record(span)
    if location is None:
        raise ZipDirectoryError("File is not a zip file")
    record = list(END_RECORD.unpack(span.read(location, END_RECORD.size)))
    _zip64_end_record(span, location, record)
    return record, location


def _zip64_end_record(span: Span, location: int, record: list) -> None:
    """``zipfile._EndRecData64``: the locator sits right before the end record, the zip64 end record
    right before the locator (a seek before the file start reads from its start, as zipfile's
    reader over a span does)."""
    locator = span.read(max(0, location - ZIP64_LOCATOR.size), ZIP64_LOCATOR.size)
    if len(locator) != ZIP64_LOCATOR.size:
        return
    sig, disk, _, disks = ZIP64_LOCATOR.unpack(locator)
    if sig != b"PK\x06\x07":
        return
    if disk != 0 or disks > 1:
        raise ZipDirectoryError("zipfiles that span multiple disks are not supported")
    raw = span.read(max(0, location - ZIP64_LOCATOR.size - ZIP64_END_RECORD.size), ZIP64_END_RECORD.size)
    if len(raw) != ZIP64_END_RECORD.size:
        return
    fields = ZIP64_END_RECORD.unpack(raw)
    if fields[0] != b"PK\x06\x06":
        return
    record[0] = fields[0]
    record[1:7] = fields[4:10]


def _entries(data: bytes, size_cd: int, concat: int) -> list[Entry]:
    """``zipfile.ZipFile._RealGetContents``'s loop. Lengths are the declared ones: past the end of
    ``data`` a field reads short (or empty), as ``zipfile``'s ``BytesIO`` reads do."""
    entries: list[Entry] = []
    add = entries.append
    unpack = CENTRAL_ENTRY.unpack_from
    entry_size = CENTRAL_ENTRY.size
    total = pos = 0
    n = len(data)
    while total < size_cd:
        if pos + entry_size > n:
            raise ZipDirectoryError("Truncated central directory")
        (sig, _, _, version, _, flags, method, _, _, crc, csize, usize,
         name_len, extra_len, comment_len, _, _, _, offset) = unpack(data, pos)
        if sig != b"PK\x01\x02":
            raise ZipDirectoryError("Bad magic number for central directory")
        pos += entry_size
        raw = data[pos:pos + name_len]
        try:
            name = raw.decode("utf-8") if flags & UTF8_NAME_FLAG else raw.decode("cp437")
        except UnicodeDecodeError as exc:
            raise ZipDirectoryError(str(exc)) from None
        nul = name.find("\0")
        if nul >= 0:
            name = name[:nul]
        if os.sep != "/" and os.sep in name:
            name = name.replace(os.sep, "/")
        pos += name_len
        if version > MAX_EXTRACT_VERSION:
            raise ZipDirectoryError("zip file version %.1f" % (version / 10))
        if extra_len:
            usize, csize, offset = _zip64_extra(data[pos:pos + extra_len], usize, csize, offset)
        pos += extra_len + comment_len
        add(Entry(name, offset + concat, csize, usize, crc, method, flags, name_len))
        total += entry_size + name_len + extra_len + comment_len
    return entries


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """``zipfile.ZipInfo._decodeExtra``: every zip64 field (id 1) replaces the saturated values."""
    while len(extra) >= 4:
        kind, length = _EXTRA_HEADER(extra)
        if length + 4 > len(extra):
            raise ZipDirectoryError("Corrupt extra field %04x (size=%d)" % (kind, length))
        if kind == 1:
            data = extra[4:length + 4]
            field = ""
            try:
                if usize in (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF):
                    field = "File size"
                    usize = _U8(data[:8])[0]
                    data = data[8:]
                if csize == 0xFFFF_FFFF:
                    field = "Compress size"
                    csize = _U8(data[:8])[0]
                    data = data[8:]
                if offset == 0xFFFF_FFFF:
                    field = "Header offset"
                    offset = _U8(data[:8])[0]
            except struct.error:
                raise ZipDirectoryError(f"Corrupt zip64 extra field. {field} not found.") from None
        extra = extra[length + 4:]
    return usize, csize, offset
