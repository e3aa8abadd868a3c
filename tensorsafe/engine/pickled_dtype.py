"""A pickled ``numpy.dtype`` read from the walker's inert values, as numpy's unpickling would build it.

A pickle makes a dtype with ``numpy.dtype(code, align, copy)`` and then ``BUILD`` with the state
``(version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])``. numpy's
``arraydescr_setstate`` (numpy/_core/src/multiarray/descriptor.c) trusts the state: for the
flexible kinds (``S``, ``U``, ``V``) the item size is the state's ``elsize``, and ``hasobject`` is
bit 0 of the state's ``flags`` (NPY_ITEM_HASOBJECT) whatever the fields hold. joblib sizes its raw
reads from those two values, so they are what this module returns. A state numpy itself could not
have written (sizes or object-ness that disagree with the fields and subarrays it describes, as
numpy rebuilds them from plain data) is refused: an object field that the flags call raw bytes
would have numpy read pointers from the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from tensorsafe.readers.numpy_files import numpy_dtype
from tensorsafe.errors import ParseError
from tensorsafe.pickles.values import Call, Global

DTYPE_GLOBALS = frozenset({("numpy", "dtype"), ("numpy.core.multiarray", "dtype"),
                           ("numpy._core.multiarray", "dtype")})
"""Names that resolve to ``numpy.dtype`` itself (numpy 1.x and 2.x)."""
RECORD_GLOBALS = frozenset({("numpy", "record"), ("numpy.core.records", "record"),
                            ("numpy._core.records", "record")})
"""``numpy.record``: the first argument of a pickled record dtype (a void kind)."""
MAX_DTYPE_NESTING = 64
MAX_SUBARRAY_DIMS = 64
"""NPY_MAXDIMS in numpy 2 (32 in numpy 1): numpy refuses deeper subarray and array shapes."""
NPY_ITEM_HASOBJECT = 0x01
_CODE = re.compile(r"[biufcOSUVMm]\d{0,10}")
_FLEXIBLE = frozenset("SUV")
_BYTEORDERS = frozenset("<>=|")
_CALL_KINDS = frozenset({"reduce", "newobj", "obj", "inst"})


@dataclass(frozen=True)
class DtypeLayout:
    itemsize: int
    has_object: bool


def dtype_layout(value: object) -> DtypeLayout:
    """Item size and object-ness of a pickled dtype; ``ParseError`` when numpy's would be uncertain."""
    dt = _Rebuild().dtype(value, 0)
    return DtypeLayout(dt.itemsize, bool(dt.hasobject))


