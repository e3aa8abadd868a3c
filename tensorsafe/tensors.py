"""Tensor references: dtype, shape, strides and where the bytes lie, never the bytes themselves."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str            # safetensors spelling: F32, BF16, ...
    itemsize: int
    torch: str           # torch attribute name: float32, bfloat16, ...
    numpy: str | None    # numpy dtype string, None where numpy has no such type

    def __str__(self) -> str:
        return self.name


DTYPES: dict[str, DType] = {d.name: d for d in [
    DType("F64", 8, "float64", "<f8"), DType("F32", 4, "float32", "<f4"), DType("F16", 2, "float16", "<f2"),
    DType("BF16", 2, "bfloat16", None), DType("I64", 8, "int64", "<i8"), DType("I32", 4, "int32", "<i4"),
    DType("I16", 2, "int16", "<i2"), DType("I8", 1, "int8", "i1"), DType("U8", 1, "uint8", "u1"),
    DType("U16", 2, "uint16", "<u2"), DType("U32", 4, "uint32", "<u4"), DType("U64", 8, "uint64", "<u8"),
    DType("BOOL", 1, "bool", "?"), DType("C64", 8, "complex64", "<c8"),
    DType("F8_E4M3", 1, "float8_e4m3fn", None), DType("F8_E5M2", 1, "float8_e5m2", None),
    DType("F8_E4M3FNUZ", 1, "float8_e4m3fnuz", None), DType("F8_E5M2FNUZ", 1, "float8_e5m2fnuz", None),
    DType("F8_E8M0", 1, "float8_e8m0fnu", None),
]}
C128 = DType("C128", 16, "complex128", "<c16")  # torch has it, safetensors does not
BY_TORCH_NAME: dict[str, DType] = {d.torch: d for d in [*DTYPES.values(), C128]}
BY_TORCH_NAME.update({"float": DTYPES["F32"], "double": DTYPES["F64"], "half": DTYPES["F16"],
                      "long": DTYPES["I64"], "int": DTYPES["I32"], "short": DTYPES["I16"],
                      "cfloat": DTYPES["C64"], "cdouble": C128})
BY_STORAGE_NAME: dict[str, DType] = {
    "DoubleStorage": DTYPES["F64"], "FloatStorage": DTYPES["F32"], "HalfStorage": DTYPES["F16"],
    "BFloat16Storage": DTYPES["BF16"], "LongStorage": DTYPES["I64"], "IntStorage": DTYPES["I32"],
    "ShortStorage": DTYPES["I16"], "CharStorage": DTYPES["I8"], "ByteStorage": DTYPES["U8"],
    "BoolStorage": DTYPES["BOOL"], "ComplexFloatStorage": DTYPES["C64"], "ComplexDoubleStorage": C128,
}


SUB_BYTE_BITS: dict[str, int] = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
"""safetensors' packed sub-byte floats (MXFP4 E2M1, MXFP6; since 0.6.0): known to the format, not read as tensors."""
DTYPE_BITS: dict[str, int] = {**{name: d.itemsize * 8 for name, d in DTYPES.items()}, **SUB_BYTE_BITS}
"""Every safetensors dtype and its size in bits (case-sensitive; anything else is ST-F11)."""
FLOAT_DTYPES: frozenset[str] = frozenset({"F64", "F32", "F16", "BF16"} | {n for n in DTYPES if n.startswith("F8_")})
"""Real floating dtypes (complex and sub-byte ones excluded)."""
STORAGE_ELEMENT_SIZE: dict[str, int] = {
    **{name: d.itemsize for name, d in BY_STORAGE_NAME.items()},
    "QInt8Storage": 1, "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}
"""Element sizes of torch storage types by the name a pickle uses (quantized ones included: the scanner
sizes their bytes; the reader refuses them)."""


@dataclass(frozen=True)
class StorageRef:
    """A storage's bytes: ``nbytes`` at ``offset`` in the file (``member`` names its zip member)."""

    key: str
    offset: int
    nbytes: int
    member: str | None = None
    compressed: bool = False


@dataclass(frozen=True)
class TensorRef:
    dtype: DType
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int   # in elements
    storage: StorageRef

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, step in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and step != expected:
                return False
            expected *= size
        return True

    @property
    def byte_offset(self) -> int:
        """Offset of element 0 in the file."""
        return self.storage.offset + self.storage_offset * self.dtype.itemsize

    def span_bytes(self) -> int:
        """Bytes from element 0 to one past the furthest element the strides reach."""
        if self.numel == 0:
            return 0
        last = sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        return (last + 1) * self.dtype.itemsize


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))
