"""The canonical fast path: headers laid out exactly as safetensors' own writer lays them out.

Writers emit ``{"__metadata__":{...},"name":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},...}``
(compact serde_json, metadata first), padded with spaces. ``msgspec`` (a compiled JSON parser)
decodes that text in one pass straight into typed values: known dtypes, non-negative integers,
the three fields, string metadata. It is more lenient than serde_json in places (repeated keys,
``-0``, integers past 2^64, whitespace, missing or unknown fields here), so the decoded values
are written back with ``msgspec``'s encoder, whose output is byte for byte serde_json's compact
form, and compared with the text: only a text that *is* the canonical writing of the values it
decodes to is accepted. Such a text has no repeated key, no whitespace, no escape other than
serde's own, no number written two ways and no nesting beyond depth 3, so none of serde_json's
differences from other JSON readers can occur in it, and it reads exactly as the exact reader
(:mod:`.serde_reader`) reads it (property tests check this). Anything else returns ``None`` and
the exact reader takes it. Nothing of the text is copied: big headers are read in place.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Literal, NamedTuple

import msgspec

from tensorsafe.readers.safetensors.table import TensorTable
from tensorsafe.tensors import DTYPE_BITS

_WS = b" \t\n\r"
_METADATA_KEY = b'{"__metadata__":'

_Size = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
"""A usize the fast path vouches for. msgspec reads larger integers exactly (serde refuses past
2^64) and bounds only up to 2^63: the few headers with sizes in [2^63, 2^64) take the exact reader."""


class _Entry(msgspec.Struct, gc=False):
    """A top-level value as the writer writes a tensor, fields in the writer's order. The metadata
    object decodes to one too (its string values skipped: it is decoded on its own), so one pass
    reads the whole text; a value with a missing or unknown field decodes with a default or
    without it, and its re-encoding then differs from the text."""

    # Defaults outside the types: a ``null`` in the text is refused, a missing field encodes as ``null``.
    dtype: Literal[tuple(DTYPE_BITS)] = None  # type: ignore[valid-type, assignment]
    shape: tuple[_Size, ...] = None  # type: ignore[assignment]
    data_offsets: tuple[_Size, _Size] = None  # type: ignore[assignment]


_ENTRIES = msgspec.json.Decoder(dict[str, _Entry])
_METADATA_MAP = msgspec.json.Decoder(dict[str, str])
_ENCODER = msgspec.json.Encoder()
_DTYPE, _SHAPE, _OFFSETS = attrgetter("dtype"), attrgetter("shape"), attrgetter("data_offsets")
_COMMA = ord(",")


class Canonical(NamedTuple):
    table: TensorTable
    metadata: dict[str, str] | None
    leading_whitespace: int
    trailing_padding: str


def read(text: str, data: bytes | None = None) -> Canonical | None:
    """The header's tensors and metadata, or ``None`` when the text is not in the canonical form.

    ``data``: the same header as bytes (saves encoding ``text`` again)."""
    raw = data if data is not None else text.encode("utf-8")
    span = _object_span(raw)
    if span is None:
        return None
    start, stop = span
    try:
        entries = _ENTRIES.decode(raw)  # around the object only JSON whitespace (checked): no slice needed
        has_metadata = entries.pop("__metadata__", None) is not None
        tensors_at = _tensors_written_at(raw, start, stop, _ENCODER.encode(entries), has_metadata)
        if tensors_at < 0:
            return None
        metadata = _metadata(raw, start + len(_METADATA_KEY), tensors_at) if has_metadata else None
        if has_metadata and metadata is None:
            return None
    except (msgspec.MsgspecError, UnicodeError, RecursionError):  # RecursionError: deep nesting, skipped
        return None
    return Canonical(_table(entries), metadata, start, raw[stop:].decode("ascii"))


def _object_span(raw: bytes) -> tuple[int, int] | None:
    """[start, stop) of the object: JSON whitespace before it, only JSON whitespace after it."""
    start = len(raw) - len(raw.lstrip(_WS))
    stop = raw.rfind(b"}") + 1
    if stop <= start or raw[start] != ord("{") or raw[stop:].strip(_WS):
        return None
    return start, stop


def _tensors_written_at(raw: bytes, start: int, stop: int, encoded: bytes, metadata: bool) -> int:
    """Where the tensors, written as ``encoded`` (one object), end the text: at the ``{`` of the
    object without metadata; else at the ``,`` after the metadata (the object's ``{`` stands for
    it), or at the closing ``}`` when no tensor follows. -1 when the text is written otherwise."""
    if not metadata:
        return start if stop - start == len(encoded) and raw.startswith(encoded, start) else -1
    if not raw.startswith(_METADATA_KEY, start):
        return -1
    if encoded == b"{}":
        return stop - 1
    at = stop - len(encoded)
    if at <= start + len(_METADATA_KEY):  # the text is shorter than its canonical writing
        return -1
    return at if raw[at] == _COMMA and raw.startswith(memoryview(encoded)[1:], at + 1) else -1


def _metadata(raw: bytes, begin: int, end: int) -> dict[str, str] | None:
    """``raw[begin:end]`` as the metadata map, when it is written canonically."""
    metadata = _METADATA_MAP.decode(memoryview(raw)[begin:end])
    encoded = _ENCODER.encode(metadata)
    return metadata if end - begin == len(encoded) and raw.startswith(encoded, begin) else None


def _table(entries: dict[str, _Entry]) -> TensorTable:
    """The decoded entries as columns: one C-level pass per column, the offsets split by ``zip``."""
    tensors = entries.values()
    begins, ends = zip(*map(_OFFSETS, tensors)) if tensors else ((), ())
    return TensorTable(tuple(entries), tuple(map(_DTYPE, tensors)), tuple(map(_SHAPE, tensors)), begins, ends)
