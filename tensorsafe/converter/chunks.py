"""Byte streams of tensors in bounded chunks: copy, row slices, concatenation, transpose, casts.

Written by hand for memory: every producer yields pieces of at most ``CHUNK_BYTES``, so peak
memory does not grow with the model. A source is a buffer (sliced without a copy) or, in the
converter, a :class:`~tensorsafe.converter.source_io.FileBytes` read with ``pread``: a source file
that shrinks mid-read is then an error, not SIGBUS from its memory map. A strided source (and a
transpose) is read whole when its span is at most ``WHOLE_READ_BYTES``, else a block of rows at
a time.
"""
from __future__ import annotations

import mmap
from typing import Iterator

import numpy as np

from tensorsafe.converter.fp8 import FORMATS as FP8_FORMATS
from tensorsafe.converter.fp8 import decode as decode_fp8
from tensorsafe.converter.source_io import FileBytes
from tensorsafe.errors import UsageError
from tensorsafe.load import raw_bytes_view
from tensorsafe.tensors import DType, StorageRef, TensorRef

CHUNK_BYTES = 16 << 20
WHOLE_READ_BYTES = 256 << 20


def row_chunks(ref: TensorRef, buf, start: int = 0, stop: int | None = None) -> Iterator[memoryview]:
    """Rows [start, stop) of the first dimension, in C order, as byte pieces."""
    rows = ref.shape[0] if ref.shape else 1
    stop = rows if stop is None else stop
    if not ref.numel or stop <= start:
        return
    row_bytes = ref.nbytes // rows
    if isinstance(buf, FileBytes):
        yield from _file_rows(ref, buf, start, stop, row_bytes)
        return
    if ref.is_contiguous:
        mv = memoryview(buf)
        first = ref.byte_offset + start * row_bytes
        total = (stop - start) * row_bytes
        for pos in range(0, total, CHUNK_BYTES):
            yield mv[first + pos:first + min(total, pos + CHUNK_BYTES)]
            _release(buf, first + pos, first + min(total, pos + CHUNK_BYTES))
        return

    view = raw_bytes_view(ref, buf)
    if not ref.shape:
        view = view[None]
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for r in range(start, stop, step):
        yield memoryview(np.ascontiguousarray(view[r:min(stop, r + step)])).cast("B")


def _file_rows(ref: TensorRef, src: FileBytes, start: int, stop: int, row_bytes: int) -> Iterator[memoryview]:
    if ref.is_contiguous:
        first = ref.byte_offset + start * row_bytes
        total = (stop - start) * row_bytes
        for pos in range(0, total, CHUNK_BYTES):
            yield memoryview(src.read(first + pos, min(CHUNK_BYTES, total - pos)))
        return

    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    if not ref.shape:
        yield memoryview(src.read(ref.byte_offset, ref.nbytes))
        return
    if ref.span_bytes() <= WHOLE_READ_BYTES:
        view = raw_bytes_view(_rebased(ref, ref.shape), src.read(ref.byte_offset, ref.span_bytes()))
        for r in range(start, stop, step):
            yield memoryview(np.ascontiguousarray(view[r:min(stop, r + step)])).cast("B")
        return
    for r in range(start, stop, step):
        block = _rebased(ref, (min(stop, r + step) - r, *ref.shape[1:]))
        lo = ref.byte_offset + r * ref.stride[0] * ref.dtype.itemsize
        yield memoryview(np.ascontiguousarray(raw_bytes_view(block, src.read(lo, block.span_bytes())))).cast("B")


def _rebased(ref: TensorRef, shape: tuple[int, ...]) -> TensorRef:
    """``ref`` with ``shape``, its element 0 at offset 0 of a buffer read from the file."""
    return TensorRef(ref.dtype, shape, ref.stride, 0, StorageRef(ref.storage.key, 0, 0))


def _release(buf, begin: int, end: int) -> None:
    """Unmap the pages of a piece the writer has consumed, so resident memory stays about one piece
    and not the whole file (touched pages of a file mapping count in RSS). Nothing is lost: the
    mapping is read-only, the bytes stay in the page cache, and a later access maps them again."""
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        lo = begin - begin % mmap.PAGESIZE
        if end > lo:
            try:
                buf.madvise(mmap.MADV_DONTNEED, lo, end - lo)
            except (OSError, ValueError):  # advice only: a refusal changes nothing
                pass


def transpose_chunks(ref: TensorRef, buf) -> Iterator[memoryview]:
    """A 2-D tensor transposed ([H, P] -> [P, H]), produced a block of output rows at a time."""
    if len(ref.shape) != 2:
        raise UsageError(f"transpose needs a 2-D tensor, got shape {ref.shape}")
    if isinstance(buf, FileBytes):
        flipped = TensorRef(ref.dtype, ref.shape[::-1], ref.stride[::-1], ref.storage_offset, ref.storage)
        yield from row_chunks(flipped, buf)
        return

    raw = raw_bytes_view(ref, buf)  # [H, P, itemsize]
    h, p = ref.shape
    step = max(1, CHUNK_BYTES // max(1, h * ref.dtype.itemsize))
    for c in range(0, p, step):
        block = raw[:, c:min(p, c + step), :].transpose(1, 0, 2)
        yield memoryview(np.ascontiguousarray(block)).cast("B")


# -- dtype casts, chunk by chunk -------------------------------------------------------------------
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16", "F64", *FP8_FORMATS})  # fp8: decoded by table, never a target


def _decode(raw: memoryview, dtype: DType) -> np.ndarray:
    if dtype.name in FP8_FORMATS:
        return decode_fp8(raw, dtype.name)
    data = np.frombuffer(raw, dtype=np.uint8)
    if dtype.name == "BF16":
        return (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    return data.view(dtype.numpy)


def _encode(values: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype.name == "BF16":
        bits = values.astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = np.isnan(values)
        if nan.any():
            rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
        return rounded
    return values.astype(dtype.numpy)


def cast_chunks(pieces: Iterator[memoryview], src: DType, dst: DType) -> Iterator[memoryview]:
    """Convert float pieces from ``src`` to ``dst`` (round to nearest even; NaN and Inf kept)."""
    if src.name == dst.name:
        yield from pieces
        return
    carry = b""
    for piece in pieces:
        data = memoryview(carry + bytes(piece)) if carry else piece
        usable = len(data) - len(data) % src.itemsize
        carry = bytes(data[usable:])
        if usable:
            yield memoryview(np.ascontiguousarray(_encode(_decode(data[:usable], src), dst))).cast("B")
