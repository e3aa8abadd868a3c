"""Container detection by magic bytes, never by the file name."""
from __future__ import annotations

import enum
import struct
from typing import TypeVar

from tensorsafe.errors import ParseError
from tensorsafe.readers.blob import Span
from tensorsafe.readers.zip_directory import END_MAGIC, find_end_record
from tensorsafe.readers.safetensors.layout import MAX_HEADER_BYTES

ZIP_LOCAL_MAGIC = b"PK\x03\x04"
ZIP_EMPTY_MAGIC = END_MAGIC
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
BZ2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
LZMA_ALONE_MAGIC = b"\x5d\x00"
"""joblib's prefix for the lzma "alone" format (properties byte 0x5d, then the dictionary size):
joblib opens any file that starts with it as lzma."""
LZMA_ALONE_HEADER = struct.Struct("<BIQ")
"""An lzma "alone" (.lzma) header: properties byte ((pb * 5 + lp) * 9 + lc), dictionary size,
uncompressed size (all ones: unknown, the stream ends with an end marker)."""
LZMA_UNKNOWN_SIZE = (1 << 64) - 1
LZMA_MAX_KNOWN_SIZE = 1 << 38
"""liblzma's automatic decoder (``lzma.open``, ``LZMAFile``: how pandas and joblib read .lzma)
refuses a declared size from 256 GiB on, and a dictionary size that is not 2^n or 2^n + 2^(n-1)."""
LZMA_MIN_DICT_SIZE = 1 << 12
"""The smallest dictionary an lzma encoder writes (liblzma, the LZMA SDK): smaller ones are taken
only after joblib's prefix, so that leading zero bytes (an HDF5 user block) are not lzma."""
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_FRAME = struct.Struct("<II")
"""A skippable frame (magic 0x184D2A50-0x184D2A5F, then its size), which LZ4 and zstd readers skip."""
MAX_SKIPPABLE_FRAMES = 64
JOBLIB_ZFILE_MAGIC = b"ZF"
"""joblib < 0.9.3 "Z-files": ``ZF``, the length in hex padded to 19 bytes, then a zlib stream."""
JOBLIB_ZFILE_LENGTH_FIELD = 18
UNOPENED_FORMATS = (
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"Rar!\x1a\x07\x00", "rar archive"),
    (b"Rar!\x1a\x07\x01\x00", "rar archive"),
    (b"LZIP", "lzip stream"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop stream"),
    (b"\xff\x06\x00\x00sNaPpY", "snappy framed stream"),
    (b"MSCF\x00\x00\x00\x00", "cab archive"),
    (b"!<arch>\n", "ar archive"),
    (b"xar!", "xar archive"),
    (b"hsqs", "squashfs image"),
    (b"\x1f\x9d", "unix compress (.Z) stream"),
    (b"\x1f\xa0", "lzh compress (.Z) stream"),
)
"""Archive and compression magics that tensorsafe does not open: each is ARC-06, never clean."""
TAR_MAGIC_OFFSET = 257
GGUF_MAGIC = b"GGUF"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_USER_BLOCK_OFFSETS = tuple(512 << i for i in range(48))
"""HDF5's superblock sits at 0 or after a user block of 512, 1024, 2048, ... bytes (the library searches these)."""
TORCH_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
"""The first object a legacy (pre-1.6) ``torch.save`` file pickles."""


class Kind(str, enum.Enum):
    ZIP = "zip"
    TAR = "tar"
    GZIP = "gzip"
    BZ2 = "bz2"
    XZ = "xz"
    LZMA = "lzma"
    ZLIB = "zlib"
    LZ4 = "lz4"
    ZSTD = "zstd"
    JOBLIB_ZFILE = "joblib-zfile"
    UNOPENED = "unopened"
    NPY = "numpy"
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    HDF5 = "hdf5"
    PICKLE = "pickle"
    UNKNOWN = "unknown"


_T = TypeVar("_T")


def _by_first_byte(magics: tuple[tuple[bytes, _T], ...]) -> dict[int, tuple[tuple[bytes, _T], ...]]:
    """The magics grouped by their first byte, in their order: a lookup finds the candidates, and
    the first of them that matches is the first in the whole list that does."""
    out: dict[int, tuple[tuple[bytes, _T], ...]] = {}
    for magic, what in magics:
        out[magic[0]] = out.get(magic[0], ()) + ((magic, what),)
    return out


