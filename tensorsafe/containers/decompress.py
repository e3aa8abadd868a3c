"""Bounded decompression: a compression bomb is a finding, never an out-of-memory."""
from __future__ import annotations

import bz2
import lzma
import zlib

from tensorsafe.blob import Span
from tensorsafe.errors import LimitExceeded, ParseError

MAX_DECOMPRESSED_BYTES = 1 << 30
CHUNK = 1 << 20


class DecompressError(ParseError):
    """Corrupt or truncated compressed data; ``partial`` is what decompressed before the break
    (joblib's readers treat the end of the input as the end of the data and unpickle it)."""

    def __init__(self, message: str, partial: bytes):
        super().__init__(message)
        self.partial = partial


def _decompressor(method: str):
    if method == "deflate":
        return zlib.decompressobj(-15)
    if method == "zlib":
        return zlib.decompressobj(15)
    if method == "gzip":
        return zlib.decompressobj(31)
    if method == "bz2":
        return bz2.BZ2Decompressor()
    if method in ("xz", "lzma"):
        return lzma.LZMADecompressor(lzma.FORMAT_AUTO)
    raise ParseError(f"unsupported compression method {method!r}")


def decompress(span: Span, method: str, limit: int = MAX_DECOMPRESSED_BYTES, *, multi_stream: bool = False,
               allow_trailing: bool = False) -> bytes:
    """Decompress ``span`` with at most ``limit`` output bytes.

    ``multi_stream``: gzip/bz2/xz files may hold several concatenated streams (as their tools read
    them). Raises ``LimitExceeded`` past ``limit`` and ``ParseError`` on corrupt or truncated input.
    """
    out = bytearray()
    pos = 0
    while True:
        d = _decompressor(method)
        try:
            pos = _run_stream(d, span, pos, out, limit)
        except ParseError as exc:
            raise DecompressError(exc.message, bytes(out)) from None
        rest = span.size - pos
        if rest <= 0:
            return bytes(out)
        if not multi_stream:
            if allow_trailing:
                return bytes(out)
            raise ParseError(f"{rest:,} bytes follow the end of the {method} stream")
        if method == "gzip" and not span.read(pos, rest).strip(b"\x00"):
            return bytes(out)


def _run_stream(d, span: Span, pos: int, out: bytearray, limit: int) -> int:
    is_zlib = hasattr(d, "unconsumed_tail")
    while True:
        if is_zlib:
            feed = d.unconsumed_tail
        else:
            feed = b"" if not d.needs_input else None
        if feed is None or (is_zlib and not feed):
            feed = span.read(pos, CHUNK)
            pos += len(feed)
        before = len(out)
        try:
            out += d.decompress(feed, max(1, limit + 1 - len(out)))
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            raise ParseError(f"corrupt compressed data: {exc}") from None
        if len(out) > limit:
            raise LimitExceeded("MAX_DECOMPRESSED_BYTES", limit, f"decompresses to more than {limit:,} bytes")
        if d.eof:
            return pos - len(d.unused_data)
        if not feed and len(out) == before:
            raise ParseError("compressed stream is truncated")
