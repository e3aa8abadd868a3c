"""Policy rules ST-P01 to ST-P07: headers the reference accepts but that break our limits."""
from __future__ import annotations

import functools
import re
import sys
import unicodedata

from tensorsafe.limits import HeaderLimits
from tensorsafe.readers.safetensors.model import Header, Issue

_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"[A-Za-z]:")
_PLAIN_NAME_BYTES = bytes(c for c in range(0x20, 0x7F) if c not in b"\\:")
"""Printable ASCII but the backslash and the colon (a Windows separator, a drive prefix)."""
_SLASH = ord("/")


@functools.cache
def _invisible() -> re.Pattern[str]:
    """Every code point of category Cc or Cf in this Python's Unicode database (built once, ~0.2 s)."""
    points = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cc", "Cf")]
    ranges, start, prev = [], points[0], points[0]
    for c in points[1:] + [-1]:
        if c != prev + 1:
            ranges.append(f"\\U{start:08x}-\\U{prev:08x}" if start != prev else f"\\U{start:08x}")
            start = c
        prev = c
    return re.compile("[" + "".join(ranges) + "]")


def invisible_char(text: str) -> str | None:
    """The first control (Cc) or format (Cf) character in ``text``, if any."""
    m = (_ASCII_CONTROL if text.isascii() else _invisible()).search(text)
    return None if m is None else m.group()


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# -- ST-P01 --------------------------------------------------------------------------------------
def check_header_size(header: Header, limits: HeaderLimits) -> list[Issue]:
    if header.length > limits.header_warn_bytes:
        return [Issue("ST-P01", f"the header is {header.length:,} bytes, over {limits.header_warn_bytes:,} "
                      "(Hub helpers refuse to read its metadata)", 8, str(header.length))]
    return []


# -- ST-P02 to ST-P05 ----------------------------------------------------------------------------
def check_tensors(header: Header, limits: HeaderLimits) -> list[Issue]:
    issues = []
    if len(header.table) > limits.max_tensors:
        issues.append(Issue("ST-P02", f"{len(header.table):,} tensors, more than the {limits.max_tensors:,} "
                            "allowed (limit max_tensors)", 8, str(len(header.table))))
    issues.extend(_shapes(header, limits))
    issues.extend(_names(header, limits))
    return issues


def _shapes(header: Header, limits: HeaderLimits) -> list[Issue]:
    if _shapes_clear(header, limits):
        return []
    issues = []
    max_rank, max_dim, max_elements = limits.max_rank, limits.max_dim, limits.max_elements
    start = header.data_start
    for name, dtype, shape, begin, _ in header.tensors:
        if len(shape) > max_rank:
            issues.append(Issue("ST-P03", f"tensor {name!r} has {len(shape)} dimensions, more than {max_rank} "
                                "(limit max_rank)", start + begin, name))
        if shape and max(shape) > max_dim:
            issues.append(Issue("ST-P04", f"tensor {name!r} has a dimension of {max(shape):,}, over {max_dim:,} "
                                "(limit max_dim)", start + begin, name))
            continue
        elements = 1
        for d in shape:
            if d:
                elements *= d
        if elements > max_elements:
            issues.append(Issue("ST-P04", f"tensor {name!r} has shape {list(shape)}: its non-zero dimensions "
                                f"multiply to {elements:,}, over {max_elements:,} (limit max_elements)",
                                start + begin, name))
    return issues


def _shapes_clear(header: Header, limits: HeaderLimits) -> bool:
    """No tensor breaks ST-P03/P04, decided over the columns. With no zero dimension (else the
    product of the non-zero ones is not ``numel``: the exact loop decides), every dimension is at
    most its tensor's element count."""
    table = header.table
    if not len(table):
        return True
    numel = table.numel
    if 0 in numel:
        return False
    top = max(numel)
    return (top <= limits.max_elements and (top <= limits.max_dim or max(table.dims) <= limits.max_dim)
            and max(map(len, table.shapes)) <= limits.max_rank)