LEADING_MAGICS = _by_first_byte((
    (ZIP_LOCAL_MAGIC, Kind.ZIP), (ZIP_EMPTY_MAGIC, Kind.ZIP), (NPY_MAGIC, Kind.NPY), (GGUF_MAGIC, Kind.GGUF),
    (HDF5_MAGIC, Kind.HDF5), (GZIP_MAGIC, Kind.GZIP), (BZ2_MAGIC, Kind.BZ2), (XZ_MAGIC, Kind.XZ),
    (LZ4_FRAME_MAGIC, Kind.LZ4), (ZSTD_FRAME_MAGIC, Kind.ZSTD),
))
"""The kinds told by magic bytes alone, checked first and in this order (a bz2 magic also needs a
block-size digit)."""
_UNOPENED_BY_FIRST_BYTE = _by_first_byte(UNOPENED_FORMATS)


def sniff(span: Span) -> Kind:
    """What the first bytes say the span is. ``UNKNOWN`` may still be a protocol-0/1 pickle."""
    head = span.head(512)
    spelled = magic_kind(span, head)
    if spelled is not None:
        # A header length's low bytes can spell a magic (35,615 is gzip's 1F 8B, 67,324,752 a zip's
        # PK\3\4): valid safetensors is safetensors to its loaders (the scanner reads it both ways).
        return Kind.SAFETENSORS if is_safetensors(span, head) and reads_as_safetensors(span) else spelled
    if is_safetensors(span, head):
        # Before the pickle check: a header length of 0x3?80 starts with the PROTO opcode. A valid
        # header length (<= 100 MB) leaves at most 4 bytes before NUL bytes, too few for an import.
        return Kind.SAFETENSORS
    if len(head) > 2 and head[0] == 0x80 and head[1] <= 5:
        return Kind.PICKLE
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar":
        return Kind.TAR
    if unopened_format(head) is not None:
        return Kind.UNOPENED
    if starts_lzma_alone(head):
        return Kind.LZMA
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return Kind.ZLIB
    if joblib_zfile_data_offset(head) is not None:
        return Kind.JOBLIB_ZFILE
    if hdf5_superblock(span) is not None:
        return Kind.HDF5
    return Kind.UNKNOWN


TAR_BLOCK = 512
_TAR_CHECKSUM_FIELD = slice(148, 156)


