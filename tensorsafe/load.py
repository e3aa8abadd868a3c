"""``load_state_dict``: a safe drop-in for ``torch.load(path, weights_only=True)`` (no pickle code runs).

The file is scanned first and refused unless clean; then the restricted reader (the walker that
judged it) turns the pickle into plain values and tensor references, and only here do the bytes
become tensors. A ``.safetensors`` file goes through the project's one header parser instead.
"""
from __future__ import annotations

import collections
import mmap
import os
import stat
from typing import Any, Literal

import numpy as np

from tensorsafe.readers.blob import MappedFile, Span
from tensorsafe.checkpoint import require_clean, read_checkpoint
from tensorsafe.errors import MissingFileError, ParseError, TensorsafeError, UnreadableFileError, UsageError
from tensorsafe.pickles.policy import Policy
from tensorsafe.readers.safetensors.model import HeaderFormatError
from tensorsafe.readers.safetensors.read import read_tensor_refs
from tensorsafe.pickles.reader import Opaque, ParameterRef, TypedStorage
from tensorsafe.readers.sniff import Kind, sniff
from tensorsafe.tensors import DType, StorageRef, TensorRef

Framework = Literal["torch", "numpy"]
_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
              "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu"}


def load_state_dict(path: str | os.PathLike, *, framework: Framework | None = None,
                    policy: Policy | None = None) -> Any:
    """What ``torch.load(path, weights_only=True)`` returns, read without running pickle code.

    The file is scanned first (``policy``, else the built-in one); a file that fails the scan raises
    :class:`~tensorsafe.UnsafeFileError` (``exc.report``, ``exc.findings``), a missing one
    :class:`~tensorsafe.MissingFileError` (also a ``FileNotFoundError``).

    A torch checkpoint (zip or legacy ``torch.save``) comes back with its whole structure: dicts
    (``OrderedDict`` where it was one), lists, tuples and plain values (numbers, strings, bytes,
    ``None``) as saved, every tensor in place. A ``.safetensors`` file comes back as ``{name: tensor}``.

    ``framework``: ``"torch"`` gives torch tensors with torch.load's views (storage offset, shape,
    stride) and ties (tensors on one storage share it); ``"numpy"`` gives writable arrays, views over one
    buffer per storage in the same way. ``None``: torch when it can be imported, else numpy. numpy has
    no bfloat16 or float8: those come back as ``ml_dtypes`` arrays (exact, never widened) when
    ``ml_dtypes`` is installed, else raise :class:`~tensorsafe.UsageError` naming the tensor.
    An ``nn.Parameter`` comes back as one in torch mode; a saved object that is not data (a class
    instance the policy lets through, a bare storage) raises :class:`~tensorsafe.UsageError` naming
    where it is.
    """
    path = os.fspath(path)
    make = _Materializer(_framework(framework), path)
    _require_file(path)
    require_clean(path, policy)
    try:
        with MappedFile(path) as mf:
            if sniff(mf.span) is Kind.SAFETENSORS:
                root: object = _safetensors_refs(mf.span)
            else:
                root = read_checkpoint(path, policy=policy, scan_first=False).root
            return make.value(root, mf.span.buf, "")
    except TensorsafeError as exc:
        if exc.path is None:
            exc.path = path
        raise


def _framework(framework: str | None) -> str:
    if framework is None:
        try:
            import torch  # noqa: F401
        except ImportError:
            return "numpy"
        return "torch"
    if framework not in ("numpy", "torch"):
        raise UsageError(f"framework must be 'torch', 'numpy' or None, not {framework!r}")
    return framework


