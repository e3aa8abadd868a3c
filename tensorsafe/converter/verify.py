"""Checks behind "verified": the written header and the written bytes, read back from the file.

Each written tensor is read back from the output file with ``pread`` and compared with its
source range, read the same way (or, for bytes the writer produced itself, given the CRC-32 of
what was sent). Both reads go into two reusable buffers, so memory stays two chunks whatever the
model size; the comparison is libc's ``memcmp``, called without the GIL. Each range lands in its
buffer at the same offset within a page as in its file: the kernel's copy into the buffer is then
mutually aligned (on AMD Zen 3, the benchmark machine, a copy whose destination sits a few bytes
past its source modulo 4 KiB runs at half speed).
"""
from __future__ import annotations

import mmap
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable

from tensorsafe.readers.safetensors.read import read_unambiguous_header
from tensorsafe.errors import ParseError

CHUNK = 1 << 20  # both buffers stay in cache between the read and the compare: 0.45 s per 2.1 GB, 0.67 s at 8 MiB
PAGE = mmap.PAGESIZE


def check_header(fh: BinaryIO, size: int, written: list, path: str | os.PathLike) -> None:
    """The output's header parses and places every written tensor (name, dtype, shape, offsets)
    where it was written, names no other tensor, and the file ends where the last tensor does."""
    def fail(why: str) -> ParseError:
        return ParseError(f"verification failed: {why}", path=path)

    try:
        header = read_unambiguous_header(_HandleSource(fh, size))
    except ParseError as exc:
        raise fail(f"the header does not pass the format rules: {exc.message}") from None
    entries = {name: (dtype, shape, begin, end) for name, dtype, shape, begin, end in header.tensors}
    base = header.data_start
    if set(entries) != {w.name for w in written}:
        raise fail("the header names other tensors than those written")
    end = base
    for w in written:
        dtype, shape, begin, stop = entries[w.name]
        if (begin, stop) != (w.begin - base, w.begin - base + w.nbytes) \
                or (w.dtype is not None and dtype != w.dtype) \
                or (w.shape is not None and shape != tuple(w.shape)):
            raise fail(f"the header entry of tensor {w.name!r} does not match what was written")
        end = max(end, w.begin + w.nbytes)
    if size != end:
        raise fail(f"the file is {size:,} bytes, expected {end:,}")


class _HandleSource:
    """An open file as the header reader's byte source (the output being verified, read by ``pread``)."""

    def __init__(self, fh: BinaryIO, size: int):
        self._fd, self.size = fh.fileno(), size

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, max(0, min(n, self.size - offset)), offset)


class ReadBack:
    """Two reusable page-aligned buffers that file ranges are read into, to compare or checksum."""

    def __init__(self, chunk: int = CHUNK):
        self.chunk = max(PAGE, chunk)
        # anonymous maps: page-aligned and zero pages until first read; freed with the last view
        self._views = [memoryview(mmap.mmap(-1, self.chunk + PAGE)) for _ in range(2)]
        self._memcmp = _memcmp_of(self._views)

    def read(self, slot: int, fd: int, offset: int, nbytes: int) -> memoryview | None:
        """``nbytes`` (at most ``chunk``) at ``offset`` of ``fd`` in buffer ``slot``; None if the file ends first."""
        at = offset % PAGE
        view = self._views[slot][at:at + nbytes]
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                return None
            done += got
        return view

    def equal(self, fd_a: int, off_a: int, fd_b: int, off_b: int, nbytes: int) -> bool:
        """Bytes ``[off_a, off_a + nbytes)`` of ``fd_a`` equal bytes ``[off_b, off_b + nbytes)`` of ``fd_b``."""
        if off_a < 0 or off_b < 0:
            return False
        for pos in range(0, nbytes, self.chunk):
            k = min(self.chunk, nbytes - pos)
            a = self.read(0, fd_a, off_a + pos, k)
            b = self.read(1, fd_b, off_b + pos, k)
            if a is None or b is None or not self._memcmp(a, (off_a + pos) % PAGE, b, (off_b + pos) % PAGE, k):
                return False
        return True

    def crc32(self, fd: int, offset: int, nbytes: int) -> bytes | None:
        """CRC-32 (little-endian bytes) of a file range; None if the file ends first."""
        crc = 0
        for pos in range(offset, offset + nbytes, self.chunk):
            view = self.read(0, fd, pos, min(self.chunk, offset + nbytes - pos))
            if view is None:
                return None
            crc = zlib.crc32(view, crc)
        return crc.to_bytes(4, "little")


def _memcmp_of(views: list[memoryview]) -> Callable[[memoryview, int, memoryview, int, int], bool]:
    """``(a, a_at, b, b_at, n) -> a[:n] == b[:n]`` for views into ``views[0]`` and ``views[1]`` starting
    ``a_at`` / ``b_at`` bytes into them: libc ``memcmp`` through ctypes (which lets go of the GIL);
    without ctypes or libc, a comparison of copies."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).memcmp
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        fn.restype = ctypes.c_int
        base = [ctypes.addressof(ctypes.c_char.from_buffer(v)) for v in views]
    except (ImportError, OSError, AttributeError, TypeError):
        return lambda a, a_at, b, b_at, n: a.tobytes() == b.tobytes()
    return lambda a, a_at, b, b_at, n: fn(base[0] + a_at, base[1] + b_at, n) == 0


def check_tensor(fd: int, w, path: str | os.PathLike, readback: ReadBack) -> None:
    """One written tensor (a ``writer.Written``) in the output open as ``fd``: equal to its source
    ranges when the kernel copied it, else with the CRC-32 of the bytes that were sent."""
    if w.ranges is not None:
        ok, at = True, w.begin
        for r in w.ranges:
            ok = ok and readback.equal(fd, at, r.fd, r.offset, r.nbytes)
            at += r.nbytes
        ok = ok and at == w.begin + w.nbytes
    else:
        ok = readback.crc32(fd, w.begin, w.nbytes) == w.digest
    if not ok:
        raise ParseError(f"verification failed for tensor {w.name!r}: the bytes on disk differ", path=path)


class Checker:
    """Checks each tensor on a second thread as soon as it is written (the reads, ``memcmp`` and zlib
    run without the GIL, the kernel copy too), then the header; the first failure is raised by
    ``finish``. Behind each checked tensor it starts the write-back (``writeback``, called with the
    end of the checked bytes), so that work leaves the copying thread too."""

    def __init__(self, fd: int, path: str | os.PathLike, enabled: bool = True, chunk: int = CHUNK,
                 writeback: Callable[[int], None] | None = None):
        self.fd, self.path, self.enabled, self.chunk, self.writeback = fd, path, enabled, chunk, writeback
        self.jobs: list[Future] = []
        self._pool: ThreadPoolExecutor | None = None
        self._readback: ReadBack | None = None

    def __enter__(self) -> "Checker":
        if self.enabled:
            self._readback = ReadBack(self.chunk)
            self._pool = ThreadPoolExecutor(1)
        return self

    def submit(self, w) -> None:
        if self.enabled:
            self.jobs.append(self._pool.submit(self._check, w))

    def _check(self, w) -> None:
        check_tensor(self.fd, w, self.path, self._readback)
        if self.writeback is not None:
            self.writeback(w.begin + w.nbytes)

    def finish(self, written: list) -> None:
        if not self.enabled:
            return
        for job in self.jobs:
            job.result()
        with open(self.fd, "rb", closefd=False) as fh:
            check_header(fh, os.fstat(self.fd).st_size, written, self.path)

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            for job in self.jobs:
                job.cancel()
            self._pool.shutdown(wait=True)
        self._readback = None