def _names(header: Header, limits: HeaderLimits) -> list[Issue]:
    names = header.table.names
    if _all_names_plain(names, limits.max_name_bytes):
        return []
    issues = []
    for name, _, _, begin, _ in header.tensors:
        problem = name_problem(name, limits.max_name_bytes)
        if problem:
            issues.append(Issue("ST-P05", f"tensor name {name!r} {problem}", header.data_start + begin, name))
    return issues


def _all_names_plain(names: tuple[str, ...], max_bytes: int) -> bool:
    """A few passes over all names for the common case: non-empty, short, printable ASCII with
    nothing path-like. The names are joined by newlines (which no plain name holds) and checked
    as bytes: deleting every plain character must leave exactly the joins."""
    if not names:
        return True
    joined = "\n".join(names)
    if not (all(names) and joined.isascii() and (len(joined) <= max_bytes or max(map(len, names)) <= max_bytes)):
        return False
    data = joined.encode("ascii")
    return (data.translate(None, _PLAIN_NAME_BYTES) == b"\n" * (len(names) - 1) and b".." not in data
            and (b"/" not in data or (b"\n/" not in data and data[0] != _SLASH)))  # a lone "/" is a fast search


def name_problem(name: str, max_bytes: int) -> str | None:
    """Why a tensor name breaks ST-P05, or ``None``."""
    problem = _text_problem(name, _utf8_len(name), max_bytes, "max_name_bytes")
    if problem:
        return problem
    if "\\" in name:
        return "holds a backslash (a Windows path separator)"
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "has a '..' path segment"
    if _DRIVE.match(name):
        return "starts with a drive prefix"
    return None


# -- ST-P06 --------------------------------------------------------------------------------------
def check_metadata(header: Header, limits: HeaderLimits) -> list[Issue]:
    return metadata_issues(header.metadata, limits) if header.metadata else []


def metadata_issues(metadata: dict[str, str], limits: HeaderLimits) -> list[Issue]:
    """ST-P06 over a non-empty metadata map."""
    issues = []
    if len(metadata) > limits.max_metadata_entries:
        issues.append(Issue("ST-P06", f"__metadata__ has {len(metadata):,} entries, more than "
                            f"{limits.max_metadata_entries:,} (limit max_metadata_entries)", 8, "__metadata__"))
    total = 0
    for key, value in metadata.items():
        key_bytes = _utf8_len(key)
        total += key_bytes + _utf8_len(value)
        problem = _text_problem(key, key_bytes, limits.max_metadata_key_bytes, "max_metadata_key_bytes")
        if problem:
            issues.append(Issue("ST-P06", f"__metadata__ key {key!r} {problem}", 8, key))
        if "\0" in value:
            issues.append(Issue("ST-P06", f"__metadata__ value of {key!r} holds a NUL character", 8, key))
    if total > limits.max_metadata_bytes:
        issues.append(Issue("ST-P06", f"__metadata__ holds {total:,} bytes of keys and values, over "
                            f"{limits.max_metadata_bytes:,} (limit max_metadata_bytes)", 8, "__metadata__"))
    return issues


def _text_problem(text: str, size: int, max_bytes: int, limit: str) -> str | None:
    """What tensor names (ST-P05) and metadata keys (ST-P06) must both be: not empty, at most ``max_bytes``
    UTF-8 bytes (``size``), no invisible or control character."""
    if size == 0:
        return "is empty"
    if size > max_bytes:
        return f"is {size:,} bytes long, over {max_bytes:,} (limit {limit})"
    bad = invisible_char(text)
    if bad is not None:
        return f"holds the invisible or control character U+{ord(bad):04X}"
    return None


# -- ST-P07 --------------------------------------------------------------------------------------
def check_structure(header: Header, limits: HeaderLimits) -> list[Issue]:
    issues = []
    if header.max_depth > limits.max_json_depth:
        issues.append(Issue("ST-P07", f"the header nests {header.max_depth} levels deep, more than "
                            f"{limits.max_json_depth} (limit max_json_depth)", 8, str(header.max_depth)))
    for tensor, field in header.extra_fields:
        issues.append(Issue("ST-P07", f"tensor {tensor!r} has the unknown field {field!r}, which readers ignore",
                            None, field))
    if header.metadata_null:
        issues.append(Issue("ST-P07", "__metadata__ is null; the reference treats it as absent", 8, "__metadata__"))
    return issues
