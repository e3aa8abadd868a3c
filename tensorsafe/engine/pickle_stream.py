"""Pickle streams: raw pickles, concatenated pickles and legacy (pre-1.6) ``torch.save`` files."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.errors import LimitExceeded
from tensorsafe.engine.joblib_arrays import JoblibArrays
from tensorsafe.tensors import STORAGE_ELEMENT_SIZE
from tensorsafe.pickles.front import cannot_be_pickle
from tensorsafe.pickles.values import Global, Unresolved
from tensorsafe.pickles.walker import PickleTrace
from tensorsafe.report import Location
from tensorsafe.readers.sniff import TORCH_LEGACY_MAGIC_NUMBER

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

_I8 = struct.Struct("<q").unpack_from
LEGACY_PICKLES = ("protocol version", "system info", "main object", "storage keys")


def looks_like_pickle(trace: PickleTrace) -> bool:
    """Is a stream of unknown kind a pickle? It is when it reaches STOP, or when it imports a name
    that a Python module could go by before it breaks: code can only run through an import. A name
    with characters other than letters, digits, ``_`` and ``-`` (``mport os`` from a Python file
    that starts with ``import os``: ``i`` is INST; ``hat_template:`` from a YAML file that starts
    with ``chat_template:``; ``d,text,label`` from a CSV header ``id,text,label``) is not taken as
    one, so source, config and text files are not reported as pickles; a module file named with
    such characters is the residual risk (docs/threat-model.md). Digits first and ``-`` stay
    importable: installed modules go by such names (``_sysconfigdata__linux_x86_64-linux-gnu``)."""
    if trace.stopped or isinstance(trace.error, LimitExceeded):
        return True
    return any(isinstance(g, Unresolved) or _importable(g.module) for g in trace.globals)


def _importable(module: str) -> bool:
    """The import system imports the first dotted part of a module before anything else."""
    first = module.split(".")[0]
    return bool(first) and ("_" + first.replace("-", "_")).isidentifier()


def scan_pickle_stream(fs: "FileScan", span: Span, location: Location, depth: int, *, expected: bool) -> bool:
    """Walk and judge the pickles of ``span``; False (nothing recorded) when it is no pickle."""
    if not expected and _fails_at_once(fs, span):
        return False
    hook = JoblibArrays(fs, span, location, depth)
    first = fs.walk(span.buf, span.start, span.end, hook)
    if not expected and not looks_like_pickle(first):
        return False
    fs.note_kind("joblib" if hook.seen else "pickle")
    _judge(fs, first, span, location, depth)
    if hook.seen:
        # pickle.load and torch.load read joblib's array bytes as opcodes: judge that view too
        # (its parse errors are expected: only what it would import or call counts).
        fs.judge(fs.walk(span.buf, span.start, span.end, hook.plain_view()), span, location, depth, structure=False)
    if not first.stopped:
        return True
    if first.root == TORCH_LEGACY_MAGIC_NUMBER:
        fs.kinds[-1] = "pytorch-legacy"
        scan_legacy_rest(fs, span, first.end, location, depth)
        return True
    scan_after_stop(fs, span, first.end, location, depth, hook)
    return True


def _fails_at_once(fs: "FileScan", span: Span) -> bool:
    """The walk would stop at the first opcode (or the one after PROTO) with a parse error, before
    any STOP, import or call (``cannot_be_pickle``): ``looks_like_pickle`` is False without it. The
    walk checks a limit that early only at a STOP (opcode count 1 or 2, no value held) or at a put
    (the memo's room is checked before the stack: a first PUT with no memo room is a limit error,
    which ``looks_like_pickle`` takes as a pickle), so the shortcut holds unless a limit is set
    below that. Most small text files (a torch zip's ``version``, ``byteorder``) end here."""
    limits = fs.limits
    return (limits.max_opcodes >= 2 and limits.max_values >= 0 and limits.max_memo_entries >= 1
            and cannot_be_pickle(span.head(3)))


def _judge(fs: "FileScan", trace: PickleTrace, span: Span, location: Location, depth: int) -> None:
    fs.judge(trace, span, location, depth)


def scan_after_stop(fs: "FileScan", span: Span, pos: int, location: Location, depth: int,
                    hook: JoblibArrays | None = None) -> None:
    """Bytes after STOP: more pickles (each scanned) or trailing data (a finding)."""
    count = 1
    while pos < span.end:
        if count >= fs.limits.max_pickles_per_stream:
            fs.add("PK-L01", f"more than {count:,} pickles in one stream (limit MAX_PICKLES_PER_STREAM)",
                   location.at(pos - span.start), "MAX_PICKLES_PER_STREAM")
            return
        nxt = fs.walk(span.buf, pos, span.end, hook)
        if not looks_like_pickle(nxt):
            fs.add("PK-S03", f"{span.end - pos:,} bytes after the last STOP do not form a pickle",
                   location.at(pos - span.start))
            return
        if count == 1:
            fs.add("PK-S04", "the stream holds more than one pickle; all were scanned", location.at(pos - span.start))
        _judge(fs, nxt, span, location, depth)
        count += 1
        if not nxt.stopped:
            return
        pos = nxt.end


def scan_legacy_rest(fs: "FileScan", span: Span, pos: int, location: Location, depth: int) -> None:
    traces: list[PickleTrace] = []
    fs.storage_claims = {}  # filled by the main object's judge (the other legacy pickles have no persistent ids)
    for label in LEGACY_PICKLES:
        trace = fs.walk(span.buf, pos, span.end)
        _judge(fs, trace, span, location, depth)
        if not trace.stopped:
            return
        traces.append(trace)
        pos = trace.end
    sizes = _storage_element_sizes(traces[2])
    keys = traces[3].root
    if sizes is None or not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        fs.add("TORCH-02", "storage references or the storage key list are not literal values",
               location.at(pos - span.start))
        return
    end, read = span.end, span.reader_at()
    claims = fs.storage_claims  # the main object's persistent ids, read when it was judged (PK-A01)
    for key in keys:
        itemsize = sizes.get(key)
        if itemsize is None:
            fs.add("TORCH-02", f"storage key {key!r} is not referenced by the main object", location.at(pos - span.start))
            return
        if pos + 8 > end:
            fs.add("TORCH-02", f"storage {key!r} is truncated", location.at(pos - span.start))
            return
        numel = _I8(read(pos, pos + 8))[0]  # a read (pread of a local file), not the buffer: it may be remote
        header, pos = pos, pos + 8 + numel * itemsize
        if numel < 0 or pos > span.end:
            fs.add("TORCH-02", f"storage {key!r} declares {numel:,} elements, past the end of the file",
                   location.at(pos - span.start))
            return
        _check_legacy_claim(fs, key, claims.get(key), numel * itemsize, header - span.start, location)
    if pos < span.end:
        fs.add("TORCH-01", f"{span.end - pos:,} bytes follow the last storage", location.at(pos - span.start))
        trailing = fs.walk(span.buf, pos, span.end)
        if trailing.globals or trailing.calls:
            _judge(fs, trailing, span, location.inside("<data after storages>"), depth)


def _check_legacy_claim(fs: "FileScan", key: str, claim: int | None, stored: int, header: int,
                        location: Location) -> None:
    """PK-A01: a legacy torch.load allocates the bytes the main object's persistent id claims for a
    storage when it meets the id, before it reads the storage's header; torch.save claims what it stores."""
    if claim is not None and claim > stored:
        fs.add("PK-A01", f"a persistent id claims {claim:,} bytes for storage {key!r}, which the file stores "
               f"{stored:,} bytes of: torch allocates the claimed bytes before it reads them",
               location.at(header), "storage numel")


def _storage_element_sizes(main: PickleTrace) -> dict[str, int] | None:
    sizes: dict[str, int] = {}
    by_type: dict[int, int] = {}  # element size per storage type object: thousands of ids share a few
    for ref in main.persistent:
        pid = ref.pid
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            return None
        storage_type, key = pid[1], pid[2]
        if not isinstance(key, str):
            return None
        size = by_type.get(id(storage_type))
        if size is None:
            if not isinstance(storage_type, Global):
                return None
            size = STORAGE_ELEMENT_SIZE.get(storage_type.name)
            if size is None:
                return None
            by_type[id(storage_type)] = size
        sizes[key] = size
    return sizes

