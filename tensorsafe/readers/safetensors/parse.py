"""Header text -> :class:`~.model.Header`, with the reference's first JSON-level error (F05-F13).

Two readers: the canonical form (:mod:`.canonical`) for headers laid out as the writer lays them
out, else the exact serde mirror (:mod:`.serde_reader`, with ``json``'s C scanner for the values
it may take), so a refusal is always reported in the reference's order.
"""
from __future__ import annotations

from tensorsafe.readers.safetensors import canonical
from tensorsafe.readers.safetensors.entries import METADATA_KEY, TensorReader
from tensorsafe.readers.safetensors.json_values import Obj
from tensorsafe.readers.safetensors.layout import RawHeader
from tensorsafe.readers.safetensors.model import Header, HeaderFormatError, Issue
from tensorsafe.readers.safetensors.serde_reader import JSON_WHITESPACE, SerdeReader, TopLevel
from tensorsafe.readers.safetensors.structure import walk
from tensorsafe.readers.safetensors.table import TensorTable


def parse_header(raw: RawHeader, *, accelerate: bool = True) -> Header:
    """The header as the reference reads it; raises :class:`HeaderFormatError` for F05-F13.

    ``accelerate=False`` skips the canonical reader and the C scanner (tests compare the two)."""
    fast = canonical.read(raw.text, raw.data) if accelerate else None
    if fast is not None:
        depth = 3 if fast.table.names else 2 if fast.metadata is not None else 1
        return Header(raw.length, raw.file_size, fast.table, fast.metadata, max_depth=depth,
                      leading_whitespace=fast.leading_whitespace, trailing_padding=fast.trailing_padding)
    reader = SerdeReader(raw.text, accelerate=accelerate)
    top = reader.read_top()
    differentials = []
    if reader.duplicate_keys:  # rare: walk the tree to say where
        shape = walk(_as_document(top))
        differentials = _duplicates(shape.duplicate, shape.duplicate_key)
    header = _typed(raw, top, differentials)
    try:
        reader.finish()
    except HeaderFormatError as exc:
        exc.differentials = header.differentials
        raise
    return header


def _typed(raw: RawHeader, top: TopLevel, differentials: list[Issue]) -> Header:
    reader = TensorReader()
    try:
        tensors = reader.read(top.entries)
    except HeaderFormatError as exc:
        exc.differentials = differentials + reader.differentials
        raise
    text = raw.text
    body = text.strip(JSON_WHITESPACE)
    leading = len(text) - len(text.lstrip(JSON_WHITESPACE))
    depth = 3 if top.entries else 2 if top.metadata is not None else 1  # root, entry, shape arrays
    if reader.extra_fields:
        depth = max(depth, 2 + reader.extra_depth)
    return Header(raw.length, raw.file_size, TensorTable.from_entries(tensors),
                  None if top.metadata is None else dict(top.metadata),
                  metadata_null=top.metadata_null, extra_fields=reader.extra_fields, max_depth=depth,
                  leading_whitespace=leading, trailing_padding=text[leading + len(body):],
                  differentials=differentials + reader.differentials)


def _duplicates(where: str | None, key: str | None) -> list[Issue]:
    if where is None:
        return []
    return [Issue("ST-F08", f"{where}; the reference keeps the last value, other readers may keep the first",
                  None, key)]


def _as_document(top: TopLevel) -> Obj:
    """The top level again as one tree, for the structure walk (metadata first; order is irrelevant)."""
    doc = Obj(top.entries)
    if top.metadata is not None or top.metadata_null:
        doc.insert(0, (METADATA_KEY, top.metadata))
    return doc
