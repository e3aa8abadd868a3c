"""The deep check (``--deep``): read the whole file once, in bounded chunks, for a SHA-256 and the
NaN/Inf count of every float tensor. Memory does not grow with the file: one chunk at a time.

Values are classified by their bits (numpy on unsigned views), so BF16 and the FP8 formats need
no float type of their own and no floating-point exception can be raised.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from tensorsafe.readers.safetensors.dtypes import FLOAT_BITS, FloatBits
from tensorsafe.readers.safetensors.layout import ByteSource
from tensorsafe.readers.safetensors.model import Header, Issue

DEEP_CHUNK_BYTES = 8 * 1024 * 1024
"""Bytes read at a time (a multiple of every element size)."""
_WORDS = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


@dataclass
class NonFinite:
    name: str
    dtype: str
    nan: int
    inf: int
    offset: int


@dataclass
class DeepResult:
    sha256: str
    bytes_read: int
    float_tensors: int
    non_finite: list[NonFinite] = field(default_factory=list)


def deep_check(src: ByteSource, header: Header, chunk_bytes: int = DEEP_CHUNK_BYTES) -> DeepResult:
    """Hash the file and count non-finite values; the header must have passed the format rules."""
    digest = hashlib.sha256()
    for data in _chunks(src, 0, header.data_start, chunk_bytes):
        digest.update(data)
    result = DeepResult("", header.data_start, 0)
    for name, dtype, _, begin, end in sorted(header.tensors, key=lambda t: (t[3], t[4])):
        bits = FLOAT_BITS.get(dtype)
        nan = inf = 0
        for data in _chunks(src, header.data_start + begin, header.data_start + end, chunk_bytes):
            digest.update(data)
            result.bytes_read += len(data)
            if bits is not None:
                n, i = count_non_finite(data, bits)
                nan, inf = nan + n, inf + i
        if bits is not None:
            result.float_tensors += 1
            if nan or inf:
                result.non_finite.append(NonFinite(name, dtype, nan, inf, header.data_start + begin))
    result.sha256 = digest.hexdigest()
    return result


def _chunks(src: ByteSource, start: int, end: int, chunk_bytes: int):
    pos = start
    while pos < end:
        data = src.read(pos, min(chunk_bytes, end - pos))
        if not data:
            raise EOFError(f"the file ends at byte {pos:,}, before {end:,}")
        yield data
        pos += len(data)


def count_non_finite(data: bytes, bits: FloatBits) -> tuple[int, int]:
    """(NaN, Inf) counts in little-endian ``data`` of one float dtype."""
    words = np.frombuffer(data, dtype=_WORDS[bits.word_bytes])
    hit = (words & bits.mask) == bits.value
    non_finite = int(np.count_nonzero(hit))
    if not non_finite or not bits.has_inf:
        return non_finite, 0
    inf = int(np.count_nonzero(hit & ((words & bits.mantissa) == 0)))
    return non_finite - inf, inf


def deep_issues(result: DeepResult) -> list[Issue]:
    """ST-D01 for each float tensor with NaN/Inf, ST-D02 with the digest."""
    issues = [Issue("ST-D01", f"tensor {t.name!r} ({t.dtype}) holds {t.nan:,} NaN and {t.inf:,} infinite values",
                    t.offset, t.name) for t in result.non_finite]
    issues.append(Issue("ST-D02", f"sha256 {result.sha256}; {result.bytes_read:,} bytes read, "
                        f"{result.float_tensors:,} float tensors checked, {len(result.non_finite):,} with NaN/Inf",
                        None, result.sha256))
    return issues
