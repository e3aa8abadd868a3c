"""numpy ``.npy`` headers: parsed as Python literals, never by loading the array."""
from __future__ import annotations

import ast
import functools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.errors import ParseError
from tensorsafe.readers.sniff import NPY_MAGIC

if TYPE_CHECKING:
    import numpy as np

MAX_NPY_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class NpyHeader:
    descr: object
    shape: tuple
    fortran_order: bool
    data_offset: int
    has_object: bool


def read_npy_header(span: Span) -> NpyHeader:
    head = span.read(0, 12)
    if len(head) < 10 or not head.startswith(NPY_MAGIC):
        raise ParseError("not a .npy file (bad magic)")
    major = head[6]
    if major == 1:
        size, start, encoding = struct.unpack_from("<H", head, 8)[0], 10, "latin-1"
    elif major in (2, 3):
        if len(head) < 12:
            raise ParseError(".npy header is truncated")
        size, start = struct.unpack_from("<I", head, 8)[0], 12
        encoding = "utf-8" if major == 3 else "latin-1"
    else:
        raise ParseError(f"unsupported .npy format version {major}")
    if size > MAX_NPY_HEADER_BYTES:
        raise ParseError(f".npy header of {size:,} bytes is larger than {MAX_NPY_HEADER_BYTES:,}")
    raw = span.read(start, size)
    if len(raw) < size:
        raise ParseError(".npy header is truncated")
    header = _literal(raw, encoding)
    descr = header["descr"]
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ParseError(f".npy shape {shape!r} is not a tuple of sizes")
    if len(shape) > MAX_NPY_DIMS:
        raise ParseError(f".npy shape has {len(shape)} dimensions; numpy reads at most {MAX_NPY_DIMS}")
    has_object, itemsize = _descr_facts(descr)
    data_offset = start + size
    if not has_object:
        _check_data_size(span, shape, itemsize, data_offset)
    return NpyHeader(descr, shape, bool(header.get("fortran_order", False)), data_offset, has_object)


MAX_NPY_DIMS = 64
"""numpy's own limit on an array's dimensions: ``np.load`` refuses a header with more."""


def _check_data_size(span: Span, shape: tuple, itemsize: int, data_offset: int) -> None:
    """``np.load`` reads exactly the elements the header declares and fails when the file has fewer
    (bytes after them are never read). A file it cannot load is not called clean."""
    count = 1
    for d in shape:
        count *= d
    need = count * itemsize
    have = span.size - data_offset
    if need > have:
        raise ParseError(f".npy data is truncated: shape {shape} needs {need:,} bytes, the file has {max(have, 0):,}")


MEMO_HEADER_BYTES = 1024
"""Headers up to this size (``np.save`` writes 128 bytes for most arrays) have their parse memoized."""


def _literal(raw: bytes, encoding: str) -> dict:
    try:
        text = raw.decode(encoding)
        value = _parsed(text) if len(raw) <= MEMO_HEADER_BYTES else ast.literal_eval(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError, TypeError) as exc:
        raise ParseError(f".npy header is not a Python literal: {type(exc).__name__}") from None
    if not isinstance(value, dict) or not {"descr", "shape"} <= value.keys():
        raise ParseError(".npy header is not a dict with 'descr' and 'shape'")
    return value


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> object:
    """``ast.literal_eval`` (numpy's own reader parses the header so), memoized by the header text:
    a pure function of it, and most of the scan of a small ``.npy`` file (``compile``); the arrays
    of one folder mostly share a header. Callers only read the value (it may be shared)."""
    return ast.literal_eval(text)


_PLAIN_DESCR = re.compile(r"[<>|=]?(?:b1|[iu][1248]|f[248]|c8|c16)")
"""Plain number types, as ``np.save`` writes them: numpy's answer (no objects) is known without
loading numpy, which would cost a CLI call more than the whole scan of a small file."""


def _descr_facts(descr: object) -> tuple[bool, int]:
    """Does the dtype hold Python objects anywhere (plain or nested in a record), and its item size."""
    if isinstance(descr, str) and _PLAIN_DESCR.fullmatch(descr):
        return False, int(descr.lstrip("<>|=")[1:])
    from numpy.lib import format as npformat

    dtype = numpy_dtype(descr, ".npy", npformat.descr_to_dtype)
    return bool(dtype.hasobject), dtype.itemsize


def numpy_dtype(spec: object, what: str, build: Callable[[object], np.dtype] | None = None) -> np.dtype:
    """numpy's own dtype for a literal spec (a type string, a descr list, a field dict of dtypes).

    The one place where a dtype's item size and object-ness are computed, for ``.npy`` headers and
    joblib arrays alike: numpy builds it from plain data (strings, ints, tuples, dtypes), so nothing
    from the file runs. ``build`` is ``np.dtype`` unless given (``.npy`` uses ``descr_to_dtype``).
    """
    import numpy as np

    try:
        return (build or np.dtype)(spec)
    except Exception:  # numpy raises many kinds of errors (and warnings as errors) on hostile specs
        raise ParseError(f"{what} dtype {str(spec)[:80]!r} cannot be understood") from None
