"""Open a PyTorch checkpoint (zip or legacy) as tensor references, through the restricted reader.

The file is scanned first and refused unless clean; then the same walker that judged it turns
its pickle into values, and every tensor into a reference to a byte range of the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from tensorsafe.api import scan
from tensorsafe.engine.zip_scan import TORCH_PICKLE
from tensorsafe.errors import ParseError, TensorsafeError, UnsafeFileError
from tensorsafe.pickles.policy import Policy
from tensorsafe.pickles.reader import Rebuilder, TypedStorage, storage_dtype
from tensorsafe.pickles.walker import PickleTrace, walk
from tensorsafe.readers.blob import MappedFile, Span
from tensorsafe.readers.sniff import TORCH_LEGACY_MAGIC_NUMBER, Kind, sniff
from tensorsafe.readers.zip import ZipView, member_span, open_zip
from tensorsafe.tensors import StorageRef, TensorRef

STATE_DICT_WRAPPERS = ("state_dict",)


@dataclass
class Checkpoint:
    path: str
    format: str
    root: object
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)
    """Top-level values that are not tensors (``global_step``, ``epoch``, ...)."""


def read_checkpoint(path: str | os.PathLike, *, policy: Policy | None = None, scan_first: bool = True) -> Checkpoint:
    """Tensor references of a torch checkpoint; raises ``UnsafeFileError`` if its scan fails."""
    path = os.fspath(path)
    if scan_first:
        require_clean(path, policy)
    try:
        with MappedFile(path) as mf:
            span = mf.span
            kind = sniff(span)
            if kind is Kind.ZIP:
                fmt, root = "pytorch-zip", _read_zip(span)
            elif kind is Kind.PICKLE:
                fmt, root = "pytorch-legacy", _read_legacy(span)
            else:
                raise ParseError(f"not a PyTorch checkpoint (looks like {kind.value})", path=path)
    except TensorsafeError as exc:  # the readers below know the place, not the file: every caller names it
        if exc.path is None:
            exc.path = path
        raise
    return _checkpoint(path, fmt, root)


def require_clean(path: str, policy: Policy | None = None) -> None:
    """Scan ``path``; raise ``UnsafeFileError`` (with the report) unless it is clean."""
    report = scan(path, policy)
    if not report.clean:
        first = "; ".join(f"{f.rule_id} {f.message}" for f in report.findings if f.outcome.value in ("fail", "error"))
        raise UnsafeFileError(f"refusing to read a file that fails its scan: {first[:300]}", path=path, report=report)


def _walk_or_raise(buf, start: int, end: int, what: str) -> PickleTrace:
    trace = walk(buf, start, end)
    if not trace.stopped:
        raise ParseError(f"{what}: {trace.error}")
    return trace


def _read_zip(span: Span) -> object:
    view = open_zip(span)
    pkl = next((m for m in view.members if TORCH_PICKLE.match(m.name)), None)
    if pkl is None:
        raise ParseError("zip archive has no data.pkl: not a torch.save checkpoint")
    prefix = pkl.name[: -len("data.pkl")]
    data, _ = member_span(view, pkl)
    trace = _walk_or_raise(data.buf, data.start, data.end, pkl.name)
    members = {m.name: m for m in view.members}
    return Rebuilder(lambda pid: _zip_storage(view, members, prefix, pid), data.buf).value(trace.root)


def _zip_storage(view: ZipView, members: dict, prefix: str, pid: object) -> TypedStorage:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[2], str)):
        raise ParseError(f"unsupported persistent id {pid!r}")
    name = f"{prefix}data/{pid[2]}"
    m = members.get(name)
    if m is None:
        raise ParseError(f"storage member {name!r} is missing")
    if m.method != 0:
        raise ParseError(f"storage member {name!r} is compressed; torch writes storages uncompressed")
    if m.data_end > view.span.size:
        raise ParseError(f"storage member {name!r} runs past the end of the file")
    ref = StorageRef(pid[2], view.span.start + m.data_offset, m.size, member=name)
    return TypedStorage(ref, storage_dtype(pid[1]))


def _read_legacy(span: Span) -> object:
    pos, traces = span.start, []
    for what in ("magic number", "protocol version", "system info", "main object", "storage keys"):
        trace = _walk_or_raise(span.buf, pos, span.end, what)
        traces.append(trace)
        pos = trace.end
    if traces[0].root != TORCH_LEGACY_MAGIC_NUMBER:
        raise ParseError("not a legacy torch.save file (no magic number)")
    main, keys = traces[3], traces[4].root
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ParseError("legacy storage key list is not a list of strings")
    types = {ref.pid[2]: ref.pid[1] for ref in main.persistent
             if isinstance(ref.pid, tuple) and len(ref.pid) >= 5 and isinstance(ref.pid[2], str)}
    storages: dict[str, TypedStorage] = {}
    for key in keys:
        if key not in types:
            raise ParseError(f"legacy storage {key!r} is not referenced")
        dtype = storage_dtype(types[key])
        head = bytes(span.buf[pos:pos + 8])
        if len(head) < 8:
            raise ParseError(f"legacy storage {key!r} is truncated")
        numel = struct.unpack("<q", head)[0]
        nbytes = numel * dtype.itemsize
        if numel < 0 or pos + 8 + nbytes > span.end:
            raise ParseError(f"legacy storage {key!r} runs past the end of the file")
        storages[key] = TypedStorage(StorageRef(key, pos + 8, nbytes), dtype)
        pos += 8 + nbytes
    return Rebuilder(lambda pid: _legacy_storage(storages, pid), span.buf).value(main.root)


def _legacy_storage(storages: dict[str, TypedStorage], pid: object) -> TypedStorage:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[2] in storages):
        raise ParseError(f"unsupported persistent id {pid!r}")
    base = storages[pid[2]]
    view = pid[5] if len(pid) > 5 else None
    if view is None:
        return base
    if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(x, int) for x in view[1:])):
        raise ParseError(f"unsupported storage view {view!r}")
    _, offset, size = view
    start = offset * base.dtype.itemsize
    if start + size * base.dtype.itemsize > base.ref.nbytes:
        raise ParseError(f"storage view {view[0]!r} runs past its storage")
    ref = StorageRef(str(view[0]), base.ref.offset + start, size * base.dtype.itemsize)
    return TypedStorage(ref, base.dtype)


def _checkpoint(path: str, fmt: str, root: object) -> Checkpoint:
    state = root
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, TensorRef)} \
        if isinstance(state, dict) else {}
    extras = {k: v for k, v in root.items() if isinstance(k, str) and not isinstance(v, (TensorRef, dict, list))} \
        if isinstance(root, dict) else {}
    return Checkpoint(path, fmt, root, tensors, extras)
