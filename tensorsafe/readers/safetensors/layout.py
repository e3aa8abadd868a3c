"""Rules ST-F01 to ST-F04: the 8-byte length, checked against the limit and the file size before
anything is allocated or read, then exactly N header bytes, decoded as strict UTF-8."""
from __future__ import annotations

import os
import stat
import struct
from typing import NamedTuple, Protocol

from tensorsafe.errors import UnreadableFileError
from tensorsafe.readers.safetensors.model import HeaderFormatError

LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000
"""ST-F02: the reference's ``MAX_HEADER_SIZE`` (unchanged since Oct 2022)."""

_U64 = struct.Struct("<Q")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)
HEAD_BYTES = 1 << 16
"""What :class:`FileSource` reads on its first read: the whole of a small file, a small header."""


class ByteSource(Protocol):
    """Random access to a file's bytes: a :class:`tensorsafe.readers.blob.Span` or a :class:`FileSource`."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, n: int) -> bytes: ...


class FileSource:
    """A file read with ``pread``: nothing is mapped, and nothing is read until asked for.

    The first read reads the first :data:`HEAD_BYTES` at once and later reads inside them are
    served from memory: the length, the header, the pickle-front probe and, for a small file, the
    zip-at-end tail then cost one system call together."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, _OPEN_FLAGS)
        except OSError as exc:
            raise UnreadableFileError(f"cannot read: {exc.strerror or exc}", path=self.path) from None
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableFileError("not a regular file", path=self.path)
        except BaseException:
            os.close(self._fd)
            raise
        self.size = st.st_size
        self._head: bytes | None = None

    def read(self, offset: int, n: int) -> bytes:
        head = self._head
        if head is None:
            head = self._head = self._pread(0, HEAD_BYTES)
        end = offset + n
        if end <= len(head) or len(head) < HEAD_BYTES:  # inside the head, or the head is the whole file
            return head[offset:end] if n > 0 else b""
        return self._pread(offset, n)

    def _pread(self, offset: int, n: int) -> bytes:
        try:
            return os.pread(self._fd, max(0, n), offset)
        except OSError as exc:
            raise UnreadableFileError(f"cannot read: {exc.strerror or exc}", path=self.path) from None

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawHeader(NamedTuple):
    length: int
    """N, the declared header length."""
    file_size: int
    text: str
    data: bytes
    """The same N bytes, undecoded."""


def declared_length(src: ByteSource) -> int:
    """ST-F01 to ST-F03, in the reference's order. Reads 8 bytes."""
    if src.size < LENGTH_BYTES:
        raise HeaderFormatError("ST-F01", f"the file has {src.size} bytes, fewer than the 8-byte header length",
                                offset=0)
    n = _U64.unpack(src.read(0, LENGTH_BYTES))[0]
    if n > MAX_HEADER_BYTES:
        raise HeaderFormatError("ST-F02", f"declared header length {n:,} is over the {MAX_HEADER_BYTES:,}-byte limit",
                                offset=0, trigger=str(n))
    if LENGTH_BYTES + n > src.size:
        raise HeaderFormatError("ST-F03", f"declared header length {n:,} runs past the end of the "
                                f"{src.size:,}-byte file", offset=0, trigger=str(n))
    return n


def read_header(src: ByteSource) -> RawHeader:
    """ST-F01 to ST-F04: read exactly 8 + N bytes and decode the header as strict UTF-8."""
    n = declared_length(src)
    raw = src.read(LENGTH_BYTES, n)
    if len(raw) != n:
        raise HeaderFormatError("ST-F03", f"only {len(raw):,} of the {n:,} header bytes could be read",
                                offset=LENGTH_BYTES + len(raw))
    try:
        text = raw.decode("utf-8")  # strict: no overlong forms, no encoded surrogates, like Rust's from_utf8
    except UnicodeDecodeError as exc:
        raise HeaderFormatError("ST-F04", f"invalid UTF-8 in header ({exc.reason} at header byte {exc.start})",
                                offset=LENGTH_BYTES + exc.start, trigger=raw[exc.start:exc.start + 4].hex()) from None
    return RawHeader(n, src.size, text, raw)
