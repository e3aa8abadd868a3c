"""Advisories ST-A01 to ST-A03: accepted by every reader, worth knowing, never failing."""
from __future__ import annotations

from itertools import repeat
from operator import add, mod

from tensorsafe.readers.safetensors.model import Header, Issue

WRITER_ALIGNMENT = 8
"""Writers pad the header with spaces so that N % 8 == 0 (since safetensors 0.3.0)."""
_LOADER_LIMITED = frozenset({"F4", "F6_E2M3", "F6_E3M2"})


def check_padding(header: Header) -> list[Issue]:
    """ST-A01: leading whitespace, padding other than spaces, N not a multiple of 8."""
    issues = []
    if header.leading_whitespace:
        issues.append(Issue("ST-A01", f"{header.leading_whitespace} whitespace bytes come before the header's `{{` "
                            "(the format says it must begin with `{`)", 8, "leading-whitespace"))
    padding = header.trailing_padding
    if padding.strip(" "):
        odd = sorted({f"0x{ord(c):02x}" for c in padding if c != " "})
        issues.append(Issue("ST-A01", f"the header is padded with {', '.join(odd)}, not only spaces (0x20)",
                            8 + header.length - len(padding), "padding"))
    if header.length % WRITER_ALIGNMENT:
        issues.append(Issue("ST-A01", f"the header length {header.length:,} is not a multiple of "
                            f"{WRITER_ALIGNMENT}, so the data area is not 8-byte aligned", 0, str(header.length)))
    return issues


def check_alignment(header: Header) -> list[Issue]:
    """ST-A02: tensors whose file offset is not a multiple of their element size (one summary)."""
    table, start = header.table, header.data_start
    sizes = table.element_bytes
    # The common case: all aligned. Every element size divides 8, so with the data area 8-byte
    # aligned (writers pad the header) a file offset is aligned when its data offset is.
    relative = table.begins if start % 8 == 0 else map(add, table.begins, repeat(start))
    if not any(map(mod, relative, sizes)):
        return []
    return _alignment_summary([(start + b, n, size) for n, b, e, size in zip(table.names, table.begins, table.ends, sizes)
                               if (start + b) % size and e > b])


def _alignment_summary(unaligned: list[tuple[int, str, int]]) -> list[Issue]:
    """One finding for all unaligned tensors: (file offset, name, element size) each."""
    if not unaligned:
        return []
    offset, name, size = min(unaligned)
    more = f" and {len(unaligned) - 1:,} more" if len(unaligned) > 1 else ""
    return [Issue("ST-A02", f"tensor {name!r} starts at file offset {offset:,}, not a multiple of its "
                  f"{size}-byte element size{more}", offset, name)]


def check_loader_support(header: Header) -> list[Issue]:
    """ST-A03: F6 tensors, F4 tensors with an odd last dimension, no tensors at all."""
    if not len(header.table):
        return [Issue("ST-A03", "the file holds no tensors", 8, None)]
    if _LOADER_LIMITED.isdisjoint(header.table.dtype_set):
        return []
    issues = []
    for name, dtype, shape, begin, _ in header.tensors:
        if dtype.startswith("F6_"):
            issues.append(Issue("ST-A03", f"tensor {name!r} is {dtype}: no Python loader (torch, numpy) can "
                                "materialise it", header.data_start + begin, name))
        elif dtype == "F4" and shape and shape[-1] % 2:
            issues.append(Issue("ST-A03", f"tensor {name!r} is F4 with an odd last dimension {shape[-1]}: torch "
                                "refuses it (f4_x2 needs an even last dimension)", header.data_start + begin, name))
    return issues