class _Rebuild:
    """numpy dtypes rebuilt from plain data, once per pickled dtype object (a memo may share them)."""

    def __init__(self) -> None:
        self.done: dict[int, object] = {}
        self.open: set[int] = set()

    def dtype(self, value: object, depth: int):
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.open:
            raise ParseError("a pickled dtype contains itself")
        if depth > MAX_DTYPE_NESTING:
            raise ParseError(f"pickled dtype nested deeper than {MAX_DTYPE_NESTING} levels")
        self.open.add(key)
        try:
            built = self._build(value, depth)
        finally:
            self.open.discard(key)
        self.done[key] = built
        return built

    def _build(self, value: object, depth: int):
        code = _constructor_code(value)
        base = numpy_dtype("V0" if code is None else code, "pickled")
        state = value.state  # type: ignore[union-attr]
        if state is None:
            return base
        subarray, names, fields, elsize, flags = _unpack_state(state)
        has_object = bool(_normalised_flags(flags) & NPY_ITEM_HASOBJECT)
        if base.kind not in _FLEXIBLE:
            if subarray is not None or fields is not None:
                raise ParseError(f"pickled {base.str} dtype has fields or a subarray")
            built = base
        elif subarray is not None:
            if fields is not None or base.kind != "V":
                raise ParseError("pickled dtype has both a subarray and fields, or a subarray of a non-void kind")
            built = self._subarray(subarray, depth)
        elif fields is not None:
            if base.kind != "V":
                raise ParseError(f"pickled {base.str} dtype has fields")
            built = self._record(names, fields, elsize, depth)
        else:
            built = _flexible(base, elsize)
        if base.kind in _FLEXIBLE and (built.itemsize != elsize or (base.itemsize and base.itemsize != elsize)):
            raise ParseError(f"pickled dtype state says {elsize} bytes per item, its type and fields say "
                             f"{built.itemsize}")
        if has_object != bool(built.hasobject):
            raise ParseError(f"pickled dtype flags say hasobject={has_object}, its fields say "
                             f"{bool(built.hasobject)}")
        return built

    def _subarray(self, subarray: object, depth: int):
        if not (isinstance(subarray, tuple) and len(subarray) == 2):
            raise ParseError("pickled dtype subarray is not (dtype, shape)")
        item, shape = subarray
        if isinstance(shape, int):
            shape = (shape,)
        if not (isinstance(shape, tuple) and len(shape) <= MAX_SUBARRAY_DIMS
                and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ParseError(f"pickled dtype subarray shape {str(shape)[:80]} is not a tuple of sizes")
        return numpy_dtype((self.dtype(item, depth + 1), shape), "pickled subarray")

    def _record(self, names: object, fields: object, elsize: int, depth: int):
        if not (isinstance(names, tuple) and isinstance(fields, dict)
                and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)):
            raise ParseError("pickled dtype names and fields are not a tuple of str and a dict")
        formats, offsets, titles = [], [], []
        for name in names:
            entry = fields.get(name)
            if not (isinstance(entry, tuple) and len(entry) in (2, 3) and isinstance(entry[1], int)
                    and entry[1] >= 0 and (len(entry) == 2 or isinstance(entry[2], str))):
                raise ParseError(f"pickled dtype field {name[:40]!r} is not (dtype, offset[, title])")
            formats.append(self.dtype(entry[0], depth + 1))
            offsets.append(entry[1])
            titles.append(entry[2] if len(entry) == 3 else None)
        extra = fields.keys() - set(names)
        if extra != {t for t in titles if t is not None} - set(names):
            raise ParseError("pickled dtype fields hold entries that are neither names nor titles")
        for title in extra:
            named = fields[names[titles.index(title)]]
            if fields[title] is not named and fields[title] != named:
                raise ParseError(f"pickled dtype title {str(title)[:40]!r} disagrees with its field")
        spec = {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": elsize}
        if any(t is not None for t in titles):
            spec["titles"] = titles
        return numpy_dtype(spec, "pickled record")


def _constructor_code(value: object) -> str | None:
    """The type code of ``numpy.dtype(code, align, copy)``; None for ``numpy.record`` (a void kind)."""
    if not (isinstance(value, Call) and value.kind in _CALL_KINDS and value.kwargs is None
            and isinstance(value.func, Global) and (value.func.module, value.func.name) in DTYPE_GLOBALS):
        raise ParseError("joblib array dtype is not a literal numpy.dtype(...)")
    args = value.args
    if not (isinstance(args, tuple) and 1 <= len(args) <= 3 and all(isinstance(a, int) for a in args[1:])):
        raise ParseError("pickled numpy.dtype call does not have (code, align, copy) arguments")
    code = args[0]
    if isinstance(code, Global) and (code.module, code.name) in RECORD_GLOBALS:
        return None
    if not (isinstance(code, str) and _CODE.fullmatch(code)):
        raise ParseError(f"pickled numpy.dtype code {str(code)[:40]!r} is not a type code")
    return code


def _unpack_state(state: object) -> tuple:
    """(subarray, names, fields, elsize, flags) of a version 3 or 4 state (what numpy has written
    since 1.x; older ones have numpy recompute the flags and are refused)."""
    if not (isinstance(state, tuple) and len(state) in (8, 9)):
        raise ParseError("pickled dtype state is not an 8- or 9-tuple")
    version, byteorder, subarray, names, fields, elsize, _alignment, flags = state[:8]
    if not all(isinstance(v, int) for v in (version, elsize, _alignment, flags)) or version not in (3, 4):
        raise ParseError(f"pickled dtype state version {str(version)[:20]} or sizes are not understood")
    if isinstance(byteorder, bytes):
        byteorder = byteorder.decode("latin-1")
    if byteorder not in _BYTEORDERS:
        raise ParseError(f"pickled dtype byte order {str(byteorder)[:20]!r} is not one of <>=|")
    if (names is None) != (fields is None):
        raise ParseError("pickled dtype has names without fields or fields without names")
    if not -(1 << 31) <= elsize < (1 << 31) or not -(1 << 31) <= flags < (1 << 31):
        raise ParseError("pickled dtype sizes or flags overflow a C int")
    return subarray, names, fields, elsize, flags


def _normalised_flags(flags: int) -> int:
    """numpy once stored flags as a signed char: -128..-1 is read as that char plus 128."""
    return flags + 128 if -128 <= flags < 0 else flags


def _flexible(base, elsize: int):
    """A plain S, U or V dtype of ``elsize`` bytes (numpy takes the size from the state)."""
    unit = 4 if base.kind == "U" else 1
    if elsize < 0 or elsize % unit:
        raise ParseError(f"pickled {base.kind} dtype of {elsize} bytes is not a whole number of items")
    return numpy_dtype(f"{base.kind}{elsize // unit}", "pickled")
