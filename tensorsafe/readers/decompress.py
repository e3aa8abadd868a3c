"""Bounded decompression: a compression bomb is a finding, never an out-of-memory.

Every method streams its input and bounds its output per call, so memory follows the output
limit and never the compression ratio. Concatenated streams are read as their tools read them
(gzip members with zero padding between them, bz2/xz/lz4 streams, zstd frames), in time linear
in the input: each stream starts with a small read that grows, so a file of 10^5 tiny members
never copies the rest of the input per member. The LZ4 and zstd decoders are optional packages,
imported on first use; without them the stream is ``DecoderMissing`` (ARC-06), never clean.
"""
from __future__ import annotations

import bz2
import importlib
import io
import lzma
import time
import zlib

from tensorsafe.readers.blob import Span
from tensorsafe.limits import MAX_DECOMPRESSED_BYTES
from tensorsafe.errors import LimitExceeded, ParseError

CHUNK = 1 << 20
FIRST_READ = 2048
"""Input read at the start of each stream; doubles up to ``CHUNK`` while the stream goes on."""
OUT_CHUNK = 8 << 20
"""Most output one decoder call may return (the bound that makes a 1 KB bomb cost 8 MB, not GBs)."""
ZSTD_MAX_RATIO = 1 << 15
"""Most bytes one zstd input byte can decode to (a 4-byte RLE block yields a 128 KiB block)."""
LZMA_MEMLIMIT_SLACK = 256 << 20
"""xz/lzma decoders may use the output limit plus this much memory (xz -9 needs 64 MiB)."""
PADDED = frozenset({"gzip", "xz", "lzma"})
"""Methods whose tools skip NUL padding between and after streams (gzip.GzipFile, xz's stream padding)."""
OPTIONAL_DECODERS = {"lz4": ("lz4.frame", "lz4"), "zstd": ("zstandard", "zstandard")}
"""method -> (module imported, package to install)."""


class DecompressError(ParseError):
    """Corrupt or truncated compressed data; ``partial`` is what decompressed before the break
    (joblib's readers treat the end of the input as the end of the data and unpickle it)."""

    def __init__(self, message: str, partial: bytes):
        super().__init__(message)
        self.partial = partial


class NotOpened(ParseError):
    """A format or compression method tensorsafe does not decode (ARC-06): unscanned, never clean."""


class DecoderMissing(NotOpened):
    """The optional package that decodes this method is not installed."""


def decompress(span: Span, method: str, limit: int = MAX_DECOMPRESSED_BYTES, *, multi_stream: bool = False,
               allow_trailing: bool = False, deadline: float | None = None, size_hint: int | None = None) -> bytes:
    """Decompress ``span`` with at most ``limit`` output bytes.

    ``multi_stream``: read concatenated streams as their tools do. ``allow_trailing``: bytes after
    the (first) stream are ignored, as zip readers ignore them inside a member. ``deadline``: a
    ``time.monotonic()`` value past which ``LimitExceeded("MAX_SCAN_SECONDS")`` is raised.
    ``size_hint``: the uncompressed size the container declares (zip LZMA members).
    Raises ``LimitExceeded`` past ``limit``, ``DecoderMissing`` without the optional package,
    ``DecompressError`` (with what decoded before the break) on corrupt, truncated or trailing data.
    """
    factory = _factory(method, limit, size_hint)
    out = io.BytesIO()
    pos = 0
    while True:
        _check_deadline(deadline)
        try:
            pos = _run_stream(factory(), span, pos, out, limit, deadline)
        except ParseError as exc:
            raise DecompressError(exc.message, out.getvalue()) from None
        if method in PADDED:
            pos = _skip_zeros(span, pos)
        rest = span.size - pos
        if rest <= 0 or (allow_trailing and not multi_stream):
            return out.getvalue()
        if not multi_stream:
            raise DecompressError(f"{rest:,} bytes follow the end of the {method} stream", out.getvalue())


