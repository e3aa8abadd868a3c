"""joblib files: array bytes sit inside the pickle stream, right after each wrapper's BUILD.

joblib's unpickler (joblib/numpy_pickle.py, ``NumpyUnpickler.load_build``) reads the
``NumpyArrayWrapper``'s attributes at ``BUILD`` and then reads the array straight from the file:
for an object dtype a nested pickle (its own unpickler: own stack and memo), else an optional
alignment-padding byte and that many bytes, then ``prod(shape) * dtype.itemsize`` raw bytes. The
walker must skip or walk them exactly so, to stay in step with the real loader; whatever cannot be
located that way is a JOBLIB-01 error, never a guess.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.errors import ParseError, PickleParseError
from tensorsafe.pickles.values import Call, Global
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.pickled_dtype import DtypeLayout
    from tensorsafe.pickles.walker import BuildHook
    from tensorsafe.engine.scanner import FileScan

WRAPPER_NAMES = frozenset({"NumpyArrayWrapper"})
MAX_ARRAY_DIMS = 64
"""NPY_MAXDIMS (numpy 2; 32 in numpy 1): joblib's ``reshape`` fails past it, so the load stops."""
MAX_DIM = (1 << 63) - 1
"""joblib multiplies the shape as int64: a larger size cannot be converted, the load stops."""
_INIT_PARAMS = ("subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes")
_INIT_DEFAULTS = {"allow_mmap": False, "numpy_array_alignment_bytes": 16}
_INIT_KINDS = frozenset({"reduce", "obj", "inst"})
"""Call forms that run ``NumpyArrayWrapper.__init__`` (NEWOBJ and copyreg's makers do not)."""
_INSTANCE_MAKERS = frozenset({("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__")})


class JoblibLayoutError(ParseError):
    """A joblib array payload cannot be located exactly as joblib would read it."""


class JoblibArrays:
    """A walker build hook; ``seen`` tells whether the stream was a joblib file.

    ``layouts`` records, per array read, (offset after BUILD, data start, offset the stream resumes
    at), relative to the span: what the differential tests compare with joblib's writer.
    """

    def __init__(self, fs: FileScan, span: Span, location: Location, depth: int):
        self.fs = fs
        self.span = span
        self.location = location
        self.depth = depth
        self.seen = False
        self.layouts: list[tuple[int, int, int]] = []
        self._attrs: dict[int, tuple[Call, dict]] = {}
        self._object_payloads: dict[int, int] = {}

    def plain_view(self) -> BuildHook:
        """The hook for the pickle.load view of a joblib stream (raw array bytes read as opcodes).

        An object array's pickle is skipped there: it was judged in its own context, and read with
        the outer stream's memo its GETs pair up the outer stream's values into imports no loader
        makes of a file joblib wrote (the residual risk: a file crafted for pickle.load users).
        """
        payloads = self._object_payloads

        def hook(obj: object, pos: int, frame_end: int) -> int | None:
            return payloads.get(pos) if is_array_wrapper(obj) else None

        return hook

    def __call__(self, obj: object, pos: int, frame_end: int) -> int | None:
        if not is_array_wrapper(obj):
            return None
        self.seen = True
        try:
            data_start, resume = self._read(obj, pos, frame_end)  # type: ignore[arg-type]
        except JoblibLayoutError as exc:
            self.fs.add("JOBLIB-01", exc.message, self.location.at(pos - 1 - self.span.start))
            raise PickleParseError(exc.message, offset=pos - 1) from None
        self.layouts.append((pos - self.span.start, data_start - self.span.start, resume - self.span.start))
        return resume

    def _read(self, obj: Call, pos: int, frame_end: int) -> tuple[int, int]:
        if pos < frame_end:
            # joblib reads the array from the file after this frame, then the frame's rest
            raise JoblibLayoutError(f"joblib array read with {frame_end - pos:,} bytes of the current frame "
                                    "left: joblib would run them after the array")
        from tensorsafe.engine.pickled_dtype import dtype_layout  # numpy's dtype rules load only for a joblib array

        attrs = self._attributes(obj)
        try:
            layout = dtype_layout(attrs["dtype"])
        except ParseError as exc:
            raise JoblibLayoutError(f"joblib array dtype: {exc.message}") from None
        if layout.has_object:
            if attrs.get("allow_mmap"):
                raise JoblibLayoutError("joblib object array marked for memory mapping: numpy would map "
                                        "raw bytes as object pointers")
            resume = self._object_array(pos)
            self._object_payloads[pos] = resume
            return pos, resume
        start = pos
        if attrs.get("numpy_array_alignment_bytes") is not None:
            if start >= self.span.end:
                raise JoblibLayoutError("joblib array padding byte is past the end of the stream")
            start += 1 + self.span.buf[start]
        return start, start + _data_size(attrs["shape"], layout, self.span.end - start)

    def _attributes(self, obj: Call) -> dict:
        """The wrapper's ``__dict__`` after this BUILD, as ``pickle._Unpickler.load_build`` leaves it."""
        known = self._attrs.get(id(obj))
        attrs = dict(known[1]) if known else _initial_attributes(obj)
        state, slotstate = obj.state, None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        for part in (state, slotstate):
            if not part:
                continue
            if not isinstance(part, dict):
                raise JoblibLayoutError("joblib array wrapper state is not a dict")
            attrs.update((k, v) for k, v in part.items() if isinstance(k, str))
        self._attrs[id(obj)] = (obj, attrs)
        if "__setstate__" in attrs:
            raise JoblibLayoutError("joblib array wrapper has a __setstate__ attribute: a later BUILD calls it")
        missing = [name for name in ("dtype", "shape") if name not in attrs]
        if missing:
            raise JoblibLayoutError(f"joblib array wrapper has no {' or '.join(missing)}")
        return attrs

    def _object_array(self, start: int) -> int:
        # A fresh unpickler (joblib 1.6: pickle._Unpickler; older: pickle.load) on the file: its own
        # stack and memo, no array reads inside it.
        trace = self.fs.walk(self.span.buf, start, self.span.end)
        self.fs.judge(trace, self.span, self.location.inside(f"<joblib object array @{start - self.span.start}>"),
                      self.depth + 1)
        if not trace.stopped:
            raise JoblibLayoutError("joblib object array pickle cannot be followed to its STOP")
        # pickle.py read the whole last frame from the file: the outer stream resumes after it
        return max(trace.end, trace.frame_end)


