"""Every tensor of a model file with a dotted name, wherever it sits, and the few values identification reads.

A safetensors file is read through the one header parser (:mod:`tensorsafe.safetensors.inspect`); a
torch checkpoint through the restricted reader (:mod:`tensorsafe.checkpoint`), which scans it first.
In a checkpoint, tensors can sit anywhere in the saved structure: under ``state_dict`` (unwrapped
as the converter does, so names match the single-file layout), or nested, as an A1111 textual
inversion's ``string_to_param`` -> ``{"*": tensor}``. They are all listed, named by their path
(``string_to_param.*``); a tensor reached twice is listed once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from tensorsafe.checkpoint import read_checkpoint
from tensorsafe.errors import TensorsafeError, UsageError
from tensorsafe.load import to_numpy
from tensorsafe.readers.blob import MappedFile
from tensorsafe.readers.sniff import Kind, sniff
from tensorsafe.safetensors.inspect import Inspection, inspect_file
from tensorsafe.tensors import DTYPES, StorageRef, TensorRef, contiguous_strides

MAX_DEPTH = 32            # nesting followed into a checkpoint's dicts and lists
MAX_SCALARS = 100_000     # one-element tensors whose value is read (kohya alphas: one per module)
SCALAR_SUFFIXES = (".alpha",)


@dataclass
class TensorListing:
    path: str
    format: str                         # safetensors, pytorch-zip, pytorch-legacy
    tensors: dict[str, TensorRef]       # dotted name -> reference, in the order found
    metadata: dict[str, str] | None = None
    extras: dict[str, object] = field(default_factory=dict)
    """Plain top-level values of a checkpoint (``name``, ``step``, ``global_step``, ...)."""
    scalars: dict[str, float] = field(default_factory=dict)
    """Values of the one-element tensors named ``*.alpha``."""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: ref.shape for name, ref in self.tensors.items()}

    def dtypes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {name: (ref.dtype.name, ref.shape) for name, ref in self.tensors.items()}


def flatten(root: object) -> dict[str, TensorRef]:
    """Tensors of a checkpoint's structure by dotted path; the ``state_dict`` chain first, unprefixed."""
    state = root
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    out: dict[str, TensorRef] = {}
    seen: set[int] = set()
    _walk(state, "", out, seen, 0)
    if state is not root:
        _walk(root, "", out, seen, 0)
    return out


def _walk(node: object, prefix: str, out: dict[str, TensorRef], seen: set[int], depth: int) -> None:
    if id(node) in seen or depth > MAX_DEPTH:
        return
    if isinstance(node, TensorRef):
        seen.add(id(node))
        out.setdefault(prefix[:-1], node)
        return
    if isinstance(node, dict):
        seen.add(id(node))
        for key, value in node.items():
            _walk(value, f"{prefix}{key}.", out, seen, depth + 1)
    elif isinstance(node, (list, tuple)):
        seen.add(id(node))
        for i, value in enumerate(node):
            _walk(value, f"{prefix}{i}.", out, seen, depth + 1)


def list_tensors(path: str | os.PathLike, *, read_scalars: bool = True) -> TensorListing:
    """The tensors of a ``.safetensors`` file or a torch checkpoint (scanned first; refused unless clean)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError("a folder: this reads one model file (.safetensors, .ckpt, .pt, .bin)", path=path)
    with MappedFile(path) as mf:
        kind = sniff(mf.span)
    if kind in (Kind.ZIP, Kind.PICKLE):
        ckpt = read_checkpoint(path)
        extras = {k: v for k, v in ckpt.root.items() if isinstance(k, str) and not isinstance(v, (TensorRef, list))} \
            if isinstance(ckpt.root, dict) else {}
        listing = TensorListing(path, ckpt.format, flatten(ckpt.root), None, extras)
    else:  # safetensors, or not a model file: the header reader says what it looks like instead
        listing = _safetensors(path)
    if read_scalars:
        listing.scalars = read_scalar_values(path, listing.tensors)
    return listing


def _safetensors(path: str) -> TensorListing:
    return from_inspection(path, inspect_file(path))


def from_inspection(path: str, ins: Inspection) -> TensorListing:
    """The listing of a safetensors file whose header was read (:func:`tensorsafe.safetensors.inspect.inspect_file`)."""
    start = 8 + ins.header_bytes
    tensors = {}
    for t in ins.tensors:
        dtype = DTYPES.get(t.dtype)
        if dtype is not None:
            shape = tuple(t.shape)
            tensors[t.name] = TensorRef(dtype, shape, contiguous_strides(shape), 0,
                                        StorageRef(t.name, start + t.begin, t.nbytes))
    return TensorListing(path, "safetensors", tensors, dict(ins.metadata or {}))


def read_scalar_values(path: str, tensors: dict[str, TensorRef]) -> dict[str, float]:
    """The values of one-element ``*.alpha`` tensors (dtypes numpy cannot read are skipped)."""
    wanted = [(n, r) for n, r in tensors.items() if n.endswith(SCALAR_SUFFIXES) and r.numel == 1][:MAX_SCALARS]
    if not wanted:
        return {}
    out: dict[str, float] = {}
    with MappedFile(path) as mf:
        for name, ref in wanted:
            if ref.byte_offset + ref.dtype.itemsize > mf.span.end:
                continue
            try:
                out[name] = float(to_numpy(ref, mf.span.buf).reshape(-1)[0])
            except (TensorsafeError, TypeError, ValueError):
                continue
    return out
