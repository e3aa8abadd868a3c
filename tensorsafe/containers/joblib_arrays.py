"""joblib files: array bytes sit inside the pickle stream, right after each wrapper's BUILD.

joblib's unpickler reads ``NumpyArrayWrapper`` state at ``BUILD`` and then reads the array bytes
(or, for object arrays, a nested pickle) straight from the file; the walker must skip or walk
them to stay in step with the real loader.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tensorsafe.blob import Span
from tensorsafe.errors import ParseError
from tensorsafe.pickles.values import Call, Global
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.scanner import FileScan

WRAPPER_NAMES = frozenset({"NumpyArrayWrapper"})


class JoblibArrays:
    """A walker build hook; ``seen`` tells whether the stream was a joblib file."""

    def __init__(self, fs: "FileScan", span: Span, location: Location, depth: int):
        self.fs = fs
        self.span = span
        self.location = location
        self.depth = depth
        self.seen = False

    def __call__(self, obj: object, pos: int, frame_end: int) -> int | None:
        if not is_array_wrapper(obj):
            return None
        self.seen = True
        state = obj.state
        if not isinstance(state, dict):
            raise ParseError("joblib array wrapper has no state dict")
        start = max(pos, frame_end)
        itemsize, has_object = _dtype_layout(state.get("dtype"))
        if has_object:
            return self._object_array(start)
        if state.get("numpy_array_alignment_bytes") is not None:
            if start >= self.span.end:
                raise ParseError("joblib array padding is truncated")
            start += 1 + self.span.buf[start]
        return start + _element_count(state.get("shape")) * itemsize

    def _object_array(self, start: int) -> int:
        # joblib reads an object array with a plain pickle.load: no array reads inside it
        trace = self.fs.walk(self.span.buf, start, self.span.end)
        self.fs.judge(trace, self.span, self.location.inside(f"<joblib object array @{start - self.span.start}>"),
                      self.depth + 1)
        if not trace.stopped:
            raise ParseError("joblib object array pickle cannot be followed")
        # pickle.py read the whole last frame from the file: the outer stream resumes after it
        return max(trace.end, trace.frame_end)


_INSTANCE_MAKERS = frozenset({("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__")})


def _is_wrapper_class(value: object) -> bool:
    return isinstance(value, Global) and value.name in WRAPPER_NAMES and value.module.endswith("numpy_pickle")


def is_array_wrapper(obj: object) -> bool:
    """joblib checks ``isinstance(obj, NumpyArrayWrapper)`` after BUILD, however it was made."""
    if not isinstance(obj, Call):
        return False
    if _is_wrapper_class(obj.func):
        return True
    args = obj.args if isinstance(obj.args, tuple) else ()
    return (isinstance(obj.func, Global) and (obj.func.module, obj.func.name) in _INSTANCE_MAKERS
            and bool(args) and _is_wrapper_class(args[0]))


def _element_count(shape: object) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ParseError(f"joblib array shape {shape!r} is not a tuple of sizes")
    return math.prod(shape)


def _dtype_layout(dtype: object) -> tuple[int, bool]:
    """(item size, holds objects) of a pickled ``numpy.dtype(...)`` call, without numpy unpickling."""
    import numpy as np

    if not (isinstance(dtype, Call) and isinstance(dtype.func, Global) and dtype.func.name == "dtype"
            and isinstance(dtype.args, tuple) and dtype.args and isinstance(dtype.args[0], str)):
        raise ParseError("joblib array dtype is not a literal numpy dtype")
    code = dtype.args[0]
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    if len(state) > 3 and state[3] is not None:
        raise ParseError("joblib arrays of record dtypes are not followed")
    try:
        parsed = np.dtype(code)
    except TypeError:
        raise ParseError(f"joblib array dtype {code!r} is not a numpy dtype") from None
    itemsize = parsed.itemsize
    if itemsize == 0 and len(state) > 5 and isinstance(state[5], int) and state[5] > 0:
        itemsize = state[5]
    return itemsize, parsed.hasobject
