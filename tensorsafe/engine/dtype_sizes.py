"""Item sizes of the dtypes a pickle hands numpy, for the allocation check (PK-A01).

numpy allocates ``prod(shape) * itemsize`` for ``_reconstruct``, ``ndarray(shape, dtype)`` and an
object array's state; the item size is what numpy's own rules give the dtype: a type string
(``'f8'``, the ``b'b'`` numpy writes) through ``readers.numpy_files.numpy_dtype``, a pickled
``numpy.dtype`` (constructor plus BUILD state, whose ``elsize`` numpy trusts for the flexible kinds)
through ``engine.pickled_dtype.dtype_layout``. numpy itself is imported by those only when a pickle
hands numpy a shape with elements in it (never for torch checkpoints).
"""
from __future__ import annotations

from tensorsafe.engine.pickled_dtype import dtype_layout
from tensorsafe.errors import ParseError
from tensorsafe.pickles.values import Call, Global
from tensorsafe.readers.numpy_files import numpy_dtype

_CODECS_ENCODE = ("_codecs", "encode")


def pickled_itemsize(dtype: object) -> int:
    """Bytes per element of ``dtype`` as numpy would build it; 1 (the least) when numpy's would be
    uncertain or the dtype is computed at load time."""
    if isinstance(dtype, Call) and isinstance(dtype.func, Global) and (dtype.func.module, dtype.func.name) \
            == _CODECS_ENCODE and isinstance(dtype.args, tuple) and dtype.args:
        dtype = dtype.args[0]  # protocol 2 writes numpy's b'b' as _codecs.encode('b', 'latin1')
    try:
        if isinstance(dtype, (str, bytes)):
            text = dtype.decode("latin-1") if isinstance(dtype, bytes) else dtype
            return numpy_dtype(text, "pickled").itemsize
        if isinstance(dtype, Call):
            return dtype_layout(dtype).itemsize
    except ParseError:  # a state numpy could not have written: numpy still trusts its elsize
        return max(_state_elsize(dtype), 1)
    return 1


def _state_elsize(dtype: object) -> int:
    """The ``elsize`` of a pickled dtype's BUILD state ``(version, byteorder, subarray, names, fields,
    elsize, ...)``, or 0."""
    state = dtype.state if isinstance(dtype, Call) else None
    if type(state) is tuple and len(state) > 5 and type(state[5]) is int:
        return state[5]
    return 0
