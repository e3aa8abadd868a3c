"""Build safetensors bytes in tests: valid layouts and every way of breaking them."""
from __future__ import annotations

import json
import random
import struct

from tensorsafe.readers.safetensors.dtypes import DTYPE_BITS


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BITS[dtype] // 8


def entries(tensors: list[tuple[str, str, tuple[int, ...]]], *, start: int = 0) -> tuple[dict, int]:
    """Tensor entries laid out contiguously in list order; returns (entries, data size)."""
    out, offset = {}, start
    for name, dtype, shape in tensors:
        size = nbytes(dtype, shape)
        out[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    return out, offset


def header_text(header: dict | str | bytes, *, align: int = 8, pad: bytes = b" ") -> bytes:
    """A header as the writer emits it: compact JSON, padded to ``align`` bytes with ``pad``."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    raw = header.encode("utf-8") if isinstance(header, str) else header
    if align > 1:
        raw += pad * ((-len(raw)) % align)
    return raw


def build(header: dict | str | bytes, data: bytes | int = b"", *, length: int | None = None, align: int = 8,
          pad: bytes = b" ") -> bytes:
    """8-byte length + header + data (``data`` as an int: that many zero bytes)."""
    raw = header_text(header, align=align, pad=pad)
    body = bytes(data) if isinstance(data, int) else data
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def model(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None = None, **kwargs) -> bytes:
    """A valid file holding zero-filled tensors."""
    header, size = entries(tensors)
    if metadata is not None:
        header = {"__metadata__": metadata, **header}
    return build(header, size, **kwargs)


def edit_randomly(text: str, rng: random.Random, edits: int, inserted: str = '[]{},:"0123456789') -> str:
    """``edits`` random byte-level edits of a header text: a deletion, an insertion (from ``inserted``),
    a copied run, or a replacement by a JSON punctuation character or '0'."""
    for _ in range(edits):
        i = rng.randrange(len(text))
        op = rng.randrange(4)
        if op == 0:
            text = text[:i] + text[i + 1:]
        elif op == 1:
            text = text[:i] + rng.choice(inserted) + text[i:]
        elif op == 2:
            j = rng.randrange(len(text))
            text = text[:i] + text[j:j + rng.randint(1, 12)] + text[i:]
        else:
            text = text[:i] + rng.choice('[]{},:"0') + text[i + 1:]
    return text
