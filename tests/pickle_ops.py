"""Build pickle streams opcode by opcode, so every evasion test shows exactly what it sends.

Payloads are harmless (``os.system("true")``); nothing here is ever unpickled.
"""
from __future__ import annotations

import struct


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module: str, name: str) -> bytes:
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def unicode_(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def binunicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def binstring(text: str) -> bytes:
    raw = text.encode("latin-1")
    return b"T" + struct.pack("<i", len(raw)) + raw


def short_binstring(text: str) -> bytes:
    raw = text.encode("latin-1")
    return b"U" + bytes([len(raw)]) + raw


def string(text: str) -> bytes:
    return b"S'" + text.encode("latin-1") + b"'\n"


def binbytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def binput(i: int) -> bytes:
    return b"q" + bytes([i])


def binget(i: int) -> bytes:
    return b"h" + bytes([i])


def long_binput(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def long_binget(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def frame(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


MARK, STOP, REDUCE, TUPLE, TUPLE1, TUPLE2, EMPTY_TUPLE = b"(", b".", b"R", b"t", b"\x85", b"\x86", b")"
STACK_GLOBAL, MEMOIZE, BUILD, NEWOBJ, OBJ, NONE, POP, DUP = b"\x93", b"\x94", b"b", b"\x81", b"o", b"N", b"0", b"2"
EMPTY_DICT, SETITEM, SETITEMS, EMPTY_LIST, APPEND = b"}", b"s", b"u", b"]", b"a"


def call_system(module: str = "os", name: str = "system", arg: str = "true") -> bytes:
    """``module.name(arg)`` as a protocol-2 pickle: the classic payload."""
    return proto(2) + global_(module, name) + unicode_(arg) + TUPLE1 + REDUCE + STOP
