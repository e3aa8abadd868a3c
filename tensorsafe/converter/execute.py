"""Execute a plan: turn each target into a stream of bytes from its source tensors."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterator

from tensorsafe.converter.chunks import FLOAT_DTYPES, cast_chunks, row_chunks, transpose_chunks
from tensorsafe.converter.kernel_io import FileRange
from tensorsafe.converter.plan import Op, Plan, Target
from tensorsafe.converter.source_io import FileBytes
from tensorsafe.converter.sources import Located
from tensorsafe.converter.writer import OutTensor, layout, write_safetensors
from tensorsafe.errors import ParseError
from tensorsafe.tensors import DType

DEFAULT_MAX_SHARD_BYTES = 10 * 1000**3


def out_tensor(target: Target, sources: dict[str, Located], cast: DType | None = None) -> OutTensor:
    """The bytes of one target; checks shapes first and says which key disagrees."""
    try:
        srcs = [sources[k] for k in target.sources]
    except KeyError as exc:
        raise ParseError(f"{target.key!r} needs the source tensor {exc.args[0]!r}, which is missing") from None
    dtype = srcs[0].ref.dtype
    if any(s.ref.dtype != dtype for s in srcs):
        raise ParseError(f"{target.key!r}: its sources {list(target.sources)} have different dtypes")
    _check_shape(target, srcs)
    out_dtype = cast if cast is not None and dtype.name in FLOAT_DTYPES else dtype
    produce = _producer(target, srcs)
    if out_dtype != dtype:
        return OutTensor(target.key, out_dtype, target.shape, lambda: cast_chunks(produce(), dtype, out_dtype))
    return OutTensor(target.key, dtype, target.shape, produce, _file_ranges(target, srcs))


def _file_ranges(t: Target, srcs: list[Located]) -> tuple[FileRange, ...] | None:
    """The target's bytes as ranges of the source files, when it is a plain byte copy of contiguous
    sources (copy, reshape, row slice, row concatenation); None when they must be transformed."""
    if t.op is Op.TRANSPOSE or any(s.fd is None or not s.ref.is_contiguous for s in srcs):
        return None
    if t.op is Op.ROWS:
        ref = srcs[0].ref
        a, b = t.rows
        row_bytes = ref.nbytes // ref.shape[0]
        return (FileRange(srcs[0].fd, ref.byte_offset + a * row_bytes, (b - a) * row_bytes),)
    return tuple(FileRange(s.fd, s.ref.byte_offset, s.ref.nbytes) for s in srcs)


def _check_shape(t: Target, srcs: list[Located]) -> None:
    shapes = [s.ref.shape for s in srcs]
    numel = math.prod(t.shape)
    if t.op is Op.COPY:
        ok = shapes[0] == t.shape
    elif t.op is Op.RESHAPE:
        ok = math.prod(shapes[0]) == numel
    elif t.op is Op.ROWS:
        a, b = t.rows or (0, 0)
        ok = bool(shapes[0]) and 0 <= a < b <= shapes[0][0] and (b - a) * math.prod(shapes[0][1:]) == numel \
            and tuple(shapes[0][1:]) == tuple(t.shape[1:])
    elif t.op is Op.CONCAT_ROWS:
        ok = all(s[1:] == t.shape[1:] for s in shapes) and sum(s[0] for s in shapes) == t.shape[0]
    else:
        ok = len(shapes[0]) == 2 and t.shape == (shapes[0][1], shapes[0][0])
    if not ok:
        raise ParseError(f"{t.key!r} ({t.op.value}) expects shape {t.shape} but the source "
                         f"{list(t.sources)} has shape {shapes if len(shapes) > 1 else shapes[0]}")


def _producer(t: Target, srcs: list[Located]) -> Callable[[], Iterator[memoryview]]:
    bufs = [_readable(s) for s in srcs]
    if t.op in (Op.COPY, Op.RESHAPE):
        return lambda: row_chunks(srcs[0].ref, bufs[0])
    if t.op is Op.ROWS:
        return lambda: row_chunks(srcs[0].ref, bufs[0], *t.rows)
    if t.op is Op.CONCAT_ROWS:
        return lambda: (piece for s, b in zip(srcs, bufs) for piece in row_chunks(s.ref, b))
    return lambda: transpose_chunks(srcs[0].ref, bufs[0])


def _readable(s: Located):
    """Where a source's bytes are read from: the open file with ``pread`` (never its memory map, whose
    pages kill the process with SIGBUS if the file shrinks), or the buffer when there is no file."""
    return FileBytes(s.fd, s.path) if s.fd is not None else s.buf


def shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Split in layout order so that no shard passes ``max_bytes`` (a bigger tensor gets its own)."""
    groups: list[list[OutTensor]] = [[]]
    size = 0
    for t in layout(tensors):
        if groups[-1] and size + t.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    return groups


def write_weights(folder: Path, stem: str, tensors: list[OutTensor], *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  metadata: dict[str, str] | None = None, progress: Callable[[int], None] | None = None,
                  verify: bool = True) -> list[str]:
    """``stem.safetensors``, or numbered shards plus ``stem.safetensors.index.json`` as diffusers writes."""
    groups = shards(tensors, max_shard_bytes)
    names = [f"{stem}.safetensors"] if len(groups) == 1 else \
        [f"{stem}-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map: dict[str, str] = {}
    for name, group in zip(names, groups):
        write_safetensors(folder / name, group, metadata, progress, verify=verify)  # checked as it is written
        weight_map.update({t.name: name for t in group})
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                 "weight_map": dict(sorted(weight_map.items()))}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names


def component_tensors(plan: Plan, component: str, sources: dict[str, Located], cast: DType | None) -> list[OutTensor]:
    return [out_tensor(t, sources, cast) for t in plan.targets if t.component == component]
