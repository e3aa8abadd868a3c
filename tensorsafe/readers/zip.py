"""Zip archives read the way every loader might: central directory, local headers and the gaps.

The central directory is read as CPython's ``zipfile`` reads it (``zip_directory``, zip64
included, checked against ``zipfile`` by differential tests); local headers, CRCs, flags,
overlaps and duplicates are checked here, because readers disagree on exactly those and
attackers use the disagreements.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

from tensorsafe.readers.blob import Span
from tensorsafe.readers.decompress import MAX_DECOMPRESSED_BYTES, NotOpened, decompress
from tensorsafe.readers.zip_directory import (Directory, Entry, ZipDirectoryError, read_directory, read_entries_at,
                                              torch_directory_place)
from tensorsafe.limits import MAX_ZIP_MEMBERS
from tensorsafe.errors import LimitExceeded, ParseError

MAX_CENTRAL_DIRECTORY_BYTES = 256 << 20
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
NORMAL_FLAG_BITS = 0x0002 | 0x0004 | 0x0008 | 0x0800
"""Deflate options (bits 1-2), data descriptor (bit 3), UTF-8 names (bit 11)."""
ZIP_STORED, ZIP_DEFLATED, ZIP_BZIP2, ZIP_LZMA, ZIP_ZSTANDARD = 0, 8, 12, 14, 93
"""The method numbers of the zip format (APPNOTE 4.4.5), as ``zipfile`` names them; written out so that a
scan does not import ``zipfile`` (about 15 ms of start-up) for four constants."""
METHODS = {ZIP_STORED: "stored", ZIP_DEFLATED: "deflate", ZIP_BZIP2: "bz2",
           ZIP_LZMA: "lzma-alone", ZIP_ZSTANDARD: "zstd"}
"""Every method a Python zip reader decodes (zstd: Python 3.14's zipfile), as that reader decodes it."""
UNOPENED_METHODS = {1: "shrink", 2: "reduce", 3: "reduce", 4: "reduce", 5: "reduce", 6: "implode",
                    9: "deflate64", 10: "PKWARE DCL implode", 18: "IBM TERSE", 19: "IBM LZ77", 20: "zstd (old id)",
                    95: "xz", 96: "jpeg", 97: "wavpack", 98: "ppmd", 99: "AES encryption"}
LZMA_PROPS_SIZE = 5


@dataclass
class Anomaly:
    rule_id: str
    message: str
    member: str | None = None
    offset: int | None = None


@dataclass
class Member:
    name: str
    local_name: str
    header_offset: int
    data_offset: int
    compressed_size: int
    size: int
    crc: int
    method: int
    flags: int

    @property
    def data_end(self) -> int:
        return self.data_offset + self.compressed_size


@dataclass
class ZipView:
    span: Span
    members: list[Member] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    front: int = 0
    """Bytes before the first member (a pickle in front of a zip is read by torch.load)."""


def open_zip(span: Span, max_members: int = MAX_ZIP_MEMBERS) -> ZipView:
    """Parse the central directory and every local header; raises ``ParseError`` if unreadable."""
    try:
        directory = read_directory(span, MAX_CENTRAL_DIRECTORY_BYTES)
    except ZipDirectoryError as exc:
        raise ParseError(f"cannot read the zip central directory: {exc.message}") from None
    view = ZipView(span)
    entries = directory.entries + _torch_only_entries(span, directory, view.anomalies)
    if len(entries) > max_members:
        raise LimitExceeded("MAX_ZIP_MEMBERS", max_members, f"{len(entries):,} zip members is more than allowed")
    read = span.reader_at()
    for entry in entries:
        member = _local_member(span, entry, view.anomalies, read)
        if member is not None:
            view.members.append(member)
    _check_layout(view, directory.start_dir)
    _check_end_records(span, directory.end_record, view.anomalies)
    return view


def _torch_only_entries(span: Span, directory: Directory, anomalies: list[Anomaly]) -> list[Entry]:
    """The entries of the central directory torch's reader (miniz) reads where it is not the one
    ``zipfile`` reads: miniz takes the declared offset unshifted and the zip64 end record where the
    locator points, so a second directory can hide in the comment or between members. Both are
    read: their members are scanned too (and the disagreement reported). A place that holds no
    directory (bytes prepended to an archive: torch reads no archive there) adds nothing."""
    place = torch_directory_place(span)
    if place is None or place.entry_count == 0 or \
            (place.offset, place.size, directory.concat) == (directory.start_dir, directory.size, 0):
        return []
    if span.read(place.offset, 4) != b"PK\x01\x02":  # miniz stops at the first entry: no archive
        return []
    anomalies.append(Anomaly("ZIP-08", f"torch's zip reader reads the central directory at offset {place.offset:,} "
                             f"({place.entry_count} entries), zipfile at {directory.start_dir:,}", None, place.offset))
    try:
        entries = read_entries_at(span, place, MAX_CENTRAL_DIRECTORY_BYTES)
    except ZipDirectoryError as exc:
        anomalies.append(Anomaly("ZIP-07", f"the central directory torch reads cannot be read: {exc.message}",
                                 None, place.offset))
        return []
    known = {(e.name, e.header_offset) for e in directory.entries}
    return [e for e in entries if (e.name, e.header_offset) not in known]


def _check_end_records(span: Span, end: int, anomalies: list[Anomaly]) -> None:
    """The classic end record (at ``end``) and the zip64 one must agree: readers that ignore zip64
    when the classic fields are not saturated (0xFFFF...) would find another central directory."""
    if end < 20:
        return
    tail = span.read(end - 20, 20 + 22)
    at = 20
    if tail[:4] != b"PK\x06\x07" or len(tail) < at + 22:
        return
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", tail, at)
    z64_pos = struct.unpack_from("<Q", tail, at - 12)[0]
    z64 = span.read(z64_pos, 56)
    if len(z64) < 56 or z64[:4] != b"PK\x06\x06":
        anomalies.append(Anomaly("ZIP-07", "the zip64 end-record locator points at no zip64 end record", None, z64_pos))
        return
    z_entries, z_size, z_offset = struct.unpack_from("<QQQ", z64, 32)
    for name, classic, wide, saturated in (("entry count", entries, z_entries, 0xFFFF),
                                           ("central directory size", cd_size, z_size, 0xFFFFFFFF),
                                           ("central directory offset", cd_offset, z_offset, 0xFFFFFFFF)):
        if classic != saturated and classic != wide:
            anomalies.append(Anomaly("ZIP-08", f"the end record and the zip64 end record disagree on the {name} "
                                     f"({classic} vs {wide})", None, None))


def _local_member(span: Span, entry: Entry, anomalies: list[Anomaly],
                  read: Callable[[int, int], bytes]) -> Member | None:
    """``read``: ``span.reader_at()``, made once for all members."""
    offset, size = entry.header_offset, span.size
    if 0 <= offset and offset + LOCAL_HEADER.size <= size:
        # one read for the fixed part and the name (as long as the central directory's); a read,
        # not unpack_from on the buffer: span.buf may be remote
        at = span.start + offset
        head = read(at, min(span.end, at + LOCAL_HEADER.size + entry.name_length))
        found = head[:4] == b"PK\x03\x04"
    else:  # the offset is past the end, or before the start (the slice then counts from the end)
        at = span.start + offset
        found = offset + LOCAL_HEADER.size <= size and span.buf[at:at + 4] == b"PK\x03\x04"
        head = span.read(offset, LOCAL_HEADER.size) if found else b""
    if not found:
        anomalies.append(Anomaly("ZIP-07", f"member {entry.name!r} has no local header at offset "
                                 f"{offset}", entry.name, offset))
        return None
    (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = LOCAL_HEADER.unpack_from(head)
    if offset >= 0 and name_len <= entry.name_length:
        name_raw = head[LOCAL_HEADER.size:LOCAL_HEADER.size + name_len]
    else:
        name_raw = span.read(offset + LOCAL_HEADER.size, name_len)
    if name_raw.isascii():  # the common case: the same text in either encoding, decoded faster
        local_name = name_raw.decode("ascii")
    else:
        local_name = name_raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    data_offset = offset + LOCAL_HEADER.size + name_len + extra_len
    member = Member(entry.name, local_name, offset, data_offset, entry.compress_size,
                    entry.file_size, entry.crc, entry.method, entry.flags)
    _check_member(member, flags, method, crc, csize, usize, anomalies)
    if data_offset + entry.compress_size > size:
        anomalies.append(Anomaly("ZIP-06", f"member {entry.name!r} runs past the end of the file",
                                 entry.name, offset))
    return member


def _check_member(m: Member, flags: int, method: int, crc: int, csize: int, usize: int,
                  anomalies: list[Anomaly]) -> None:
    if m.local_name != m.name and m.local_name.replace("\\", "/") != m.name:
        anomalies.append(Anomaly("ZIP-01", f"central directory names {m.name!r} but the local header names "
                                 f"{m.local_name!r}", m.name, m.header_offset))
    unusual = (m.flags | flags) & ~NORMAL_FLAG_BITS
    if unusual:
        what = "encrypted" if unusual & 1 else f"flag bits 0x{unusual:04x}"
        anomalies.append(Anomaly("ZIP-03", f"member {m.name!r} is {what}", m.name, m.header_offset))
    if method != m.method or (flags & ~0x0800) != (m.flags & ~0x0800):
        anomalies.append(Anomaly("ZIP-08", f"member {m.name!r}: local header and central directory disagree on "
                                 "method or flags", m.name, m.header_offset))
    elif not flags & 0x0008 and (csize, usize, crc) != (m.compressed_size & 0xFFFFFFFF, m.size & 0xFFFFFFFF,
                                                       m.crc) and (csize, usize) != (0xFFFFFFFF, 0xFFFFFFFF):
        anomalies.append(Anomaly("ZIP-08", f"member {m.name!r}: local header and central directory disagree on "
                                 "sizes or CRC", m.name, m.header_offset))
    if m.method == ZIP_STORED and m.compressed_size != m.size:
        anomalies.append(Anomaly("ZIP-08", f"stored member {m.name!r} has different compressed and "
                                 "uncompressed sizes", m.name, m.header_offset))


def _check_layout(view: ZipView, start_dir: int) -> None:
    seen: dict[str, int] = {}
    for m in view.members:
        seen[m.name] = seen.get(m.name, 0) + 1
    for name, count in seen.items():
        if count > 1:
            view.anomalies.append(Anomaly("ZIP-04", f"{count} members are named {name!r}", name))
    ordered = sorted(view.members, key=lambda m: m.header_offset)
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.header_offset < prev.data_end:
            view.anomalies.append(Anomaly("ZIP-06", f"members {prev.name!r} and {cur.name!r} overlap",
                                          cur.name, cur.header_offset))
    view.front = ordered[0].header_offset if ordered else start_dir
    if view.front > 0:
        view.anomalies.append(Anomaly("ZIP-05", f"{view.front:,} bytes precede the first zip member",
                                      None, 0))


def member_span(view: ZipView, m: Member, limit: int = MAX_DECOMPRESSED_BYTES,
                deadline: float | None = None) -> tuple[Span, bool]:
    """The member's bytes (a window for stored members) and whether they match the CRC-32.

    Flags and CRCs are not obeyed, only reported: torch's reader ignores both, so a member marked
    encrypted or with a wrong CRC is still read, and scanned, the way torch would read it.
    A method no Python zip reader decodes is ``NotOpened`` (ARC-06): unscanned, never skipped.
    """
    method = METHODS.get(m.method)
    if method is None:
        name = UNOPENED_METHODS.get(m.method, "unknown")
        raise NotOpened(f"member {m.name!r} uses compression method {m.method} ({name}), which tensorsafe does "
                        "not decode; its bytes were not scanned")
    raw = view.span.sub(m.data_offset, m.compressed_size)
    if raw.size != m.compressed_size:
        raise ParseError("member data runs past the end of the file")
    if method == "stored":
        return raw, _crc32(raw) == m.crc
    if method == "lzma-alone":
        raw = _zip_lzma_as_alone(raw, m.size)
    data = decompress(raw, method, limit, allow_trailing=True, deadline=deadline)
    if len(data) != m.size:
        raise ParseError(f"decompresses to {len(data):,} bytes, the directory says {m.size:,}")
    return Span.of_bytes(data), zlib.crc32(data) == m.crc


def _zip_lzma_as_alone(raw: Span, size: int) -> Span:
    """Zip's LZMA members start with a 4-byte header (LZMA SDK version, properties size) and the raw
    LZMA1 properties; ``zipfile`` decodes them as raw LZMA1 and keeps ``file_size`` bytes. The same
    decoding through a public API: the lzma "alone" format with that size (an end marker is optional)."""
    head = raw.read(0, 4)
    if len(head) < 4:
        raise ParseError("LZMA member header is truncated")
    props_size = struct.unpack_from("<H", head, 2)[0]
    if props_size != LZMA_PROPS_SIZE:
        raise ParseError(f"LZMA member properties are {props_size} bytes, not {LZMA_PROPS_SIZE}")
    props = raw.read(4, props_size)
    return Span.of_bytes(props + struct.pack("<Q", size) + raw.read(4 + props_size, raw.size))


def _crc32(span: Span, chunk: int = 1 << 22) -> int:
    crc = 0
    for pos in range(0, span.size, chunk):
        crc = zlib.crc32(span.read(pos, chunk), crc)
    return crc
