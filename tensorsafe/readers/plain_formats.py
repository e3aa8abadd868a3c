"""Plain data formats kept next to models, identified by reading their whole structure.

A file that is not a pickle, a container or a model format is clean only when it is positively
one of these: text (UTF-8, or UTF-16 with a byte-order mark), a PNG, JPEG, GIF or WebP image read
chunk by chunk to its end, an empty file, or a data-only serialisation
(:mod:`tensorsafe.readers.serialized_data`: Flax msgpack, sentencepiece models). Hand-written on purpose: each reader only walks the
framing (no pixel is decoded), in bounded time, and stops at the first byte that breaks it.
Anything else is *unscanned* (see :mod:`tensorsafe.engine.identify`).
"""
from __future__ import annotations

import codecs
import re
import struct
import zlib
from typing import Callable

from tensorsafe.readers.blob import Span
from tensorsafe.readers.serialized_data import is_msgpack_map, is_sentencepiece_model

TEXT_CHUNK = 1 << 20
CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
"""C0 controls that text never holds (tab, newlines, form feed, vertical tab and ESC are allowed)."""
CONTROL_CHARS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")


def identify_plain(span: Span, deadline_ok: Callable[[], bool] = lambda: True) -> str | None:
    """The plain format ``span`` holds, read to its last byte (``text``, ``png``, ...), or None."""
    if span.size == 0:
        return "empty"
    head = span.head(16)
    for magic, name, reader in IMAGE_READERS:
        if head.startswith(magic):
            return name if reader(span) else None
    if is_text(span, deadline_ok):
        return "text"
    if is_msgpack_map(span, deadline_ok):
        return "msgpack"
    if is_sentencepiece_model(span, deadline_ok):
        return "sentencepiece"
    return None


_DECODERS = {name: codecs.getincrementaldecoder(name) for name in ("utf-8", "utf-16")}
"""Looked up once (a codec lookup per text file was a tenth of its identification)."""


def is_text(span: Span, deadline_ok: Callable[[], bool] = lambda: True) -> bool:
    """UTF-8 (optionally with a BOM) or BOM-marked UTF-16 without control characters, to the end."""
    head = span.head(4)
    start = 0
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not head.startswith(codecs.BOM_UTF32_LE):
        encoding, ascii_check = "utf-16", False
    else:  # utf-8-sig's decoder returns nothing, not an error, for a final b"\xef" (a BOM's first byte)
        encoding, ascii_check = "utf-8", True
        start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
    decoder = _DECODERS[encoding]("strict")
    for pos in range(start, span.size, TEXT_CHUNK):
        if not deadline_ok():
            return False
        chunk = span.read(pos, TEXT_CHUNK)
        if ascii_check and CONTROL_BYTES.search(chunk):
            return False
        try:
            text = decoder.decode(chunk, final=pos + TEXT_CHUNK >= span.size)
        except UnicodeDecodeError:
            return False
        if not ascii_check and CONTROL_CHARS.search(text):
            return False
    return True


# -- images: the framing only ---------------------------------------------------------------------
def _png(span: Span) -> bool:
    """Signature, then length/type/data/CRC chunks, IHDR first, IEND last and at the very end."""
    pos, first = len(PNG_SIGNATURE), True
    while pos + 12 <= span.size:
        length, ctype = struct.unpack(">I4s", span.read(pos, 8))
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > span.size or not ctype.isalpha() or (first and ctype != b"IHDR"):
            return False
        body = span.read(pos + 4, 4 + length)
        if zlib.crc32(body) != struct.unpack(">I", span.read(pos + 8 + length, 4))[0]:
            return False
        if ctype == b"IEND":
            return end == span.size
        pos, first = end, False
    return False


JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg(span: Span) -> bool:
    """SOI, marker segments, entropy-coded scans (FF00 stuffing and RSTn inside), EOI at the end."""
    pos = 2
    while pos + 2 <= span.size:
        marker = span.read(pos, 2)
        if marker[0] != 0xFF:
            return False
        code = marker[1]
        if code == 0xFF:
            pos += 1
            continue
        if code == 0xD9:
            return pos + 2 == span.size
        if code in JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > span.size:
            return False
        length = struct.unpack(">H", span.read(pos + 2, 2))[0]
        if length < 2:
            return False
        pos += 2 + length
        if code == 0xDA:
            pos = _jpeg_scan_end(span, pos)
            if pos < 0:
                return False
    return False


