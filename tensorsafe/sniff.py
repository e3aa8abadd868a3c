"""Container detection by magic bytes, never by the file name."""
from __future__ import annotations

import enum
import struct

from tensorsafe.blob import Span
from tensorsafe.header.layout import MAX_HEADER_BYTES

ZIP_LOCAL_MAGIC = b"PK\x03\x04"
ZIP_EMPTY_MAGIC = b"PK\x05\x06"
ZIP_EOCD_MAGIC = b"PK\x05\x06"
ZIP_EOCD_SEARCH = 65_557  # 22-byte record + 65,535-byte comment
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
BZ2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
LZMA_ALONE_MAGIC = b"\x5d\x00\x00"
TAR_MAGIC_OFFSET = 257
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
    NPY = "numpy"
    SAFETENSORS = "safetensors"
    PICKLE = "pickle"
    UNKNOWN = "unknown"


def sniff(span: Span) -> Kind:
    """What the first bytes say the span is. ``UNKNOWN`` may still be a protocol-0/1 pickle."""
    head = span.head(512)
    if head.startswith(ZIP_LOCAL_MAGIC) or head.startswith(ZIP_EMPTY_MAGIC):
        return Kind.ZIP
    if head.startswith(NPY_MAGIC):
        return Kind.NPY
    if head.startswith(GZIP_MAGIC):
        return Kind.GZIP
    if head.startswith(BZ2_MAGIC) and len(head) > 3 and head[3:4] in b"123456789":
        return Kind.BZ2
    if head.startswith(XZ_MAGIC):
        return Kind.XZ
    if is_safetensors(span, head):
        # Before the pickle check: a header length of 0x3?80 starts with the PROTO opcode. A valid
        # header length (<= 100 MB) leaves at most 4 bytes before NUL bytes, too few for an import.
        return Kind.SAFETENSORS
    if len(head) > 2 and head[0] == 0x80 and head[1] <= 5:
        return Kind.PICKLE
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar":
        return Kind.TAR
    if head.startswith(LZMA_ALONE_MAGIC):
        return Kind.LZMA
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return Kind.ZLIB
    return Kind.UNKNOWN


def is_safetensors(span: Span, head: bytes | None = None) -> bool:
    """8-byte little-endian header length that fits the file, then a JSON object."""
    head = span.head(16) if head is None else head
    if len(head) < 9:
        return False
    n = struct.unpack_from("<Q", head)[0]
    if n == 0 or n > MAX_HEADER_BYTES or 8 + n > span.size:
        return False
    return head[8:].lstrip(b" \t\r\n")[:1] == b"{"


def may_hold_zip_at_end(span: Span) -> bool:
    return ZIP_EOCD_MAGIC in span.tail(ZIP_EOCD_SEARCH)