def _require_file(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingFileError("no such file", path=path) from None
    except OSError as exc:
        raise UnreadableFileError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if not stat.S_ISREG(mode):
        raise UsageError("not a file: load_state_dict reads one checkpoint or .safetensors file", path=path)


def _safetensors_refs(span: Span) -> dict[str, TensorRef]:
    try:
        return read_tensor_refs(span)[1]
    except HeaderFormatError as exc:
        raise ParseError(f"not a valid safetensors file: {exc}") from None
    except ParseError as exc:  # a valid file with a dtype no array type holds (the sub-byte floats)
        raise UsageError(exc.message, location=exc.location) from None


class _Materializer:
    """Turns the reader's values into tensors: one buffer per storage, every tensor a view of it."""

    def __init__(self, framework: str, path: str):
        self.framework = framework
        self.path = path
        self._storages: dict[StorageRef, np.ndarray] = {}
        self._torch_storages: dict[StorageRef, Any] = {}
        self._done: dict[int, object] = {}

    def value(self, v: object, buf: bytes | mmap.mmap, where: str) -> object:
        if isinstance(v, _PLAIN):
            return v
        key = id(v)
        if key not in self._done:
            self._done[key] = self._build(v, buf, where)
        return self._done[key]

    def _build(self, v: object, buf: bytes | mmap.mmap, where: str) -> object:
        if isinstance(v, TensorRef):
            return self._tensor(v, buf, where)
        if isinstance(v, dict):
            out = collections.OrderedDict() if isinstance(v, collections.OrderedDict) else {}
            for k, x in v.items():
                out[k] = self.value(x, buf, f"{where}.{k}" if where else str(k))
            return out
        if isinstance(v, (list, tuple)):
            items = [self.value(x, buf, f"{where}[{i}]") for i, x in enumerate(v)]
            return items if isinstance(v, list) else tuple(items)
        if isinstance(v, (set, frozenset)):
            return v  # elements are hashable plain values: the reader refuses anything else as a key
        if isinstance(v, DType):
            return self._dtype(v, where)
        what = f"a {v.name} object" if isinstance(v, Opaque) else \
            "a bare storage" if isinstance(v, TypedStorage) else f"a {type(v).__name__}"
        raise UsageError(f"holds {what}, which is not weights or plain data: load_state_dict returns only "
                         "tensors and plain values", path=self.path, location=where or None)

    def _dtype(self, d: DType, where: str) -> object:
        if self.framework == "torch":
            import torch

            return getattr(torch, d.torch)
        return np.dtype(d.numpy) if d.numpy else self._extension_dtype(d, where)

    def _extension_dtype(self, d: DType, where: str) -> Any:
        try:
            import ml_dtypes
        except ImportError:
            ml_dtypes = None  # type: ignore[assignment]
        name = _ML_DTYPES.get(d.name)
        if ml_dtypes is None or name is None or not hasattr(ml_dtypes, name):
            raise UsageError(f"tensor has dtype {d.torch} ({d.name}), which numpy does not have; use "
                             "framework='torch' (or install ml_dtypes)", path=self.path, location=where or None)
        return np.dtype(getattr(ml_dtypes, name))

    def _storage(self, ref: StorageRef, buf: bytes | mmap.mmap) -> np.ndarray:
        store = self._storages.get(ref)
        if store is None:
            store = np.zeros(0, np.uint8) if not ref.nbytes else \
                np.frombuffer(buf, np.uint8, count=ref.nbytes, offset=ref.offset).copy()
            self._storages[ref] = store
        return store

    def _tensor(self, ref: TensorRef, buf: bytes | mmap.mmap, where: str) -> Any:
        store = self._storage(ref.storage, buf)
        if self.framework == "torch":
            import torch

            storage = self._torch_storages.get(ref.storage)
            if storage is None:
                storage = self._torch_storages[ref.storage] = torch.from_numpy(store).untyped_storage()
            t = torch.empty(0, dtype=getattr(torch, ref.dtype.torch))
            t = t.set_(storage, ref.storage_offset, ref.shape, ref.stride)
            return torch.nn.Parameter(t, ref.requires_grad) if isinstance(ref, ParameterRef) else t
        dtype = np.dtype(ref.dtype.numpy) if ref.dtype.numpy else self._extension_dtype(ref.dtype, where)
        try:
            if not ref.numel:
                return np.empty(ref.shape, dtype)
            strides = tuple(s * dtype.itemsize for s in ref.stride)
            return np.ndarray(ref.shape, dtype, buffer=store, offset=ref.storage_offset * dtype.itemsize,
                              strides=strides)
        except (ValueError, OverflowError):  # a size or stride past numpy's intp (torch holds it: int64 elements)
            raise UsageError(f"numpy cannot hold a tensor of shape {ref.shape} and stride {ref.stride}; use "
                             "framework='torch'", path=self.path, location=where or None) from None


def raw_bytes_view(ref: TensorRef, buf: bytes | mmap.mmap) -> np.ndarray:
    """The tensor's elements as a strided ``uint8`` view over ``buf``: shape + (itemsize,)."""
    itemsize = ref.dtype.itemsize
    if not ref.numel:
        return np.zeros(ref.shape + (itemsize,), dtype=np.uint8)
    base = np.frombuffer(buf, dtype=np.uint8, count=ref.span_bytes(), offset=ref.byte_offset)
    strides = tuple(s * itemsize for s in ref.stride) + (1,)
    return np.lib.stride_tricks.as_strided(base, shape=ref.shape + (itemsize,), strides=strides, writeable=False)


def to_numpy(ref: TensorRef, buf: bytes | mmap.mmap) -> np.ndarray:
    if not ref.numel:
        return np.zeros(ref.shape, dtype=ref.dtype.numpy or np.float32)
    raw = raw_bytes_view(ref, buf)
    if ref.dtype.numpy is not None:
        if ref.is_contiguous:
            return np.frombuffer(buf, dtype=ref.dtype.numpy, count=ref.numel, offset=ref.byte_offset).reshape(ref.shape)
        return np.ascontiguousarray(raw).view(ref.dtype.numpy).reshape(ref.shape)
    if ref.dtype.name == "BF16":
        bits = np.ascontiguousarray(raw).view("<u2").reshape(ref.shape).astype(np.uint32) << 16
        return bits.view(np.float32)
    raise UsageError(f"numpy has no {ref.dtype.name}; use framework='torch'")


def to_torch(ref: TensorRef, buf: bytes | mmap.mmap) -> Any:  # a torch.Tensor (torch is optional)
    import torch

    dtype = getattr(torch, ref.dtype.torch)
    if not ref.numel:
        return torch.empty(ref.shape, dtype=dtype)
    raw = np.ascontiguousarray(raw_bytes_view(ref, buf)).reshape(-1)
    return torch.from_numpy(raw.copy()).view(dtype).reshape(ref.shape)
