"""Checks behind "verified": the written header and the written bytes, read back from the file.

Comparing a copied tensor with its source is a straight comparison of two memory maps, eight
bytes at a time with numpy (no copy, no checksum), so it costs about one read of each side from
the page cache; pages are released behind the comparison so resident memory stays one chunk.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import numpy as np

from tensorsafe.convert.chunks import _release
from tensorsafe.errors import ParseError


def check_header(fh: BinaryIO, size: int, written: list, path: str | os.PathLike) -> None:
    """The output's header parses and places every written tensor (name, dtype, shape, offsets)
    where it was written, names no other tensor, and the file ends where the last tensor does."""
    def fail(why: str) -> ParseError:
        return ParseError(f"verification failed: {why}", path=path)

    fh.seek(0)
    raw = fh.read(8)
    if len(raw) != 8:
        raise fail("the file is too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw)
    if 8 + n > size:
        raise fail("the header runs past the end of the file")
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise fail(f"the header does not parse: {exc}") from None
    header.pop("__metadata__", None)
    base = 8 + n
    if set(header) != {w.name for w in written}:
        raise fail("the header names other tensors than those written")
    end = base
    for w in written:
        entry = header[w.name]
        if entry.get("data_offsets") != [w.begin - base, w.begin - base + w.nbytes] \
                or (w.dtype is not None and entry.get("dtype") != w.dtype) \
                or (w.shape is not None and entry.get("shape") != list(w.shape)):
            raise fail(f"the header entry of tensor {w.name!r} does not match what was written")
        end = max(end, w.begin + w.nbytes)
    if size != end:
        raise fail(f"the file is {size:,} bytes, expected {end:,}")


def same_bytes(a, a_off: int, b, b_off: int, nbytes: int, chunk: int = 16 << 20) -> bool:
    """``a[a_off:a_off+nbytes] == b[b_off:b_off+nbytes]`` for two buffers (memory maps), in chunks."""
    if nbytes == 0:
        return True
    if a_off < 0 or b_off < 0 or a_off + nbytes > len(a) or b_off + nbytes > len(b):
        return False
    for pos in range(0, nbytes, chunk):
        k = min(chunk, nbytes - pos)
        words = k // 8
        if words and not np.array_equal(np.frombuffer(a, np.uint64, words, a_off + pos),
                                        np.frombuffer(b, np.uint64, words, b_off + pos)):
            return False
        tail = words * 8
        if tail < k and a[a_off + pos + tail:a_off + pos + k] != b[b_off + pos + tail:b_off + pos + k]:
            return False
        _release(a, a_off + pos, a_off + pos + k)
        _release(b, b_off + pos, b_off + pos + k)
    return True


def check_tensor(out, w, path: str | os.PathLike, chunk: int = 16 << 20) -> None:
    """One written tensor (a ``writer.Written``) in the mapped output ``out``: equal to its source
    ranges when the kernel copied it, else with the CRC-32 of the bytes that were sent."""
    if w.ranges is not None:
        ok, at = True, w.begin
        for r in w.ranges:
            ok = ok and same_bytes(out, at, r.buf, r.offset, r.nbytes, chunk)
            at += r.nbytes
        ok = ok and at == w.begin + w.nbytes
    else:
        ok = w.begin + w.nbytes <= len(out) and _crc_of(out, w.begin, w.nbytes, chunk) == w.digest
    if not ok:
        raise ParseError(f"verification failed for tensor {w.name!r}: the bytes on disk differ", path=path)


def _crc_of(buf, begin: int, nbytes: int, chunk: int) -> bytes:
    crc = 0
    if nbytes:
        with memoryview(buf) as mv:
            for pos in range(begin, begin + nbytes, chunk):
                end = min(begin + nbytes, pos + chunk)
                crc = zlib.crc32(mv[pos:end], crc)
                _release(buf, pos, end)
    return crc.to_bytes(4, "little")


class Checker:
    """Checks each tensor on a second thread as soon as it is written (numpy and zlib release the
    GIL, the kernel copy runs outside it), then the header; the first failure is raised by ``finish``."""

    def __init__(self, fd: int, size: int, path: str | os.PathLike, enabled: bool = True, chunk: int = 16 << 20):
        self.fd, self.size, self.path, self.enabled, self.chunk = fd, size, path, enabled, chunk
        self.jobs: list[Future] = []
        self._pool = self._map = None

    def __enter__(self) -> "Checker":
        if self.enabled:
            self._map = mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ) if self.size else b""
            self._pool = ThreadPoolExecutor(1)
        return self

    def submit(self, w) -> None:
        if self.enabled:
            self.jobs.append(self._pool.submit(check_tensor, self._map, w, self.path, self.chunk))

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
        if isinstance(self._map, mmap.mmap):
            try:
                self._map.close()
            except BufferError:  # a view still held by a failed check's traceback: freed with it
                pass
