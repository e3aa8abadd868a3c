"""JSON values as serde_json hands them to the reference: one representation for both our readers.

Objects are :class:`Obj` (a list of key/value pairs, duplicates kept, in text order), arrays are
lists, numbers follow serde_json's classes: a non-negative integer below 2^64 is ``int`` (u64), a
negative integer down to -2^63 is ``int`` (i64), and everything else (fractions, exponents, ``-0``,
integers out of those ranges) is ``float``. A number too large for a double is no value at all:
serde_json refuses it ("number out of range").
"""
from __future__ import annotations

U64_LIMIT = 1 << 64
I64_MIN = -(1 << 63)
_MAX_INT_DIGITS = 20
"""Longer integer literals are out of u64/i64 range; converting them as floats avoids int()'s digit cap."""


class Obj(list):
    """A JSON object: ``[(key, value), ...]`` in text order, duplicate keys kept."""

    __slots__ = ()


class OutOfRange(ValueError):
    """A number literal that serde_json refuses: it overflows a double."""


def integer(literal: str) -> int | float:
    """An integer literal (``-?digits``) as serde_json classifies it."""
    negative = literal[0] == "-"
    if len(literal) - negative <= _MAX_INT_DIGITS:
        value = int(literal)
        if negative:
            if value and value >= I64_MIN:
                return value
        elif value < U64_LIMIT:
            return value
    return floating(literal)


def floating(literal: str) -> float:
    """A literal serde_json parses as f64 (``-0`` included); raises :class:`OutOfRange` past a double."""
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise OutOfRange(literal)
    return value


def describe(value: object) -> str:
    """A value as serde names it in "invalid type: ..." messages."""
    if value is None:
        return "null"
    if value is True or value is False:
        return f"boolean `{'true' if value else 'false'}`"
    if type(value) is int:
        return f"integer `{value}`"
    if type(value) is float:
        return f"floating point `{value!r}`"
    if type(value) is str:
        return f"string {_quoted(value)}"
    if type(value) is Obj:
        return "map"
    return "sequence"


def _quoted(text: str, limit: int = 60) -> str:
    short = text if len(text) <= limit else text[:limit] + "..."
    return '"' + short.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
