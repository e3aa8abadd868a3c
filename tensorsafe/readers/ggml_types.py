"""The ggml tensor types a GGUF file can declare: block size and bytes per block, by type id.

A GGUF tensor info names its element type by ggml id; the bytes it takes are
``elements / block_size * type_size``, and its first dimension must be a whole number of blocks.
The numbers are the reference's: ``type_traits`` in llama.cpp ``ggml/src/ggml.c`` (``blck_size``,
``type_size``), mirrored as ``GGML_QUANT_SIZES`` in ``gguf-py/gguf/constants.py`` (gguf 0.19).
Ids the reference keeps as deprecated or removed (4, 5: Q4_2 and Q4_3; 31-33: Q4_0_4_4..Q4_0_8_8;
36-38: IQ4_NL_4_4..IQ4_NL_8_8) have block size 0 there and are refused, like ids at or past
``GGML_TYPE_COUNT``: they are simply absent here.
"""
from __future__ import annotations

from typing import NamedTuple

QK_K = 256
"""Elements in one "K" super-block."""


class GGMLType(NamedTuple):
    name: str
    block_size: int
    """Elements per block (1 for plain element types)."""
    type_size: int
    """Bytes per block."""


GGML_TYPES: dict[int, GGMLType] = {t_id: GGMLType(*facts) for t_id, facts in {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 4 + 4 + 32),
    10: ("Q2_K", QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    11: ("Q3_K", QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    12: ("Q4_K", QK_K, 2 + 2 + QK_K // 2 + 12),
    13: ("Q5_K", QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    14: ("Q6_K", QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    15: ("Q8_K", QK_K, 4 + QK_K + QK_K // 8),
    16: ("IQ2_XXS", QK_K, 2 + QK_K // 4),
    17: ("IQ2_XS", QK_K, 2 + QK_K // 4 + QK_K // 32),
    18: ("IQ3_XXS", QK_K, 2 + QK_K // 4 + QK_K // 8),
    19: ("IQ1_S", QK_K, 2 + QK_K // 8 + QK_K // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    22: ("IQ2_S", QK_K, 2 + QK_K // 4 + QK_K // 16),
    23: ("IQ4_XS", QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", QK_K, 2 + 4 * 13),
    35: ("TQ2_0", QK_K, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
    40: ("NVFP4", 64, 4 + 32),
    41: ("Q1_0", 128, 2 + 16),
}.items()}
"""Every type id a current llama.cpp reads, with its layout."""

INT64_MAX = (1 << 63) - 1


def element_count_problem(ne: tuple[int, int, int, int]) -> str | None:
    """Why the reference refuses these four dimensions (read as u64, used as int64), or ``None``.

    As ``gguf_init_from_file``: every dimension is at least 0, and unless one is 0 the running
    products stay below ``INT64_MAX`` (its ``INT64_MAX / ne[k] <= ne[0] * ... * ne[k-1]`` test)."""
    if ne[0] * ne[1] * ne[2] * ne[3] < 1 << 62 and max(ne) <= INT64_MAX:
        return None  # fast path for every real tensor: no running product can reach that test
    for i, n in enumerate(ne):
        if n > INT64_MAX:
            return f"dimension {i} holds {n - (1 << 64)} elements (below 0)"
    if 0 in ne:
        return None
    total = ne[0]
    for n in ne[1:]:
        if INT64_MAX // n <= total:
            return f"shape {ne} holds {INT64_MAX:,} elements or more"
        total *= n
    return None


def tensor_nbytes(ggml_type: GGMLType, ne: tuple[int, int, int, int]) -> int:
    """Bytes of a contiguous tensor of this type and shape (``ggml_nbytes``); ``ne[0]`` is a
    whole number of blocks and no dimension is negative (checked before)."""
    if 0 in ne:
        return 0
    return ne[0] // ggml_type.block_size * ggml_type.type_size * ne[1] * ne[2] * ne[3]
