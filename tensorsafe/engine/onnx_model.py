"""ONNX models: external-data paths and custom operator domains.

An ONNX file has no magic bytes: it is a protobuf ``ModelProto``. A span is taken as ONNX when its
first field is ``ir_version`` (tag byte 0x08: onnx, torch.onnx and tf2onnx all write it first) or
its name ends in ``.onnx``, and ``onnx.ModelProto`` parses it with ``ir_version`` set and a graph.
The graph holds no Python, but two things reach outside it:

- a tensor whose data is EXTERNAL names a file by its ``location``; the loader reads that file into
  the model, so a location that is absolute, has a drive letter, climbs out of the model's folder
  (``..`` after normalising ``\\`` to ``/``) or names onnxruntime's in-memory marker is ONNX-01;
- operators of a domain outside :data:`STANDARD_DOMAINS` (and not a function the model defines)
  need a custom operator library: ONNX-02, an advisory.

Without the ``onnx`` package a ``.onnx`` file is ONNX-03, unscanned.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.errors import LimitExceeded
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})
"""The ONNX standard domains, plus onnxruntime's built-in contrib operators (``com.microsoft``)."""
MAX_ONNX_BYTES = 2 * 1024 * 1024 * 1024 - 1
"""protobuf refuses messages of 2 GiB and more; so does every ONNX loader."""
IR_VERSION_TAG = 0x08
ORT_MEMORY_MARKER = "_ORT_MEM_ADDR_"
DRIVE = re.compile(r"^[A-Za-z]:")


def escaping_location(location: str) -> str | None:
    """Why an external-data ``location`` leaves the model's folder, or None when it stays inside."""
    if not location:
        return "is empty"
    if "\0" in location:
        return "holds a NUL byte"
    if ORT_MEMORY_MARKER in location:
        return "is onnxruntime's in-memory address marker (reads process memory)"
    path = location.replace("\\", "/")
    if path.startswith("/"):
        return "is an absolute path"
    if DRIVE.match(path) or ":" in path:
        return "names a drive or stream (':')"
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        return "climbs out of the model's folder"
    if normal == ".":
        return "names the model's folder itself"
    return None


def scan_onnx_candidate(fs: FileScan, span: Span, location: Location) -> bool:
    """Judge ``span`` as an ONNX model; False (nothing recorded) when it is not one."""
    named = not location.members and fs.path.lower().endswith(".onnx") \
        or bool(location.members) and location.members[-1].lower().endswith(".onnx")
    if span.size == 0 or not named and span.head(1) != bytes([IR_VERSION_TAG]):
        return False
    try:
        import onnx
    except ImportError:
        if named:
            fs.note_kind("onnx")
            fs.add("ONNX-03", "ONNX model not read: install onnx (the `formats` extra) to scan it: unscanned",
                   location, "onnx")
        return named
    model = _parse(onnx, span)
    if isinstance(model, str):
        if named:
            fs.note_kind("onnx")
            fs.add("ONNX-03", f"named .onnx, but {model}: unscanned", location)
        return named
    fs.note_kind("onnx")
    _judge(fs, onnx, model, location)
    return True


def _parse(onnx, span: Span):
    """The ModelProto, or why the span is none."""
    if span.size > MAX_ONNX_BYTES:
        return f"{span.size:,} bytes is more than protobuf reads (2 GiB)"
    try:
        data = span.tobytes(MAX_ONNX_BYTES)
    except LimitExceeded as exc:
        return exc.message
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 (protobuf DecodeError, RecursionError from deep nesting)
        return f"the bytes are not an ONNX protobuf ({type(exc).__name__}: {exc})"
    if model.ir_version <= 0 or not model.HasField("graph"):
        return "the protobuf has no ir_version or no graph"
    return model


def _judge(fs: FileScan, onnx, model, location: Location) -> None:
    defined = {f.domain for f in model.functions}
    custom: dict[str, str] = {}
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS and opset.domain not in defined:
            custom.setdefault(opset.domain, "opset_import")
    for node in _nodes(model):
        if node.domain not in STANDARD_DOMAINS and node.domain not in defined:
            custom.setdefault(node.domain, f"operator {node.op_type!r}")
    for domain, where in sorted(custom.items()):
        fs.add("ONNX-02", f"custom operator domain {domain!r} ({where}) needs an operator library to run",
               location, domain)
    external = onnx.TensorProto.EXTERNAL
    for tensor, where in _tensors(model):
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            why = escaping_location(entry.value)
            if why is not None:
                fs.add("ONNX-01", f"{where} {tensor.name!r}: external data location {entry.value[:200]!r} {why}"
                       + ("" if tensor.data_location == external else " (data_location is not EXTERNAL yet)"),
                       location, entry.value[:200])


def _graphs(model) -> Iterator:
    """Every graph: the main one, training graphs, subgraphs in attributes (If, Loop, Scan) anywhere."""
    stack = [model.graph]
    for info in model.training_info:
        stack += [info.initialization, info.algorithm]
    for function in model.functions:
        for node in function.node:
            stack.extend(_attribute_graphs(node))
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            stack.extend(_attribute_graphs(node))


def _attribute_graphs(node) -> list:
    out = []
    for attr in node.attribute:
        if attr.HasField("g"):
            out.append(attr.g)
        out.extend(attr.graphs)
    return out


def _nodes(model) -> Iterator:
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _tensors(model) -> Iterator[tuple[object, str]]:
    for graph in _graphs(model):
        for t in graph.initializer:
            yield t, "initializer"
        for s in graph.sparse_initializer:
            yield s.values, "sparse initializer"
            yield s.indices, "sparse initializer indices"
    for node in _nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, f"attribute {attr.name!r} of {node.op_type!r}"
            for t in attr.tensors:
                yield t, f"attribute {attr.name!r} of {node.op_type!r}"
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, f"attribute {attr.name!r} of {node.op_type!r}"
            for s in attr.sparse_tensors:
                yield s.values, f"attribute {attr.name!r} of {node.op_type!r}"