def _initial_attributes(obj: Call) -> dict:
    """What ``NumpyArrayWrapper.__init__`` set, when the call that made the wrapper ran it."""
    if not (_is_wrapper_class(obj.func) and obj.kind in _INIT_KINDS):
        if isinstance(obj.func, Global) and obj.func.name == "_reconstructor":
            args = obj.args if isinstance(obj.args, tuple) else ()
            base = args[1] if len(args) > 1 else None
            if not (isinstance(base, Global) and (base.module, base.name) == ("builtins", "object")):
                raise JoblibLayoutError("joblib array wrapper made by copyreg._reconstructor from a base "
                                        "other than object")
        return {}
    args = obj.args
    if not (isinstance(args, tuple) and 4 <= len(args) <= len(_INIT_PARAMS)):
        raise JoblibLayoutError("joblib array wrapper constructor called with the wrong arguments")
    return {**_INIT_DEFAULTS, **dict(zip(_INIT_PARAMS, args))}


def _data_size(shape: object, layout: DtypeLayout, room: int) -> int:
    """Bytes joblib reads for ``shape``; JOBLIB-01 as soon as they exceed ``room`` (what is left).

    Bounded work: at most MAX_ARRAY_DIMS sizes, multiplied only while the product fits the stream.
    """
    if not isinstance(shape, (tuple, list)):
        raise JoblibLayoutError(f"joblib array shape is a {type(shape).__name__}, not a tuple of sizes")
    if len(shape) > MAX_ARRAY_DIMS:
        raise JoblibLayoutError(f"joblib array has {len(shape):,} dimensions; numpy allows {MAX_ARRAY_DIMS}")
    if not all(isinstance(d, int) and 0 <= d <= MAX_DIM for d in shape):
        raise JoblibLayoutError(f"joblib array shape {str(shape)[:80]} is not a tuple of sizes")
    if layout.itemsize <= 0:
        raise JoblibLayoutError(f"joblib cannot read an array of {layout.itemsize}-byte items")
    if 0 in shape:
        return 0
    size = layout.itemsize
    for dim in shape:
        size *= dim
        if size > room:
            raise JoblibLayoutError("joblib array data runs past the end of the stream")
    return size


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
