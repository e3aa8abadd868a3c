"""The values of small source tensors (LoRA alphas, embedding vectors) as float32 numpy arrays.

Read like every converted tensor (``pread`` through :mod:`tensorsafe.converter.chunks`, never the
source's memory map), decoded by the converter's own cast code; for the few values an adapter
conversion must look at, not for weights it copies.
"""
from __future__ import annotations

import numpy as np

from tensorsafe.converter.chunks import FLOAT_DTYPES, cast_chunks, row_chunks
from tensorsafe.converter.execute import _readable
from tensorsafe.converter.sources import Located
from tensorsafe.errors import ParseError
from tensorsafe.tensors import DTYPES

MAX_VALUE_BYTES = 64 << 20


def float_array(located: Located, name: str) -> np.ndarray:
    """The tensor's values as float32, in its shape."""
    ref = located.ref
    if ref.nbytes > MAX_VALUE_BYTES:
        raise ParseError(f"{name}: {ref.nbytes:,} bytes is too large for an adapter value", path=located.path)
    pieces = row_chunks(ref, _readable(located))
    if ref.dtype.name in FLOAT_DTYPES:
        raw = b"".join(bytes(p) for p in cast_chunks(pieces, ref.dtype, DTYPES["F32"]))
        return np.frombuffer(raw, dtype="<f4").reshape(ref.shape).copy()
    if ref.dtype.numpy is None or ref.dtype.name in ("BOOL", "C64"):
        raise ParseError(f"{name} has dtype {ref.dtype.name}, not a number", path=located.path)
    raw = b"".join(bytes(p) for p in pieces)
    return np.frombuffer(raw, dtype=ref.dtype.numpy).astype(np.float32).reshape(ref.shape)


def scalar(located: Located, name: str) -> float:
    values = float_array(located, name)
    if values.size != 1:
        raise ParseError(f"{name} should hold one number, it has shape {list(values.shape)}", path=located.path)
    value = float(values.reshape(-1)[0])
    if not np.isfinite(value):
        raise ParseError(f"{name} is {value}, not a finite number", path=located.path)
    return value
