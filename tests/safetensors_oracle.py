"""The reference reader as an oracle: which format rule (ST-Fxx) its error message stands for."""
from __future__ import annotations

import struct
from pathlib import Path

from safetensors import safe_open

# (message fragment, rule ids it can stand for), most specific first
REFERENCE_MESSAGES: list[tuple[str, frozenset[str]]] = [
    ("header too small", frozenset({"ST-F01"})),
    ("header too large", frozenset({"ST-F02"})),
    ("invalid header length", frozenset({"ST-F03"})),
    ("invalid UTF-8 in header", frozenset({"ST-F04"})),
    ("recursion limit exceeded", frozenset({"ST-F06"})),
    ("expected struct HashMetadata", frozenset({"ST-F07"})),
    ("duplicate field", frozenset({"ST-F08"})),
    ("expected a map", frozenset({"ST-F09"})),
    ("expected a string", frozenset({"ST-F09"})),
    ("expected struct TensorInfo", frozenset({"ST-F10"})),
    ("missing field", frozenset({"ST-F10"})),
    ("expected 3 elements in sequence", frozenset({"ST-F10"})),
    ("unknown variant", frozenset({"ST-F11"})),
    ("expected string or map", frozenset({"ST-F11"})),
    ("map with a single key", frozenset({"ST-F11"})),
    ("expected unit", frozenset({"ST-F11"})),
    ("expected a sequence", frozenset({"ST-F12"})),
    ("expected usize", frozenset({"ST-F12", "ST-F13"})),
    ("expected a tuple of size 2", frozenset({"ST-F13"})),
    ("expected 2 elements in sequence", frozenset({"ST-F13"})),
    ("invalid JSON in header", frozenset({"ST-F05"})),
    ("overflow computing buffer size", frozenset({"ST-F14"})),
    ("byte boundary", frozenset({"ST-F15"})),
    ("invalid offset for tensor", frozenset({"ST-F16"})),
    ("invalid shape, data type, or offset", frozenset({"ST-F17"})),
    ("file not fully covered", frozenset({"ST-F18"})),
]


def reference_rules(message: str) -> frozenset[str]:
    for fragment, rules in REFERENCE_MESSAGES:
        if fragment in message:
            return rules
    raise AssertionError(f"unmapped reference error: {message}")


def reference_read(path: Path) -> tuple[frozenset[str] | None, dict | None]:
    """(rules the reference's refusal stands for, None) or (None, {name: shape}) when it reads the file."""
    try:
        with safe_open(str(path), "np") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            f.metadata()
    except Exception as exc:  # SafetensorError; its class is not exported by every version
        return reference_rules(str(exc)), None
    return None, shapes


def file_bytes(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data
