"""Data-only serialisations found in model repositories, identified by walking their whole encoding.

* **msgpack** (Flax ``flax_model.msgpack``): one value, a map at the top, that ends exactly at the
  end of the file. msgpack has no way to name code; Flax's reader turns its ext values into
  numpy arrays by dtype name.
* **sentencepiece** (``tokenizer.model``, ``spiece.model``): a protobuf ``ModelProto`` whose
  fields all parse to the end of the file and whose first field is a ``SentencePiece`` (piece
  text, score). Protobuf carries no code.

Hand-written on purpose: both walkers only step over lengths (no value is built, payloads are
never copied), so a multi-GB file is identified in bounded memory, and every length is checked
against the bytes left before it is followed.
"""
from __future__ import annotations

from typing import Callable

from tensorsafe.readers.blob import Span

MSGPACK_MAX_DEPTH = 64
MSGPACK_STEP = 4096
"""Values walked between deadline checks."""

# First byte -> (size of a length field or fixed payload, kind): kind "n" is a fixed payload of
# that many bytes, "len" a big-endian length of that many bytes then the payload, "ext" a length,
# a type byte, then the payload, "arr"/"map" a big-endian count of that many bytes.
_MSGPACK_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
                  0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_MSGPACK_LEN = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_MSGPACK_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_MSGPACK_COUNT = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def is_msgpack_map(span: Span, deadline_ok: Callable[[], bool] = lambda: True) -> bool:
    """One msgpack value, a map, spanning the whole of ``span``."""
    first = span.head(1)
    if not first or not (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return False
    pos, pending, steps = 0, [1], 0
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        steps += 1
        if steps % MSGPACK_STEP == 0 and not deadline_ok():
            return False
        step = _msgpack_value(span, pos)
        if step is None:
            return False
        pos, children = step
        if children:
            if len(pending) >= MSGPACK_MAX_DEPTH:
                return False
            pending.append(children)
    return pos == span.size


def _msgpack_value(span: Span, pos: int) -> tuple[int, int] | None:
    """``(end of this value's own bytes, number of child values)``, or None where it breaks."""
    head = span.read(pos, 1)
    if not head:
        return None
    b = head[0]
    if b <= 0x7F or b >= 0xE0:
        return pos + 1, 0
    if b <= 0x8F:
        return pos + 1, 2 * (b & 0x0F)
    if b <= 0x9F:
        return pos + 1, b & 0x0F
    if b <= 0xBF:
        return _within(span, pos + 1 + (b & 0x1F), 0)
    if b in _MSGPACK_FIXED:
        return _within(span, pos + 1 + _MSGPACK_FIXED[b], 0)
    if b in _MSGPACK_LEN or b in _MSGPACK_EXT:
        width = _MSGPACK_LEN.get(b) or _MSGPACK_EXT[b]
        length = _big_endian(span, pos + 1, width)
        if length is None:
            return None
        return _within(span, pos + 1 + width + (b in _MSGPACK_EXT) + length, 0)
    if b in _MSGPACK_COUNT:
        width, per_item = _MSGPACK_COUNT[b]
        count = _big_endian(span, pos + 1, width)
        if count is None:
            return None
        return pos + 1 + width, count * per_item
    return None  # 0xC1 is never used


def _big_endian(span: Span, pos: int, width: int) -> int | None:
    raw = span.read(pos, width)
    return int.from_bytes(raw, "big") if len(raw) == width else None


def _within(span: Span, end: int, children: int) -> tuple[int, int] | None:
    return (end, children) if end <= span.size else None


# -- protobuf (sentencepiece) ---------------------------------------------------------------------------
PROTOBUF_STEP = 4096
IN_MEMORY_BYTES = 64 << 20


def is_sentencepiece_model(span: Span, deadline_ok: Callable[[], bool] = lambda: True) -> bool:
    """A protobuf message spanning ``span`` whose first field is ``pieces`` (1, a SentencePiece)."""
    if span.head(1) != b"\x0a":
        return False
    if span.size <= IN_MEMORY_BYTES:  # tens of thousands of small fields: one read, not one per field
        span = Span.of_bytes(span.read(0, span.size))
    fields = _protobuf_fields(span, 0, span.size, deadline_ok)
    if not fields or fields[0] is None:
        return False
    start, end = fields[0][2:]  # field 1, length-delimited: the 0x0a tag checked above
    piece = _protobuf_fields(span, start, end, deadline_ok, limit=8)
    if not piece or piece[0] is None or piece[0][:2] != (1, 2):
        return False
    try:
        span.read(piece[0][2], piece[0][3] - piece[0][2]).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(f is not None for f in fields)


def _protobuf_fields(span: Span, pos: int, end: int, deadline_ok: Callable[[], bool],
                     limit: int | None = None) -> list[tuple[int, int, int, int] | None]:
    """``(number, wire type, payload start, payload end)`` of each field; a None last entry
    where the encoding breaks (and nothing after it)."""
    fields: list[tuple[int, int, int, int] | None] = []
    while pos < end and (limit is None or len(fields) < limit):
        if len(fields) % PROTOBUF_STEP == PROTOBUF_STEP - 1 and not deadline_ok():
            return fields + [None]
        key = _varint(span, pos, end)
        if key is None:
            return fields + [None]
        tag, pos = key
        number, wire = tag >> 3, tag & 7
        if number == 0 or number >= 1 << 29:
            return fields + [None]
        if wire == 0:
            value = _varint(span, pos, end)
            if value is None:
                return fields + [None]
            start, pos = pos, value[1]
        elif wire in (1, 5):
            start, pos = pos, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length = _varint(span, pos, end)
            if length is None:
                return fields + [None]
            start, pos = length[1], length[1] + length[0]
        else:
            return fields + [None]
        if pos > end:
            return fields + [None]
        fields.append((number, wire, start, pos))
    return fields


def _varint(span: Span, pos: int, end: int) -> tuple[int, int] | None:
    raw = span.read(pos, min(10, end - pos))
    value = 0
    for i, byte in enumerate(raw):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    return None

