"""Streaming safetensors writer: header first, then each tensor's bytes in bounded pieces.

Written by hand for memory: ``safetensors.save_file`` needs every tensor in memory at once; this
writer takes producers of byte pieces, so peak memory is one piece whatever the model size.
It lays tensors out like the reference writer (widest dtype first, then by name, header padded
with spaces to a multiple of 8) so every tensor is aligned.

A tensor that is plain byte ranges of a source file is copied by the kernel (``copy_file_range``,
see :mod:`tensorsafe.converter.kernel_io`); the others are written a piece at a time. Either way
:func:`verify_written` then checks the file as written: its header parses and places every tensor
where it was written, each copied tensor's bytes equal the source's, and each written tensor's
bytes have the CRC-32 of what was sent.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from tensorsafe.converter.kernel_io import FileRange, KernelCopy, Writeback, preallocate, pwrite_all
from tensorsafe.converter.verify import CHUNK, Checker, ReadBack, check_header, check_tensor
from tensorsafe.errors import ParseError
from tensorsafe.tensors import DType

Pieces = Callable[[], Iterator[memoryview]]


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    pieces: Pieces
    ranges: tuple[FileRange, ...] | None = None
    """Set when the bytes are exactly these source file ranges, back to back: the kernel can copy them."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Written:
    name: str
    begin: int   # absolute file offset
    nbytes: int
    digest: bytes | None  # CRC-32 of the bytes sent (None when the kernel copied them from ``ranges``)
    ranges: tuple[FileRange, ...] | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None


def layout(tensors: Iterable[OutTensor]) -> list[OutTensor]:
    return sorted(tensors, key=lambda t: (-t.dtype.itemsize, t.name))


def header_bytes(ordered: list[OutTensor], metadata: dict[str, str] | None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for t in ordered:
        header[t.name] = {"dtype": t.dtype.name, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: str | os.PathLike, tensors: Iterable[OutTensor], metadata: dict[str, str] | None = None,
                      progress: Callable[[int], None] | None = None, *, kernel_copy: bool = True,
                      verify: bool = False) -> list[Written]:
    """Write ``tensors`` to ``path`` (which must not exist) and fsync it; returns where each landed.

    With ``verify``, the checks of :func:`verify_written` run as the file is written: each tensor is
    compared on a second thread while the next one is copied, the header once all is written."""
    ordered = layout(tensors)
    head = header_bytes(ordered, metadata)
    written: list[Written] = []
    size = len(head) + sum(t.nbytes for t in ordered)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        kernel, writeback = KernelCopy(kernel_copy), Writeback(fd)
        os.ftruncate(fd, size)  # the final size first: the header check reads it, fallocate fills it
        preallocate(fd, size, path)  # a full disk shows here, before any copy
        pos = pwrite_all(fd, head, 0)
        # verified: the checker starts write-back behind each checked tensor; else this thread does
        wrote = None if verify else writeback.wrote
        with ThreadPoolExecutor(1) as pool, \
                Checker(fd, path, enabled=verify, writeback=writeback.wrote if verify else None) as checker:
            for t in ordered:
                if t.ranges is not None and kernel.copy(fd, t.ranges, pos, wrote):
                    digest = None
                    if progress is not None and t.nbytes:
                        progress(t.nbytes)
                else:
                    digest = _write_pieces(fd, t, pos, pool, wrote, progress, path)
                written.append(Written(t.name, pos, t.nbytes, digest, t.ranges if digest is None else None,
                                       t.dtype.name, t.shape))
                checker.submit(written[-1])
                pos += t.nbytes
            os.fsync(fd)
            checker.finish(written)
    finally:
        os.close(fd)
    return written


def _write_pieces(fd: int, t: OutTensor, pos: int, pool: ThreadPoolExecutor, wrote: Callable[[int], None] | None,
                  progress: Callable[[int], None] | None, path) -> bytes:
    """Write a tensor's pieces at ``pos``; returns the CRC-32 of what was sent."""
    # CRC-32 (zlib, about 4x faster than blake2b): enough to catch a wrong or short write. It runs on a
    # second thread while the same piece is written (both release the GIL), so it costs little wall time.
    crc = 0
    n = 0
    for piece in t.pieces():
        job = pool.submit(zlib.crc32, piece, crc)
        pwrite_all(fd, piece, pos + n)
        crc = job.result()
        n += len(piece)
        if wrote is not None:
            wrote(pos + n)
        if progress is not None:
            progress(len(piece))
    if n != t.nbytes:
        raise ParseError(f"tensor {t.name!r} produced {n:,} bytes, expected {t.nbytes:,}", path=path)
    return crc.to_bytes(4, "little")


def verify_written(path: str | os.PathLike, written: list[Written], chunk: int | None = None) -> None:
    """Check the file as written: its header parses and places each tensor where it was written (with
    its dtype and shape), the file ends where the last tensor does, each kernel-copied tensor's bytes
    equal its source ranges, and each written tensor's bytes have the CRC-32 of what was sent."""
    with open(path, "rb") as fh:
        check_header(fh, os.fstat(fh.fileno()).st_size, written, path)
        readback = ReadBack(chunk or CHUNK)
        for w in written:
            check_tensor(fh.fileno(), w, path, readback)
