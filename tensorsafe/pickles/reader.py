"""The restricted reader: turns a walked pickle into plain Python values and tensor references.

It runs on the walker's inert values, so a checkpoint is never read differently from how it
was judged. Only the rebuild functions below are followed; every other call becomes an
``Opaque`` value (the scan has already decided whether it is allowed). No import, no call.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable

from tensorsafe.errors import ParseError
from tensorsafe.limits import MAX_LOAD_ALLOCATION_BYTES
from tensorsafe.pickles.values import BytesRef, Call, Global, OutOfBand, PersistentRef, Unresolved
from tensorsafe.tensors import BY_STORAGE_NAME, BY_TORCH_NAME, DTYPES, DType, StorageRef, TensorRef

MAX_REBUILD_DEPTH = 256
SAFE_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"})
_PLAIN_CONSTRUCTORS = {"set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict,
                       "bytearray": bytearray, "bytes": bytes, "complex": complex}


@dataclass(frozen=True)
class Opaque:
    """A value the reader does not rebuild (a callback class, a path object): its import name."""

    name: str

    def __str__(self) -> str:
        return f"<{self.name}>"


@dataclass(frozen=True)
class TypedStorage:
    ref: StorageRef
    dtype: DType


@dataclass(frozen=True)
class ParameterRef(TensorRef):
    """A tensor saved as an ``nn.Parameter``; everything but ``load_state_dict`` reads it as the tensor."""

    requires_grad: bool = True


StorageResolver = Callable[[object], TypedStorage]


class Rebuilder:
    """Evaluates inert pickle values; ``storage`` resolves a persistent id to its bytes."""

    def __init__(self, storage: StorageResolver, buffer=None):
        self.storage = storage
        self.buffer = buffer
        self._done: dict[int, object] = {}

    def value(self, v: object, depth: int = 0) -> object:
        if v is None or isinstance(v, (bool, int, float, str, bytes, complex)):
            return v
        if depth > MAX_REBUILD_DEPTH:
            raise ParseError(f"values nested more than {MAX_REBUILD_DEPTH} deep")
        key = id(v)
        if key in self._done:
            return self._done[key]
        out = self._build(v, depth + 1)
        self._done[key] = out
        return out

    def _build(self, v: object, depth: int) -> object:
        if isinstance(v, tuple):
            return tuple(self.value(x, depth) for x in v)
        if isinstance(v, list):
            return [self.value(x, depth) for x in v]
        if isinstance(v, dict):
            return {self._key(k, depth): self.value(x, depth) for k, x in v.items()}
        if isinstance(v, (set, frozenset)):
            return type(v)(self._key(x, depth) for x in v)
        if isinstance(v, Global):
            if v.module == "torch" and v.name in BY_TORCH_NAME:
                return BY_TORCH_NAME[v.name]
            return Opaque(v.qualified)
        if isinstance(v, Call):
            return self._call(v, depth)
        if isinstance(v, PersistentRef):
            return self.storage(v.pid)
        if isinstance(v, BytesRef):
            if self.buffer is None:
                raise ParseError("a large bytes value cannot be read without its buffer")
            return bytes(self.buffer[v.start:v.start + v.length])
        if isinstance(v, (Unresolved, OutOfBand)):
            raise ParseError(f"cannot rebuild {v!r}")
        raise ParseError(f"cannot rebuild a {type(v).__name__}")

    def _key(self, k: object, depth: int) -> object:
        out = self.value(k, depth)
        try:
            hash(out)
        except TypeError:
            raise ParseError("unhashable dict key") from None
        return out

    def _call(self, c: Call, depth: int) -> object:
        if not isinstance(c.func, Global):
            raise ParseError("cannot rebuild a call of a computed value")
        name = c.func.qualified
        args = self.value(c.args, depth) if isinstance(c.args, tuple) else ()
        handler = _HANDLERS.get(name)
        if handler is not None:
            out = handler(self, args, c, depth)
        elif c.func.module == "builtins" and c.func.name in _PLAIN_CONSTRUCTORS:
            out = _plain(c.func.name, args)
        else:
            return Opaque(name)
        return self._with_items(out, c, depth)

    def _with_items(self, out: object, c: Call, depth: int) -> object:
        if c.items and isinstance(out, dict):
            for k, x in c.items:
                out[self._key(k, depth)] = self.value(x, depth)
        if c.appended and isinstance(out, list):
            out.extend(self.value(x, depth) for x in c.appended)
        return out


def _plain(name: str, args: tuple) -> object:
    if name in ("bytes", "bytearray"):
        _check_bytes_args(name, args)
    try:
        return _PLAIN_CONSTRUCTORS[name](*args)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: complex() of a huge int
        raise ParseError(f"cannot rebuild builtins.{name}: {exc}") from None


def _check_bytes_args(name: str, args: tuple) -> None:
    """Picklers write ``bytes()``/``bytearray()`` with no argument, a bytes value, or (text, 'latin-1').
    An integer would allocate that many zero bytes (a memory bomb in a few bytes of pickle), and an
    encoding is looked up by name, so both are refused rather than rebuilt."""
    if args and isinstance(args[0], int):
        raise ParseError(f"builtins.{name} of an integer (it allocates that many bytes): no pickler writes it")
    if len(args) > 1 and not (isinstance(args[1], str) and args[1].lower() in SAFE_CODECS):
        raise ParseError(f"builtins.{name} with an encoding other than latin1/utf-8/ascii")


def _ordered_dict(r: Rebuilder, args: tuple, c: Call, depth: int) -> dict:
    out: dict = collections.OrderedDict()  # what torch.load returns for a state_dict()
    if args and isinstance(args[0], (list, tuple)):
        for pair in args[0]:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                out[pair[0]] = pair[1]
    return out


def _codecs_encode(r: Rebuilder, args: tuple, c: Call, depth: int) -> bytes:
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str) and args[1].lower() in SAFE_CODECS:
        return args[0].encode(args[1])
    raise ParseError("_codecs.encode with arguments other than (text, latin1/utf-8)")


_INT64_MAX = 2**63 - 1
"""torch keeps sizes, strides and offsets as int64: a larger one makes ``Tensor.set_`` (torch.load) fail."""


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _INT64_MAX
                                               for x in value):
        raise ParseError(f"tensor {what} {value!r} is not a tuple of non-negative int64 integers")
    return value


def _tensor(storage: object, offset: object, size: object, stride: object, dtype: DType | None) -> TensorRef:
    if not isinstance(storage, TypedStorage):
        raise ParseError("tensor storage is not a storage reference")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _INT64_MAX:
        raise ParseError(f"tensor storage offset {offset!r} is not a non-negative int64 integer")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise ParseError("tensor size and stride have different lengths")
    ref = TensorRef(dtype or storage.dtype, shape, strides, offset, storage.ref)
    if ref.numel and ref.storage_offset * ref.dtype.itemsize + ref.span_bytes() > storage.ref.nbytes:
        raise ParseError(f"tensor of shape {shape} runs past the end of storage {storage.ref.key!r}")
    if ref.nbytes > storage.ref.nbytes + MAX_LOAD_ALLOCATION_BYTES:
        raise ParseError(f"tensor of shape {shape} and stride {strides} repeats the bytes of storage "
                         f"{storage.ref.key!r} ({storage.ref.nbytes:,} bytes) into {ref.nbytes:,}: written out or "
                         f"made contiguous it would take that much (limit MAX_LOAD_ALLOCATION_BYTES)")
    return ref


def _rebuild_tensor(r: Rebuilder, args: tuple, c: Call, depth: int) -> TensorRef:
    if len(args) < 4:
        raise ParseError("_rebuild_tensor needs (storage, offset, size, stride)")
    return _tensor(*args[:4], None)


def _rebuild_tensor_v3(r: Rebuilder, args: tuple, c: Call, depth: int) -> TensorRef:
    if len(args) < 7 or not isinstance(args[6], DType):
        raise ParseError("_rebuild_tensor_v3 needs (storage, offset, size, stride, grad, hooks, dtype)")
    return _tensor(*args[:4], args[6])


def _parameter(r: Rebuilder, args: tuple, c: Call, depth: int) -> object:
    if not args:
        raise ParseError("_rebuild_parameter needs its tensor")
    ref = args[0]
    if type(ref) is not TensorRef:
        return ref
    grad = args[1] if len(args) > 1 and isinstance(args[1], bool) else True
    return ParameterRef(ref.dtype, ref.shape, ref.stride, ref.storage_offset, ref.storage, grad)


def _from_type(r: Rebuilder, args: tuple, c: Call, depth: int) -> object:
    raw = c.args if isinstance(c.args, tuple) else ()
    if len(raw) < 3 or not isinstance(raw[2], tuple):
        raise ParseError("_rebuild_from_type_v2 needs (func, type, args, state)")
    return r.value(Call(raw[0], raw[2], "reduce", c.offset), depth)


def _size(r: Rebuilder, args: tuple, c: Call, depth: int) -> tuple:
    return tuple(args[0]) if args and isinstance(args[0], (tuple, list)) else ()


def _device(r: Rebuilder, args: tuple, c: Call, depth: int) -> str:
    return ":".join(str(a) for a in args)


_HANDLERS = {
    "collections.OrderedDict": _ordered_dict,
    "collections.defaultdict": lambda r, a, c, d: {},
    "_codecs.encode": _codecs_encode,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "torch._tensor._rebuild_from_type_v2": _from_type,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.Size": _size,
    "torch.device": _device,
}


def storage_dtype(storage_type: object) -> DType:
    """The element type a persistent id's storage type names (untyped storages hold bytes)."""
    if isinstance(storage_type, Global):
        if storage_type.name == "UntypedStorage":
            return DTYPES["U8"]
        dtype = BY_STORAGE_NAME.get(storage_type.name)
        if dtype is not None:
            return dtype
    raise ParseError(f"unknown storage type {storage_type!r}")