def starts_tar_header(head: bytes) -> bool:
    """Whether Python's ``tarfile`` takes the first 512 bytes for a tar header: it looks at no magic,
    only at the checksum and the number fields (an old-style header without ``ustar`` counts).
    ``torch.load`` reads a file that is not a zip with ``tarfile`` first (the pre-1.0 layout) and
    reads it as a pickle stream only when that fails, so a pickle that is also a tar is read both ways."""
    if len(head) < TAR_BLOCK or not head[:TAR_BLOCK].strip(b"\0"):
        return False
    field = head[_TAR_CHECKSUM_FIELD]
    if field[0] in (0o200, 0o377):  # tarfile's base-256 form
        declared = int.from_bytes(field[1:], "big") - (256 ** 7 if field[0] == 0o377 else 0)
    else:
        try:  # tarfile's own reading of the field: up to a NUL, stripped, int(..., 8) (signs, "0o", "_")
            declared = int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
        except (UnicodeDecodeError, ValueError):
            return False
    rest = head[:148] + head[156:TAR_BLOCK]
    unsigned = 256 + sum(rest)
    if declared not in (unsigned, unsigned - 256 * sum(b > 127 for b in rest)):
        return False
    import tarfile  # only for a block whose checksum matches: tarfile's own check of the other fields

    try:
        tarfile.TarInfo.frombuf(head[:TAR_BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def starts_lzma_alone(head: bytes) -> bool:
    """An lzma "alone" stream: joblib's prefix, or any header liblzma's automatic decoder takes (any
    lc + lp <= 4 and pb <= 4, as ``lzma.compress(format=FORMAT_ALONE, filters=...)`` writes them)
    followed by the range coder's first byte, which is always zero. The header is 14 fixed bytes
    that text and other formats do not spell; a stream the decoder then refuses is "not lzma"
    (``WEAK_MAGIC`` in the engine). Dictionary sizes only ``FORMAT_ALONE`` takes (no encoder
    writes them, no loader reads them that way) are not lzma: those bytes are unknown, never clean."""
    if head.startswith(LZMA_ALONE_MAGIC):
        return True
    if len(head) <= LZMA_ALONE_HEADER.size or head[LZMA_ALONE_HEADER.size] != 0:
        return False
    props, dict_size, size = LZMA_ALONE_HEADER.unpack_from(head)
    if props >= 225 or props % 9 + props % 45 // 9 > 4:  # lc + lp > 4
        return False
    if dict_size < LZMA_MIN_DICT_SIZE or size >= LZMA_MAX_KNOWN_SIZE and size != LZMA_UNKNOWN_SIZE:
        return False
    return dict_size == 0xFFFFFFFF or dict_size // (dict_size & -dict_size) in (1, 3)  # 2^n or 3 * 2^(n-1)


def hdf5_superblock(span: Span) -> int | None:
    """Offset of the HDF5 signature (0, or after a user block), or None."""
    for offset in (0,) + HDF5_USER_BLOCK_OFFSETS:
        if offset + len(HDF5_MAGIC) > span.size:
            return None
        if span.read(offset, len(HDF5_MAGIC)) == HDF5_MAGIC:
            return offset
    return None


def unopened_format(head: bytes) -> str | None:
    """The name of an archive or compression format that tensorsafe does not open, if ``head`` starts one."""
    for magic, name in _UNOPENED_BY_FIRST_BYTE.get(head[0], ()) if head else ():
        if head.startswith(magic):
            return name
    return None


def _is_skippable_frame(head: bytes) -> bool:
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50


def _after_skippable_frames(span: Span) -> Kind:
    """LZ4 or zstd by the first frame after the skippable ones (their tools skip those frames);
    zstd when no such frame follows, whose decoder then says what is wrong."""
    pos = 0
    for _ in range(MAX_SKIPPABLE_FRAMES):
        head = span.read(pos, SKIPPABLE_FRAME.size)
        if not _is_skippable_frame(head) or len(head) < SKIPPABLE_FRAME.size:
            break
        pos += SKIPPABLE_FRAME.size + SKIPPABLE_FRAME.unpack(head)[1]
    return Kind.LZ4 if span.read(pos, 4) == LZ4_FRAME_MAGIC else Kind.ZSTD


def joblib_zfile_data_offset(head: bytes) -> int | None:
    """Where the zlib stream of a joblib Z-file starts (``numpy_pickle_compat.read_zfile``: the
    length field is read with ``int(field, 16)``, then one space is skipped if present)."""
    end = len(JOBLIB_ZFILE_MAGIC) + JOBLIB_ZFILE_LENGTH_FIELD
    if not head.startswith(JOBLIB_ZFILE_MAGIC) or len(head) < end:
        return None
    try:
        int(head[len(JOBLIB_ZFILE_MAGIC):end], 16)
    except ValueError:
        return None
    if head[end:end + 1] != b" ":
        return end
    # joblib reads a 19-byte field (its _MAX_LEN; ours ends on its padding) and then skips one more
    # space: the header python 2 joblib <= 0.8.4 wrote, one byte wider, so its stream starts there
    return end + 2 if head[end + 1:end + 2] == b" " else end + 1


def is_safetensors(span: Span, head: bytes | None = None) -> bool:
    """8-byte little-endian header length that fits the file, then a JSON object. A header whose
    whitespace runs past ``head`` (writers may pad it, hostile files may lead with it) is left to
    the one header reader: no window decides."""
    head = span.head(16) if head is None else head
    if len(head) < 9:
        return False
    n = struct.unpack_from("<Q", head)[0]
    if n == 0 or n > MAX_HEADER_BYTES or 8 + n > span.size:
        return False
    text = head[8:].lstrip(b" \t\r\n")
    if text or len(head) >= span.size:
        return text[:1] == b"{"
    return reads_as_safetensors(span)


def reads_as_safetensors(span: Span) -> bool:
    """The one header reader takes the span for safetensors: every format rule (ST-F01 to ST-F18) passes."""
    # loaded only for a span that needs it: its JSON readers (numpy, msgspec) cost every other scan start-up time
    from tensorsafe.readers.safetensors.read import read_checked_header

    try:
        read_checked_header(span)
    except ParseError:
        return False
    return True


def magic_kind(span: Span, head: bytes | None = None) -> Kind | None:
    """The kind the first bytes spell by magic alone (:data:`LEADING_MAGICS`, skippable frames), if any."""
    head = span.head(512) if head is None else head
    if head:
        for magic, kind in LEADING_MAGICS.get(head[0], ()):
            if head.startswith(magic) and (kind is not Kind.BZ2 or len(head) > 3 and head[3:4] in b"123456789"):
                return kind
    if _is_skippable_frame(head):
        return _after_skippable_frames(span)
    return None


def may_hold_zip_at_end(span: Span) -> bool:
    """``zipfile.is_zipfile`` would say yes: it finds an end record (loaders open such files as archives)."""
    return find_end_record(span) is not None
