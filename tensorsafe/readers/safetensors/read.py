"""A safetensors header read for use: every format rule (ST-F01 to ST-F18), then tensor references.

The validator, the scanner, ``inspect``, the converter, the loader and the pipeline all read
headers here, so none of them can read the same bytes differently from another.
"""
from __future__ import annotations

from tensorsafe.errors import ParseError
from tensorsafe.readers.safetensors.layout import ByteSource, read_header
from tensorsafe.readers.safetensors.model import Header, HeaderFormatError
from tensorsafe.readers.safetensors.offsets import check_layout
from tensorsafe.readers.safetensors.parse import parse_header
from tensorsafe.tensors import DTYPES, StorageRef, TensorRef, contiguous_strides


def read_checked_header(src: ByteSource) -> Header:
    """The header, through every format rule (ST-F01 to ST-F18); raises :class:`HeaderFormatError`."""
    header = parse_header(read_header(src))
    try:
        check_layout(header)
    except HeaderFormatError as exc:
        exc.differentials = header.differentials
        raise
    return header


def read_unambiguous_header(src: ByteSource) -> Header:
    """The header, through every format rule, also those the reference lets through (ST-F08 a
    repeated key, ST-F10 an array-form entry, ST-F11 a map-form dtype): readers disagree on what
    such a header says, so nothing that shows or reads its tensors may take one reader's side.
    Raises :class:`HeaderFormatError`."""
    header = read_checked_header(src)
    if header.differentials:
        first = header.differentials[0]
        raise HeaderFormatError(first.rule_id, first.message, offset=first.offset, trigger=first.trigger)
    return header


def read_tensor_refs(src: ByteSource) -> tuple[Header, dict[str, TensorRef]]:
    """The header and a reference per tensor (absolute file offsets), for a reader of the data.

    Raises :class:`HeaderFormatError` for a format error, also one the reference lets through
    (:func:`read_unambiguous_header`), and :class:`ParseError` for a dtype tensorsafe cannot turn
    into an array (the sub-byte floats)."""
    header = read_unambiguous_header(src)
    refs: dict[str, TensorRef] = {}
    for name, dtype_name, shape, begin, end in header.tensors:
        dtype = DTYPES.get(dtype_name)
        if dtype is None:
            raise ParseError(f"tensor {name!r} has dtype {dtype_name}, which tensorsafe cannot read", location=name)
        storage = StorageRef(name, header.data_start + begin, end - begin)
        refs[name] = TensorRef(dtype, shape, contiguous_strides(shape), 0, storage)
    return header, refs


__all__ = ["read_checked_header", "read_tensor_refs", "read_unambiguous_header"]
