"""Facts of the safetensors format about dtypes (0.8.0): the reference's enum order and how NaN/Inf look in
each float dtype. Names and sizes come from the one dtype table, :mod:`tensorsafe.tensors`."""
from __future__ import annotations

from typing import NamedTuple

from tensorsafe.tensors import DTYPE_BITS, SUB_BYTE_BITS

DTYPE_ORDER: tuple[str, ...] = (
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
    "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
)
"""The reference's enum order, as its "unknown variant" message lists it."""

SUB_BYTE_DTYPES = frozenset(SUB_BYTE_BITS)


def element_bytes(dtype: str) -> int:
    """Alignment unit of one element: 1 for sub-byte dtypes, else the element size."""
    return max(1, DTYPE_BITS[dtype] // 8)


class FloatBits(NamedTuple):
    """Where non-finite values live in a float dtype, as masks over its unsigned integer view.

    A word is non-finite when ``word & mask == value``; with ``has_inf`` it is an infinity when
    its mantissa bits are zero too, else every non-finite word is a NaN."""

    word_bytes: int
    mask: int
    value: int
    mantissa: int
    has_inf: bool


FLOAT_BITS: dict[str, FloatBits] = {
    "F16": FloatBits(2, 0x7C00, 0x7C00, 0x03FF, True),
    "BF16": FloatBits(2, 0x7F80, 0x7F80, 0x007F, True),
    "F32": FloatBits(4, 0x7F80_0000, 0x7F80_0000, 0x007F_FFFF, True),
    "C64": FloatBits(4, 0x7F80_0000, 0x7F80_0000, 0x007F_FFFF, True),  # two F32 words per element
    "F64": FloatBits(8, 0x7FF0_0000_0000_0000, 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF, True),
    "F8_E5M2": FloatBits(1, 0x7C, 0x7C, 0x03, True),       # IEEE-like: Inf and NaN
    "F8_E4M3": FloatBits(1, 0x7F, 0x7F, 0x00, False),      # "fn": S.1111.111 is NaN, no Inf
    "F8_E4M3FNUZ": FloatBits(1, 0xFF, 0x80, 0x00, False),  # "fnuz": only 0x80 (negative zero) is NaN
    "F8_E5M2FNUZ": FloatBits(1, 0xFF, 0x80, 0x00, False),
    "F8_E8M0": FloatBits(1, 0xFF, 0xFF, 0x00, False),      # exponent only; 0xFF is NaN
}
"""Float dtypes the deep check counts NaN/Inf in (C64 per F32 component). F4 and F6 encode neither."""
