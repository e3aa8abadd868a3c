"""Typed reading of a parsed header, as serde reads ``HashMetadata`` and ``TensorInfo``.

Phase 2 of the reference's reading (phase 1 is :mod:`.serde_reader`): every entry other than
``__metadata__`` becomes a tensor, in text order, with serde's
``ContentDeserializer`` rules: ST-F08 (a field twice), ST-F10 (entry shape, missing fields),
ST-F11 (dtype), ST-F12 (shape), ST-F13 (data_offsets). Where serde lets a form through that the
format forbids (array-form entries, map-form dtypes), a differential is recorded, not raised.
"""
from __future__ import annotations

from tensorsafe.readers.safetensors.dtypes import DTYPE_BITS, DTYPE_ORDER
from tensorsafe.readers.safetensors.json_values import Obj, describe
from tensorsafe.readers.safetensors.model import Entry, HeaderFormatError, Issue
from tensorsafe.readers.safetensors.structure import nesting

TENSOR_FIELDS = ("dtype", "shape", "data_offsets")
METADATA_KEY = "__metadata__"


class TensorReader:
    """Phase 2: the buffered entries become tensors; the last of a repeated name wins, like the reference."""

    def __init__(self) -> None:
        self.extra_fields: list[tuple[str, str]] = []
        self.extra_depth = 0
        """Deepest nesting inside an unknown field's value (0: a scalar)."""
        self.map_dtype = False
        self.differentials: list[Issue] = []

    def read(self, entries: list[tuple[str, object]]) -> list[Entry]:
        tensors: dict[str, Entry] = {}
        for name, value in entries:
            tensors[name] = self.entry(name, value)
        return list(tensors.values())

    def entry(self, name: str, value: object) -> Entry:
        if type(value) is Obj:
            return self._from_map(name, value)
        if type(value) is list:
            return self._from_sequence(name, value)
        raise _error("ST-F10", name, f"invalid type: {describe(value)}, expected struct TensorInfo")

    def _from_map(self, name: str, value: Obj) -> Entry:
        fields: dict[str, object] = {}
        for key, item in value:
            if key in _FIELD_READERS:
                if key in fields:
                    raise _error("ST-F08", name, f"duplicate field `{key}`", key)
                fields[key] = _FIELD_READERS[key](self, name, item)
            else:
                self.extra_fields.append((name, key))
                self.extra_depth = max(self.extra_depth, nesting(item))
        for key in TENSOR_FIELDS:
            if key not in fields:
                raise _error("ST-F10", name, f"missing field `{key}`", key)
        begin, end = fields["data_offsets"]  # type: ignore[misc]
        return (name, fields["dtype"], fields["shape"], begin, end)  # type: ignore[return-value]

    def _from_sequence(self, name: str, value: list) -> Entry:
        fields = []
        for i, key in enumerate(TENSOR_FIELDS):
            if i >= len(value):
                raise _error("ST-F10", name, f"invalid length {len(value)}, expected struct TensorInfo with 3 elements")
            fields.append(_FIELD_READERS[key](self, name, value[i]))
        if len(value) > 3:
            raise _error("ST-F10", name, f"invalid length {len(value)}, expected 3 elements in sequence")
        self.differentials.append(Issue("ST-F10", f"tensor {name!r} is a JSON array, not an object; the reference "
                                        "accepts it (serde's sequence form) but JSON readers expecting an object "
                                        "do not", None, name))
        dtype, shape, (begin, end) = fields
        return (name, dtype, shape, begin, end)

    def dtype(self, name: str, value: object) -> str:
        if type(value) is str:
            return _variant(name, value)
        if type(value) is Obj:
            if len(value) != 1:
                raise _error("ST-F11", name, "invalid value: map, expected map with a single key", "dtype")
            variant, unit = value[0]
            dtype = _variant(name, variant)
            if unit is not None:
                raise _error("ST-F11", name, f"invalid type: {describe(unit)}, expected unit", "dtype")
            self.map_dtype = True
            self.differentials.append(Issue("ST-F11", f"tensor {name!r} gives its dtype as the map "
                                            f'{{"{dtype}": null}}; the reference accepts it (serde\'s enum map '
                                            "form) but other readers do not", None, name))
            return dtype
        raise _error("ST-F11", name, f"invalid type: {describe(value)}, expected string or map", "dtype")

    def shape(self, name: str, value: object) -> tuple[int, ...]:
        if type(value) is not list:
            raise _error("ST-F12", name, f"invalid type: {describe(value)}, expected a sequence", "shape")
        return tuple(_usize("ST-F12", name, "shape", d) for d in value)

    def offsets(self, name: str, value: object) -> tuple[int, int]:
        if type(value) is not list:
            raise _error("ST-F13", name, f"invalid type: {describe(value)}, expected a tuple of size 2",
                         "data_offsets")
        pair = []
        for i in range(2):
            if i >= len(value):
                raise _error("ST-F13", name, f"invalid length {len(value)}, expected a tuple of size 2",
                             "data_offsets")
            pair.append(_usize("ST-F13", name, "data_offsets", value[i]))
        if len(value) > 2:
            raise _error("ST-F13", name, f"invalid length {len(value)}, expected 2 elements in sequence",
                         "data_offsets")
        return pair[0], pair[1]


_FIELD_READERS = {"dtype": TensorReader.dtype, "shape": TensorReader.shape, "data_offsets": TensorReader.offsets}


def _variant(name: str, value: str) -> str:
    if value not in DTYPE_BITS:
        names = ", ".join(f"`{d}`" for d in DTYPE_ORDER)
        raise _error("ST-F11", name, f"unknown variant `{value}`, expected one of {names}", value)
    return value


def _usize(rule: str, name: str, field: str, value: object) -> int:
    if type(value) is int:
        if value >= 0:
            return value
        raise _error(rule, name, f"invalid value: integer `{value}`, expected usize", field)
    raise _error(rule, name, f"invalid type: {describe(value)}, expected usize", field)


def _error(rule: str, name: str, message: str, trigger: str | None = None) -> HeaderFormatError:
    return HeaderFormatError(rule, f"tensor {name!r}: {message}", trigger=trigger or name)