def _factory(method: str, limit: int, size_hint: int | None):
    """A function making one fresh decoder per stream (the import of an optional one happens here)."""
    memlimit = limit + LZMA_MEMLIMIT_SLACK
    if method == "deflate":
        return lambda: zlib.decompressobj(-15)
    if method == "zlib":
        return lambda: zlib.decompressobj(15)
    if method == "gzip":
        return lambda: zlib.decompressobj(31)
    if method == "bz2":
        return bz2.BZ2Decompressor
    if method in ("xz", "lzma"):
        return lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO, memlimit=memlimit)
    if method == "lzma-alone":
        return lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=memlimit)
    if method in OPTIONAL_DECODERS:
        module_name, package = OPTIONAL_DECODERS[method]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise DecoderMissing(f"{method} stream: the optional package {package!r} that decodes it is not "
                                 f"installed (pip install {package}); the stream was not scanned") from None
        if method == "lz4":
            return module.LZ4FrameDecompressor
        return lambda: _ZstdFrame(module)
    raise NotOpened(f"unsupported compression method {method!r}")


class _ZstdFrame:
    """One zstd frame with the interface of the stdlib decoders: ``decompressobj`` has no output
    bound, so its input is fed in pieces small enough that even the densest frame stays in budget."""

    PIECE = OUT_CHUNK // ZSTD_MAX_RATIO * 4

    def __init__(self, zstandard):
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._error = zstandard.ZstdError
        self._buf = memoryview(b"")
        self._off = 0

    @property
    def needs_input(self) -> bool:
        return self._off >= len(self._buf) and not self._d.eof

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data + bytes(self._buf[self._off:])

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if data:
            self._buf, self._off = memoryview(data), 0
        piece = self._buf[self._off:self._off + self.PIECE]
        self._off += len(piece)
        try:
            return self._d.decompress(piece.tobytes())
        except self._error as exc:
            raise ValueError(str(exc)) from None


ZLIB_DECODER = type(zlib.decompressobj())
DECODE_ERRORS = (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError, RuntimeError)
"""What the decoders raise on bad data (lz4 raises RuntimeError; _ZstdFrame turns ZstdError into ValueError)."""


def _run_stream(d, span: Span, pos: int, out: io.BytesIO, limit: int, deadline: float | None) -> int:
    """Decode one stream starting at ``pos``; return where it ended."""
    is_zlib = type(d) is ZLIB_DECODER
    want = FIRST_READ
    while True:
        if is_zlib:
            feed = d.unconsumed_tail
        else:
            feed = b"" if not d.needs_input else None
        if feed is None or (is_zlib and not feed):
            feed = span.read(pos, want)
            pos += len(feed)
            want = min(CHUNK, want * 2)
        total = out.tell()
        try:
            chunk = d.decompress(feed, max(1, min(OUT_CHUNK, limit + 1 - total)))
        except DECODE_ERRORS as exc:
            raise ParseError(f"corrupt compressed data: {exc}") from None
        out.write(chunk)
        if total + len(chunk) > limit:
            raise LimitExceeded("MAX_DECOMPRESSED_BYTES", limit, f"decompresses to more than {limit:,} bytes")
        if d.eof:
            return pos - len(d.unused_data or b"") - (len(d.unconsumed_tail) if is_zlib else 0)
        if not feed and not chunk:
            raise ParseError("compressed stream is truncated")
        _check_deadline(deadline)


def _skip_zeros(span: Span, pos: int) -> int:
    """NUL padding between and after streams, skipped as gzip.GzipFile and xz skip it."""
    want = 1
    while pos < span.size:
        block = span.read(pos, want)
        kept = block.lstrip(b"\x00")
        pos += len(block) - len(kept)
        if kept:
            return pos
        want = min(CHUNK, want * 2)
    return pos


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise LimitExceeded("MAX_SCAN_SECONDS", 0, "time limit reached while decompressing")