def _jpeg_scan_end(span: Span, pos: int) -> int:
    """Where the entropy-coded data after SOS ends: the first FF not followed by 00 or RSTn."""
    while pos < span.size:
        chunk = span.read(pos, TEXT_CHUNK)
        i = chunk.find(b"\xff")
        while i >= 0:
            if i + 1 >= len(chunk):
                break
            nxt = chunk[i + 1]
            if nxt != 0x00 and not 0xD0 <= nxt <= 0xD7:
                return pos + i
            i = chunk.find(b"\xff", i + 2)
        pos += max(1, len(chunk) - 1 if i >= 0 else len(chunk))
    return -1


def _gif(span: Span) -> bool:
    """Header, screen descriptor, colour tables, image and extension blocks, the 3B trailer last."""
    if span.size < 13:
        return False
    flags = span.read(10, 1)[0]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < span.size:
        block = span.read(pos, 1)[0]
        if block == 0x3B:
            return pos + 1 == span.size
        if block == 0x21:
            pos = _gif_sub_blocks(span, pos + 2)
        elif block == 0x2C:
            if pos + 10 > span.size:
                return False
            local = span.read(pos + 9, 1)[0]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            pos = _gif_sub_blocks(span, pos + 1)  # after the LZW minimum code size
        else:
            return False
        if pos < 0:
            return False
    return False


def _gif_sub_blocks(span: Span, pos: int) -> int:
    while pos < span.size:
        size = span.read(pos, 1)[0]
        pos += 1 + size
        if size == 0:
            return pos
    return -1


def _webp(span: Span) -> bool:
    """RIFF/WEBP whose length is the file's, holding whole chunks (padded to even sizes)."""
    head = span.head(12)
    if len(head) < 12 or head[8:12] != b"WEBP" or struct.unpack("<I", head[4:8])[0] + 8 != span.size:
        return False
    pos = 12
    while pos + 8 <= span.size:
        size = struct.unpack("<I", span.read(pos + 4, 4))[0]
        pos += 8 + size + (size & 1)
    return pos == span.size and span.size > 12


IMAGE_READERS: tuple[tuple[bytes, str, Callable[[Span], bool]], ...] = (
    (PNG_SIGNATURE, "png", _png),
    (b"\xff\xd8\xff", "jpeg", _jpeg),
    (GIF_SIGNATURES[0], "gif", _gif),
    (GIF_SIGNATURES[1], "gif", _gif),
    (b"RIFF", "webp", _webp),
)


LFS_POINTER_MAX_BYTES = 1024
LFS_VERSION_LINES = (b"version https://git-lfs.github.com/spec/", b"version https://hawser.github.com/spec/")
LFS_FIELDS = re.compile(rb"^oid sha256:([0-9a-f]{64})$|^size (\d+)$", re.MULTILINE)
PLAIN_KIND_NAMES = {"text": "text", "empty": "an empty file", "png": "a PNG image", "jpeg": "a JPEG image",
                    "gif": "a GIF image", "webp": "a WebP image", "msgpack": "msgpack data",
                    "sentencepiece": "a sentencepiece tokenizer model"}


def lfs_pointer(span: Span) -> tuple[str, int] | None:
    """``(oid, size)`` when ``span`` is a Git LFS pointer file."""
    if span.size > LFS_POINTER_MAX_BYTES or not span.head(64).startswith(LFS_VERSION_LINES):
        return None
    text = span.head(LFS_POINTER_MAX_BYTES)
    oid = size = None
    for m in LFS_FIELDS.finditer(text):
        oid = m.group(1).decode() if m.group(1) else oid
        size = int(m.group(2)) if m.group(2) else size
    return (oid, size) if oid is not None and size is not None else None
