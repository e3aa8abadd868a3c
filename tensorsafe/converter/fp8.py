"""8-bit floats decoded without torch: one 256-entry float32 table per format, indexed by the byte.

numpy has no fp8 types, and an 8-bit format has only 256 values, so a lookup is exact and fast.
The formats are those safetensors names (``F8_E4M3`` is OCP/torch ``float8_e4m3fn``; the ``FNUZ``
ones have no negative zero and one NaN, ``0x80``; ``F8_E8M0`` is an unsigned power of two). Every
finite value of each is exactly a float32, so a cast to fp32 is exact and one to fp16/bf16 rounds once.
"""
from __future__ import annotations

import math

import numpy as np

# name -> (exponent bits, mantissa bits, bias, how the top codes are spent)
FORMATS = {
    "F8_E4M3": (4, 3, 7, "fn"),        # no infinities; S.1111.111 is NaN
    "F8_E5M2": (5, 2, 15, "ieee"),     # exponent 11111: infinity (mantissa 0) or NaN
    "F8_E4M3FNUZ": (4, 3, 8, "fnuz"),  # no infinities, no -0; 0x80 is the one NaN
    "F8_E5M2FNUZ": (5, 2, 16, "fnuz"),
    "F8_E8M0": (8, 0, 127, "e8m0"),    # unsigned 2**(e - 127); 0xFF is NaN
}


def _value(byte: int, exp_bits: int, man_bits: int, bias: int, kind: str) -> float:
    if kind == "e8m0":
        return float("nan") if byte == 0xFF else 2.0 ** (byte - bias)
    sign = -1.0 if byte >> 7 else 1.0
    e = (byte >> man_bits) & ((1 << exp_bits) - 1)
    m = byte & ((1 << man_bits) - 1)
    top = (1 << exp_bits) - 1
    if kind == "fnuz" and byte == 0x80:
        return float("nan")
    if kind == "fn" and e == top and m == (1 << man_bits) - 1:
        return math.copysign(float("nan"), sign)
    if kind == "ieee" and e == top:
        return sign * float("inf") if m == 0 else math.copysign(float("nan"), sign)
    if e == 0:
        return sign * (m / (1 << man_bits)) * 2.0 ** (1 - bias)
    return sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)


def table(name: str) -> np.ndarray:
    """The float32 value of each of the 256 bytes of format ``name``."""
    if name not in _TABLES:
        _TABLES[name] = np.array([_value(b, *FORMATS[name]) for b in range(256)], dtype=np.float32)
    return _TABLES[name]


_TABLES: dict[str, np.ndarray] = {}


def decode(raw: memoryview | bytes, name: str) -> np.ndarray:
    """The bytes of an fp8 tensor as float32 values."""
    return table(name)[np.frombuffer(raw, dtype=np.uint8)]
