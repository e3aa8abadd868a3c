"""Allocation bombs (PK-A01): allowed calls whose arguments make a loader allocate memory the file does not hold.

Every callee here is allowed (``torch.load(weights_only=True)`` runs several of them), yet a few
bytes of pickle can make it allocate without bound: ``bytearray(10**12)``, ``set(range(10**12))``,
``numpy.ndarray((10**12,))``, ``_reconstruct(ndarray, (10**12,), 'b')``, an object array whose
state claims more elements than its list holds, or a torch persistent id that claims a storage
bigger than the bytes stored for it (torch allocates the storage before it reads them). No
pickler writes any of these: picklers pass the data itself (``bytearray(b"...")``), numpy pickles
``_reconstruct(ndarray, (0,), b'b')`` and then the array's bytes, torch.save claims exactly the
bytes it writes. The bound for values built from nothing is ``MAX_LOAD_ALLOCATION_BYTES``; a
torch storage is bounded by the bytes the file holds for it.
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

from tensorsafe.limits import LOAD_ITEM_BYTES, MAX_LOAD_ALLOCATION_BYTES
from tensorsafe.pickles.values import BytesRef, Call, Global
from tensorsafe.pickles.walker import PickleTrace
from tensorsafe.tensors import STORAGE_ELEMENT_SIZE

ItemSize = Callable[[object], int]
"""Bytes per element of a dtype a pickle hands numpy (the engine rebuilds it with numpy's rules)."""

_BYTE_ALLOCATORS = frozenset({("builtins", "bytearray"), ("builtins", "bytes")})
"""``bytes(n)``/``bytearray(n)`` allocate ``n`` zero bytes (any argument with ``__index__``)."""
_ITEM_CONTAINERS = frozenset({("builtins", n) for n in ("set", "frozenset", "list", "tuple")}
                             | {("collections", "deque"), ("collections", "Counter"), ("torch", "Size")})
"""Callees that hold every item of the iterable they get (``builtins.range`` makes one from nothing)."""
_MAPPINGS = {("builtins", "dict"): 0, ("collections", "OrderedDict"): 0, ("collections", "defaultdict"): 1}
"""Callees that hold every pair of the iterable at this argument (a stride-0 tensor of pairs: no range)."""
_FILLED_BY_INIT = frozenset({("builtins", n) for n in ("set", "list", "bytearray", "dict")}
                            | {("collections", n) for n in ("deque", "Counter", "OrderedDict", "defaultdict")})
"""Their ``__new__`` ignores its arguments: NEWOBJ (``cls.__new__(cls, *args)``) allocates nothing."""
_RECONSTRUCT = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")})
_NDARRAY = ("numpy", "ndarray")
_RANGE = ("builtins", "range")
_RECONSTRUCTOR = ("copyreg", "_reconstructor")
_FROM_TYPE = ("torch._tensor", "_rebuild_from_type_v2")
_ALLOCATING = _BYTE_ALLOCATORS | _ITEM_CONTAINERS | _MAPPINGS.keys() | _RECONSTRUCT | {_NDARRAY}
_HELPERS = {_RECONSTRUCTOR: 1, _FROM_TYPE: 0}
"""Helpers that call an argument (its index): ``_reconstructor(cls, base, state)`` runs
``base.__init__(obj, state)``; ``_rebuild_from_type_v2(func, type, args, state)`` runs ``func(*args)``."""
ALLOCATING = _ALLOCATING | _HELPERS.keys()
"""Every callee whose calls are checked here, and the helpers that call one: a trace that imports
none of them costs one pass over its imports."""
_BYTES_LIKE_MAKERS = frozenset({("_codecs", "encode"), ("builtins", "bytes"), ("builtins", "bytearray"),
                                ("builtins", "str"), ("builtins", "list"), ("builtins", "tuple"), _RANGE})
"""Callees whose result, handed to ``bytes()``, is copied (its size is in the file), never a count."""
_TENSOR_WRAPPERS = frozenset({("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
                              ("torch.nn.parameter", "Parameter")})
"""Calls whose argument 0 is the tensor they return (iterating them iterates it)."""
_UNKNOWN = -1
"""A count computed at load time (a call whose result may be any integer)."""


class Bomb(NamedTuple):
    offset: int
    message: str
    trigger: str


def _least_itemsize(dtype: object) -> int:
    return 1


def allocation_bombs(trace: PickleTrace, callees: dict[int, tuple[str, str]], itemsize: ItemSize | None = None,
                     bound: int = MAX_LOAD_ALLOCATION_BYTES) -> Iterator[Bomb]:
    """The calls of ``trace`` (to the ``Global`` objects in ``callees``, see :func:`allocating_callees`)
    that allocate more than ``bound`` bytes the file does not hold. Without ``itemsize`` a numpy
    element counts 1 byte. Written for speed: a checkpoint calls ``OrderedDict()`` and
    ``_rebuild_from_type_v2`` once per tensor, so calls without arguments, and helpers handed no
    allocating callee, are passed over before any other look."""
    check = _Check(itemsize or _least_itemsize, bound)
    for call in trace.calls:
        key = callees.get(id(call.func))
        if key is None or not (call.args or call.kwargs) or call.kind == "additems":
            continue
        if key in _HELPERS:
            args = call.args
            at = _HELPERS[key]
            if not (type(args) is tuple and len(args) > at and id(args[at]) in callees):
                continue
        message = check.call(call)
        if message is not None:
            yield Bomb(call.offset, message, call.func.qualified)  # type: ignore[attr-defined]


def allocating_callees(trace: PickleTrace) -> dict[int, tuple[str, str]]:
    """``id()`` -> name of the trace's imports of an allocating callee (``Global`` objects are shared
    through the memo, and every one the walk makes is in ``trace.globals``)."""
    found = {id(g): (g.module, g.name) for g in trace.globals
             if type(g) is Global and (g.module, g.name) in ALLOCATING}
    if all(key in _HELPERS for key in found.values()):
        return {}  # a helper can only be handed an import the trace makes
    return found


def _key(value: object) -> tuple[str, str] | None:
    return (value.module, value.name) if isinstance(value, Global) else None


def _call_key(value: object) -> tuple[str, str] | None:
    return _key(value.func) if isinstance(value, Call) else None


class _Check:
    """Checks the calls of one trace; ``total`` adds up what they allocate from nothing (a loader
    keeps every value a pickle builds, so many calls under the bound add up to one over it)."""

    def __init__(self, itemsize: ItemSize, bound: int):
        self.itemsize = itemsize
        self.bound = bound
        self.total = 0

    def call(self, call: Call) -> str | None:
        key = _key(call.func)
        args = call.args if isinstance(call.args, tuple) else ()
        kind = call.kind
        if key == _RECONSTRUCTOR:  # base.__init__(obj, state) on a fresh object of a subclass of base
            key, args, kind = _key(args[1]) if len(args) > 2 else None, args[2:3], "reduce"
        elif key == _FROM_TYPE:  # func(*args), then re-typed
            key = _key(args[0]) if args else None
            args = args[2] if len(args) > 2 and isinstance(args[2], tuple) else ()
        if key not in _ALLOCATING or (kind in ("newobj", "newobj_ex") and key in _FILLED_BY_INIT):
            return None
        name = f"{key[0]}.{key[1]}"
        if key in _BYTE_ALLOCATORS:
            count = _byte_count(args[0]) if args else 0
            return self._over(count, f"{name} of {_amount(count, 'bytes')}: it allocates that many zero bytes")
        if key in _ITEM_CONTAINERS or key in _MAPPINGS:
            index = _MAPPINGS.get(key, 0)
            items = self._iterated_items(args[index], key not in _MAPPINGS) if len(args) > index else 0
            return self._over(_scaled(items, LOAD_ITEM_BYTES), f"{name} of {_amount(items, 'items')} made from "
                              f"nothing in the file: it holds every one (at least {LOAD_ITEM_BYTES} bytes each)")
        if key in _RECONSTRUCT:
            found = self._array_bytes(args[1] if len(args) > 1 else (), args[2] if len(args) > 2 else None)
            return self._over(found, f"{name} with a shape of {_amount(found, 'bytes')} (numpy pickles (0,)): "
                              "it allocates the array before its state is read") or self._object_state(call)
        return self._ndarray(call, args)

    def _ndarray(self, call: Call, args: tuple) -> str | None:
        """``numpy.ndarray(shape, dtype=float, buffer=None, ...)``: no buffer, it allocates the array."""
        kwargs = call.kwargs if isinstance(call.kwargs, dict) else {}
        if not args and not kwargs:
            return None  # ndarray() raises: it needs a shape
        shape = args[0] if args else kwargs.get("shape", ())
        dtype = args[1] if len(args) > 1 else kwargs.get("dtype", "f8")
        buffer = args[2] if len(args) > 2 else kwargs.get("buffer")
        if buffer is not None:
            return None  # numpy checks the buffer holds the array
        found = self._array_bytes(shape, dtype)
        return self._over(found, f"numpy.ndarray of a shape of {_amount(found, 'bytes')} with no buffer: "
                          "it allocates the array")

    def _object_state(self, call: Call) -> str | None:
        """An array BUILD state ``(version, shape, dtype, fortran, data)`` with data that is not bytes:
        numpy allocates (and zeroes) the whole array for an object array before it reads the list, and
        checks the length of bytes first. Picklers write exactly one list item per element."""
        state = call.state
        if not (type(state) is tuple and len(state) in (4, 5)):
            return None
        shape, dtype, data = state[-4], state[-3], state[-1]
        if _is_bytes_like(data):
            return None
        held = len(data) if isinstance(data, (list, tuple)) else 0
        elements = _elements(shape)
        if elements == _UNKNOWN or elements > held:
            found = _scaled(elements, max(self.itemsize(dtype), 1))
            return self._over(found, f"a numpy array state of {_amount(found, 'bytes')} whose data holds "
                              f"{held:,} items: numpy allocates the array before it reads them")
        return None

    def _iterated_items(self, arg: object, ranges: bool) -> int:
        """Items a container gets from ``range(...)`` (``ranges``), or the rows of a tensor view or
        an array (a stride-0 view has any number of rows over one stored element); 0 for items in the file."""
        key = _call_key(arg)
        args: tuple = arg.args if key is not None and isinstance(arg.args, tuple) else ()  # type: ignore[union-attr]
        for _ in range(8):  # unwrap what returns a tensor it is given or rebuilds (a few levels at most)
            if key in _TENSOR_WRAPPERS:
                arg = args[0] if args else None
                key = _call_key(arg)
                args = arg.args if key is not None and isinstance(arg.args, tuple) else ()  # type: ignore[union-attr]
            elif key == _FROM_TYPE:  # func(*args)
                key = _key(args[0]) if args else None
                args = args[2] if len(args) > 2 and isinstance(args[2], tuple) else ()
                arg = None
            else:
                break
        if key is None:
            return 0
        if key == _RANGE:
            return _range_length(args) if ranges else 0
        if key[0] == "torch._utils" and key[1].startswith("_rebuild_tensor"):
            return _rows(args[2] if len(args) > 2 else None)
        if key in _RECONSTRUCT and isinstance(arg, Call):
            state = arg.state
            return _rows(state[-4]) if type(state) is tuple and len(state) in (4, 5) else 0
        return 0

    def _array_bytes(self, shape: object, dtype: object) -> int:
        elements = _elements(shape)
        return elements if elements in (0, _UNKNOWN) else elements * max(self.itemsize(dtype), 1)

    def _over(self, count: int, message: str) -> str | None:
        if count == _UNKNOWN:
            return message + " (a size computed at load time, which may be any number)"
        if count > self.bound:
            return message + f", more than {self.bound:,} bytes (MAX_LOAD_ALLOCATION_BYTES) the file does not hold"
        before, self.total = self.total, self.total + count
        if before <= self.bound < self.total:  # reported once, at the call that crosses it
            return message + f"; with the calls before it, this pickle allocates {self.total:,} bytes from " \
                f"nothing in the file, more than {self.bound:,} (MAX_LOAD_ALLOCATION_BYTES)"
        return None


def _amount(count: int, unit: str) -> str:
    return f"a computed number of {unit}" if count == _UNKNOWN else f"{count:,} {unit}"


def _scaled(count: int, factor: int) -> int:
    return _UNKNOWN if count == _UNKNOWN else count * factor


def _byte_count(arg: object) -> int:
    """Bytes ``bytes(arg)`` allocates from nothing: an integer's value; 0 for data it copies."""
    if type(arg) is int:
        return max(arg, 0)
    if isinstance(arg, Call):
        if _call_key(arg) in _BYTES_LIKE_MAKERS:
            return 0
        return _UNKNOWN  # builtins.int('...'), a numpy scalar, a one-element tensor: any number
    return 0


def _range_length(bounds: tuple) -> int:
    if not all(type(b) is int for b in bounds):
        return _UNKNOWN
    if len(bounds) == 1:
        return max(bounds[0], 0)
    if len(bounds) in (2, 3):
        start, stop, step = bounds[0], bounds[1], bounds[2] if len(bounds) == 3 else 1
        if step > 0:
            return max(0, (stop - start + step - 1) // step)
        if step < 0:
            return max(0, (start - stop - step - 1) // -step)
    return 0  # range() raises


def _rows(shape: object) -> int:
    """Rows of a tensor or array shape (what iterating it yields); a computed shape is unknown."""
    shape = _literal_shape(shape)
    if shape is None:
        return _UNKNOWN
    return max(shape[0], 0) if shape else 0


def _literal_shape(shape: object) -> tuple | list | None:
    if type(shape) is int:
        return (shape,)
    if _call_key(shape) in (("builtins", "tuple"), ("builtins", "list"), ("torch", "Size")):
        inner = shape.args if isinstance(shape.args, tuple) else ()  # type: ignore[union-attr]
        shape = inner[0] if len(inner) == 1 else None
    if isinstance(shape, (tuple, list)) and all(type(d) is int for d in shape):
        return shape
    return None


def _elements(shape: object) -> int:
    """The element count of a literal shape, capped at 2**128 (so an attacker's huge dimensions never
    multiply); a shape computed at load time is unknown."""
    dims = _literal_shape(shape)
    if dims is None:
        return _UNKNOWN
    if any(d <= 0 for d in dims):
        return 0  # an empty array, or numpy raises
    total, cap = 1, 1 << 128
    for d in dims:
        total = min(total * min(d, cap), cap)
    return total


def _is_bytes_like(data: object) -> bool:
    if isinstance(data, (bytes, bytearray, str, BytesRef)):
        return True
    return _call_key(data) in (("_codecs", "encode"), ("builtins", "bytes"), ("builtins", "bytearray"))


def claimed_storage_bytes(trace: PickleTrace) -> dict[str, int]:
    """Key -> the most bytes any torch persistent id ``('storage', type, key, location, numel)`` claims
    for it: torch allocates ``numel`` elements of the storage type before it reads the stored bytes
    (``get_storage_from_record``; legacy files: ``persistent_load``). Written for speed (a checkpoint
    has one id per tensor, and runs of them share one storage type object): the element size is
    looked up again only when the type object changes."""
    claims: dict[str, int] = {}
    claimed = claims.get
    last, size = None, 0
    for ref in trace.persistent:
        pid = ref.pid
        if type(pid) is tuple and len(pid) >= 5 and pid[0] == "storage":
            storage_type, key, numel = pid[1], pid[2], pid[4]
            if type(key) is str and type(numel) is int:
                if storage_type is not last:
                    last = storage_type
                    size = STORAGE_ELEMENT_SIZE.get(storage_type.name, 1) if type(storage_type) is Global else 0
                nbytes = numel * size
                if nbytes > claimed(key, -1):
                    claims[key] = nbytes
    return claims
