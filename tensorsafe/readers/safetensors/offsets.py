"""Rules ST-F14 to ST-F18: the tensors' byte ranges against their shapes and the file size.

The reference's order: tensors sorted by (begin, end); for each, ST-F16 (contiguous from 0, no
backwards range), ST-F14 (checked size arithmetic, left to right), ST-F15 (sub-byte dtypes fill
whole bytes), ST-F17 (the range holds exactly the tensor); then ST-F18 (the last end is the end of
the file). Only the header and the file size are needed: no data is read.
"""
from __future__ import annotations

from operator import sub

from tensorsafe.tensors import DTYPE_BITS, SUB_BYTE_BITS
from tensorsafe.readers.safetensors.model import Entry, Header, HeaderFormatError

U64_MAX = (1 << 64) - 1
SUB_BYTE_DTYPES = frozenset(SUB_BYTE_BITS)


def check_layout(header: Header) -> None:
    """Raises :class:`HeaderFormatError` for the first of F16, F14, F15, F17 (per tensor), F18."""
    if layout_clear(header):
        return
    data_start = header.data_start
    start = 0
    for tensor in sorted(header.tensors, key=_range):
        name, dtype, shape, begin, end = tensor
        if begin != start or end < begin:
            raise HeaderFormatError("ST-F16", f"invalid offset for tensor {name!r}: data_offsets [{begin}, {end}] "
                                    f"should start at {start}" if begin != start else
                                    f"invalid offset for tensor {name!r}: data_offsets [{begin}, {end}] end before "
                                    "they begin", offset=_offset(data_start, begin), trigger=name)
        start = end
        nbytes = byte_size(tensor, data_start)
        if end - begin != nbytes:
            raise HeaderFormatError("ST-F17", f"tensor {name!r}: {dtype} {list(shape)} needs {nbytes:,} bytes, "
                                    f"data_offsets [{begin}, {end}] hold {end - begin:,}",
                                    offset=_offset(data_start, begin), trigger=name)
    covered = data_start + start
    if covered != header.file_size:
        what = "the file is truncated" if covered > header.file_size else \
            f"{header.file_size - covered:,} bytes follow the last tensor"
        raise HeaderFormatError("ST-F18", f"incomplete metadata, file not fully covered: the tensors end at byte "
                                f"{covered:,} of a {header.file_size:,}-byte file ({what})",
                                offset=min(covered, header.file_size))


def layout_clear(header: Header) -> bool:
    """All of F14-F18 pass, decided over the columns; ``False`` means "run the exact check".

    Text order must already be the reference's (begin, end) order (writers write tensors in
    offset order): the first at 0, each next one starting where the one before it ends. Each
    range must hold exactly elements x element bytes (so no range runs backwards), 8 times which
    is below 2^64 bits; with no zero-sized tensor no partial product of a shape can overflow where
    the whole does not. Sub-byte dtypes (sizes in bits, ST-F15) take the exact check."""
    table = header.table
    begins, ends = table.begins, table.ends
    if not begins:
        return header.data_start == header.file_size
    if begins[0] != 0 or begins[1:] != ends[:-1] or not SUB_BYTE_DTYPES.isdisjoint(table.dtype_set):
        return False
    if list(map(sub, ends, begins)) != table.nbytes or ends[-1] > U64_MAX >> 3 or 0 in table.numel:
        return False  # (contiguous from 0 and none negative: no range is longer than the last end)
    return header.data_start + ends[-1] == header.file_size


def byte_size(tensor: Entry, data_start: int = 0) -> int:
    """Bytes the tensor needs; ST-F14 and ST-F15 as the reference computes them."""
    name, dtype, shape, begin, _ = tensor
    elements = 1
    for d in shape:
        elements *= d
        if elements > U64_MAX:
            raise HeaderFormatError("ST-F14", f"tensor {name!r}: overflow computing buffer size from shape {list(shape)}",
                                    offset=_offset(data_start, begin), trigger=name)
    bits = elements * DTYPE_BITS[dtype]
    if bits > U64_MAX:
        raise HeaderFormatError("ST-F14", f"tensor {name!r}: overflow computing buffer size from shape {list(shape)} "
                                f"and element type {dtype}", offset=_offset(data_start, begin), trigger=name)
    if bits % 8:
        raise HeaderFormatError("ST-F15", f"tensor {name!r}: {elements:,} {dtype} elements do not end at a byte "
                                "boundary", offset=_offset(data_start, begin), trigger=name)
    return bits // 8


def _range(tensor: Entry) -> tuple[int, int]:
    return tensor[3], tensor[4]


def _offset(data_start: int, begin: int) -> int | None:
    return data_start + begin if begin <= U64_MAX else None
