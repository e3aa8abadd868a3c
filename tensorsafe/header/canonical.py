"""The canonical fast path: headers laid out exactly as safetensors' own writer lays them out.

Written by hand on purpose (speed): ``json.loads`` plus Python objects for every entry costs
more than the reference's whole ``safe_open`` on a 1,000-tensor header. Writers emit
``{"__metadata__":{...},"name":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},...}``
padded with spaces. With no backslash and no control character among the entries, every ``"``
is structural, so one ``split('"')`` cuts the entries into fixed fields; list counts check the
literal fields and two anchored patterns check the numbers, all in C. Anything else returns
``None`` and the general readers take the text. On the text this module accepts it yields exactly
what the general readers yield (a property test checks this): the form has no escapes in names,
no repeated names, only known dtypes, integers below 10^19 and no nesting beyond depth 3, so none
of serde_json's differences from JSON can occur in it.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple

import numpy as np

from tensorsafe.header.dtypes import DTYPE_BITS
from tensorsafe.header.strict_json import may_hold_surrogates
from tensorsafe.header.table import VECTOR_MIN, ShapeColumns, TensorTable

_WS = " \t\n\r"
_INT = r"(?:0|[1-9][0-9]{0,18}+)"
# Fields are joined with '"', which cannot occur inside one, so each must hold exactly one token.
# Possessive quantifiers: the grammar never needs to backtrack, and they halve the matching time.
_SHAPES = re.compile(r'(?::\[(?:' + _INT + r"(?:," + _INT + r')*+)?+\],")*+')
_OFFSETS = re.compile(r'(?::\[' + _INT + "," + _INT + r'\]\},")*+:\[' + _INT + "," + _INT + r'\]\}"')
_STRING = r'"(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+"'
_METADATA = re.compile(r'"__metadata__":(\{(?:' + _STRING + ":" + _STRING + "(?:," + _STRING + ":" + _STRING
                       + r")*)?\})")
_FIELDS = 10
"""Quote-delimited pieces per entry: name, ':{', 'dtype', ':', dtype, ',', 'shape', shape, 'data_offsets', offsets."""
_LITERALS = ((2, ":{"), (3, "dtype"), (4, ":"), (6, ","), (7, "shape"), (9, "data_offsets"))
_NUMBER_PUNCTUATION = str.maketrans(':[]}"', "     ")
_CONTROL_BYTES = bytes(range(0x20))
_WS_BYTES = _WS.encode()
_NUMPY_MIN_BYTES = 8192
_PAIRS = json.JSONDecoder(object_pairs_hook=list)


class Canonical(NamedTuple):
    table: TensorTable
    metadata: dict[str, str] | None
    leading_whitespace: int
    trailing_padding: str


def read(text: str, data: bytes | None = None) -> Canonical | None:
    """The header's tensors and metadata, or ``None`` when the text is not in the canonical form.

    ``data``: the same header as bytes (saves encoding ``text`` again)."""
    body = text.strip(_WS)
    if len(body) < 2 or body[0] != "{" or body[-1] != "}" or _has_control(body, data):
        return None
    leading = len(text) - len(text.lstrip(_WS))
    metadata: dict[str, str] | None = None
    if body.startswith('"__metadata__":', 1):
        m = _METADATA.match(body, 1, len(body) - 1)
        if m is None:
            return None
        metadata = _metadata(m.group(1))
        if metadata is None:
            return None
        entries = body[m.end():-1]
    else:
        entries = "," + body[1:-1] if len(body) > 2 else ""
    table = _entries(entries)
    if table is None:
        return None
    return Canonical(table, metadata, leading, text[leading + len(body):])


def _entries(text: str) -> TensorTable | None:
    """``,"name":{...},"name":{...}`` (or nothing) as a table."""
    if not text:
        return TensorTable.from_entries([])
    if text[0] != "," or "\\" in text:
        return None
    parts = text.split('"')
    n, extra = divmod(len(parts) - 1, _FIELDS)
    if extra or not n or parts[0] != ",":
        return None
    for index, literal in _LITERALS:
        if parts[index::_FIELDS].count(literal) != n:
            return None
    names, dtypes = tuple(parts[1::_FIELDS]), tuple(parts[5::_FIELDS])
    if not DTYPE_BITS.keys() >= set(dtypes) or len(set(names)) != n or "__metadata__" in names:
        return None
    shapes, offsets = '"'.join(parts[8::_FIELDS]) + '"', '"'.join(parts[10::_FIELDS]) + '"'
    if n >= VECTOR_MIN:
        return _columns(names, dtypes, shapes, offsets, n)
    if _SHAPES.fullmatch(shapes) is None or _OFFSETS.fullmatch(offsets) is None:
        return None
    ints = list(map(int, offsets.translate(_NUMBER_PUNCTUATION).split(",")))
    return TensorTable.from_entries([
        (name, dtype, tuple(map(int, shape.split(","))) if shape else (), begin, end)
        for name, dtype, shape, begin, end in zip(names, dtypes, _shape_texts(shapes), ints[0::2], ints[1::2])])


def _shape_texts(shapes: str) -> list[str]:
    """``':[2,3],":[],"'`` -> ``["2,3", ""]``."""
    return shapes[2:-3].split('],":[')


def _columns(names: tuple[str, ...], dtypes: tuple[str, ...], shapes: str, offsets: str, n: int) -> TensorTable | None:
    """Big headers: the number fields checked by the patterns, then parsed into columns with numpy."""
    if _SHAPES.fullmatch(shapes) is None or _OFFSETS.fullmatch(offsets) is None:
        return None
    pairs = np.fromstring(offsets.translate(_NUMBER_PUNCTUATION), np.uint64, sep=",")
    dims_text = shapes.replace(':[],"', "").translate(_NUMBER_PUNCTUATION).rstrip(" ,")
    dims = np.fromstring(dims_text, np.uint64, sep=",") if dims_text else np.zeros(0, np.uint64)
    return TensorTable(names, dtypes, pairs[0::2], pairs[1::2], ShapeColumns(dims, _ranks(shapes)),
                       lambda: tuple(_shape_texts(shapes)))


def _ranks(shapes: str) -> np.ndarray:
    """Dimensions per token of a checked shapes field (``':[2,3],"'`` has 2, ``':[],"'`` 0)."""
    a = np.frombuffer(shapes.encode("ascii"), np.uint8)
    ends = np.flatnonzero(a == ord('"'))
    commas = np.diff(np.cumsum(a == ord(","))[ends], prepend=0)  # the one after ']' included
    lengths = np.diff(ends, prepend=-1)
    return commas - 1 + (lengths > 5)


def _has_control(body: str, data: bytes | None) -> bool:
    """Any character below 0x20 inside the object (no JSON whitespace in the canonical form; in
    strings they are refused): a byte deletion for small headers, one numpy pass for big ones."""
    raw = (data if data is not None else body.encode("utf-8")).strip(_WS_BYTES)
    if len(raw) < _NUMPY_MIN_BYTES:
        return len(raw.translate(None, _CONTROL_BYTES)) != len(raw)
    return bool((np.frombuffer(raw, np.uint8) < 0x20).any())


def _metadata(obj_text: str) -> dict[str, str] | None:
    """The metadata object (strings only, by the pattern); ``None`` for the general readers."""
    if may_hold_surrogates(obj_text):
        return None
    pairs = _PAIRS.decode(obj_text)
    metadata = dict(pairs)
    return metadata if len(metadata) == len(pairs) else None
