"""Byte spans: a window over a memory-mapped file or an in-memory buffer, read without copying."""
from __future__ import annotations

import io
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Callable

from tensorsafe.errors import LimitExceeded, UnreadableFileError


@dataclass(frozen=True)
class Span:
    """``buf[start:end]``; ``buf`` is bytes or a read-only mmap."""

    buf: bytes | mmap.mmap
    start: int
    end: int

    @classmethod
    def of_bytes(cls, data: bytes) -> "Span":
        return cls(data, 0, len(data))

    @property
    def size(self) -> int:
        return self.end - self.start

    # head, tail and read are called dozens of times per small file: conditional expressions, not
    # min()/max() calls, and no copy of a slice of ``bytes`` (it is already one)
    def head(self, n: int) -> bytes:
        start, end = self.start, self.end
        stop = start + n
        data = self.buf[start:stop if stop < end else end]
        return data if type(data) is bytes else bytes(data)

    def tail(self, n: int) -> bytes:
        return bytes(self.buf[max(self.start, self.end - n):self.end])

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` relative to the span (fewer at its end)."""
        buf, end = self.buf, self.end
        lo = self.start + offset if offset > 0 else self.start
        hi = lo + n if n > 0 else lo
        if hi > end:
            hi = end
        if type(buf) is FileMap:
            return buf.pread(lo, hi) if lo < hi else b""
        data = buf[lo:hi]
        return data if type(data) is bytes else bytes(data)

    def reader_at(self) -> Callable[[int, int], bytes]:
        """``read(lo, hi)``: the bytes of ``buf[lo:hi]`` (absolute positions, which the caller keeps
        inside the span), for loops of many small reads: a mapped file's ``pread`` itself."""
        buf = self.buf
        if type(buf) is FileMap:
            return buf.pread
        return lambda lo, hi: bytes(buf[lo:hi])

    def sub(self, offset: int, size: int) -> "Span":
        lo = min(self.end, self.start + max(0, offset))
        return Span(self.buf, lo, min(self.end, lo + max(0, size)))

    def tobytes(self, limit: int) -> bytes:
        if self.size > limit:
            raise LimitExceeded("MAX_MEMBER_BYTES", limit, f"{self.size:,} bytes is more than the {limit:,} allowed")
        return bytes(self.buf[self.start:self.end])

    def reader(self, max_read: int | None = None) -> "SpanReader":
        return SpanReader(self, max_read)


class SpanReader(io.RawIOBase):
    """A seekable, read-only file object over a span (for zipfile, tarfile, gzip)."""

    def __init__(self, span: Span, max_read: int | None = None):
        super().__init__()
        self.span = span
        self.pos = 0
        self.max_read = max_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.span.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.span.size - self.pos
        if self.max_read is not None and n > self.max_read:
            raise LimitExceeded("MAX_READ_BYTES", self.max_read, f"a single read of {n:,} bytes is too large")
        data = self.span.read(self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class FileMap(mmap.mmap):
    """A read-only memory map that also reads ranges with ``os.pread`` (:meth:`Span.read` does).

    The pickle walker indexes the map; scattered small reads (thousands of zip local headers,
    legacy storage headers) go through ``pread``: the first touch of a mapped page is a page
    fault, the kernel maps the pages around it as well, and all of them are unmapped again at
    close, which costs several times the read itself. Either way only those bytes are read.
    """

    fd: int = -1

    def pread(self, lo: int, hi: int) -> bytes:
        if self.closed:
            raise ValueError("mmap closed or invalid")
        try:
            return os.pread(self.fd, hi - lo, lo)
        except OSError as exc:
            raise UnreadableFileError(f"cannot read bytes {lo:,}-{hi - 1:,}: {exc.strerror or exc}") from exc


SMALL_FILE_BYTES = 1 << 20
"""Files up to this size are read whole when a caller asks for ``read_small`` (the scanner does)."""


class MappedFile:
    """A file opened read-only and memory-mapped (an empty file maps to ``b""``).

    ``read_small``: a file of at most :data:`SMALL_FILE_BYTES` is read whole into ``bytes`` instead
    (one read). A scan of a small file touches most of its bytes anyway, in many small reads (sniff,
    zip end record, directory, local headers, members): mapping it, faulting its pages in and
    unmapping it cost more than the read, which was half the scan of a folder of small files.
    """

    def __init__(self, path: str | os.PathLike, *, read_small: bool = False):
        self.path = os.fspath(path)
        self._map: FileMap | None = None
        self._fh: io.FileIO | None = None
        try:
            # O_NONBLOCK: a FIFO put where a checked file was opens at once (not waiting for a writer) and is refused
            flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
            self._fh = os.fdopen(os.open(self.path, flags), "rb", buffering=0)  # only its descriptor is used
            fd = self._fh.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableFileError(f"cannot read: {_special_kind(st.st_mode)}, not a regular file",
                                          path=self.path)
            size = st.st_size
            if read_small and size <= SMALL_FILE_BYTES:
                data = _read_whole(fd, size)
                _check_no_more(fd, size, self.path)
                self._fh.close()
                self.span = Span(data, 0, len(data))
                return
            if size:
                self._map = FileMap(fd, 0, access=mmap.ACCESS_READ)
                self._map.fd = fd
            _check_no_more(fd, size, self.path)
        except UnreadableFileError:
            self.close()
            raise
        except (OSError, ValueError) as exc:
            self.close()
            raise UnreadableFileError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", path=self.path) from exc
        self.span = Span(self._map if self._map is not None else b"", 0, size)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        if self._fh is not None:
            self._fh.close()

    def __enter__(self) -> "MappedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _special_kind(mode: int) -> str:
    """What a file that is no regular file is: it is refused after the open, which ``O_NONBLOCK``
    keeps from waiting when a FIFO was put where a checked file was."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (a pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def _check_no_more(fd: int, size: int, path: str) -> None:
    """A loader reads a file to its end, whatever its size says: a file that holds bytes past the size
    ``fstat`` gave (``/proc`` files say 0, a FUSE file system may say anything, a file may be growing)
    has bytes the scan would not read, so it is not judged."""
    if os.pread(fd, 1, size):
        raise UnreadableFileError(f"holds more bytes than its size ({size:,}) says (a special or growing file): "
                                  "not judged", path=path)


def _read_whole(fd: int, size: int) -> bytes:
    """The first ``size`` bytes (the size ``fstat`` gave, as a map of the file would hold; fewer
    if the file shrank meanwhile)."""
    data = os.read(fd, size)
    if len(data) == size:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        more = os.read(fd, size - got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)
