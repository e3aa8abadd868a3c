"""``json``'s C scanner made as strict as serde_json, for one value at a time.

The exact reader (:mod:`.serde_reader`) hands each buffered value to :class:`ValueScanner` when the
whole text is known to hold none of the differences this module cannot see, and falls back to
its own character-level parsing for a value the scanner refuses. ``json`` accepts what the
reference refuses (docs/safetensors.md, "Notes for a Python implementation"); each difference is closed:

- duplicate keys: ``object_pairs_hook`` keeps every pair (:class:`~.json_values.Obj`);
- ``NaN``/``Infinity``: ``parse_constant`` refuses them;
- integers >= 2^64, below -2^63 and ``-0`` become floats, as in serde_json; numbers past a double
  are refused (serde_json: "number out of range");
- lone surrogate escapes: :func:`may_hold_surrogates` over the whole text turns the scanner off;
- a BOM and UTF-16/32: the text is already strict UTF-8 decoded, and values never start with U+FEFF;
- nesting: :func:`nesting_bound` over the whole text turns the scanner off before it could meet
  serde's recursion limit or raise ``RecursionError``.
"""
from __future__ import annotations

import json
import re

import numpy as np

from tensorsafe.readers.safetensors.json_values import Obj, floating, integer

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_DEPTH_CHUNK = 1 << 18
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class Refused(Exception):
    """The scanner cannot vouch for this value; the caller parses it character by character."""


def _refuse_constant(name: str) -> float:
    raise Refused(name)


class ValueScanner:
    """Scans single values; ``duplicates`` turns true once an object repeats a key."""

    def __init__(self) -> None:
        self.duplicates = False
        self._decoder = json.JSONDecoder(object_pairs_hook=self._object, parse_int=integer, parse_float=floating,
                                         parse_constant=_refuse_constant)

    def _object(self, pairs: list) -> Obj:
        if len(pairs) > 1 and len({k for k, _ in pairs}) != len(pairs):
            self.duplicates = True
        return Obj(pairs)

    def scan(self, text: str, pos: int) -> tuple[object, int]:
        """The JSON value starting at ``pos`` and the position after it; raises :class:`Refused`."""
        try:
            return self._decoder.raw_decode(text, pos)
        except (ValueError, Refused):  # JSONDecodeError and OutOfRange are ValueErrors
            raise Refused from None


def may_hold_surrogates(text: str) -> bool:
    """Cheap filter: a lone surrogate can only come from a ``\\uD800``-``\\uDFFF`` escape."""
    return _ESCAPED_SURROGATE.search(text) is not None


def nesting_bound(text: str) -> int:
    """The bracket depth outside strings, or an upper bound on it when that is below 128.

    Exact up to the first syntax error (where every reader stops), without recursion, in chunks
    of bounded memory: a quote opens or closes a string unless an odd run of backslashes precedes it."""
    openers = text.count("[") + text.count("{")
    if openers < 128:
        return openers
    data = text.encode("utf-8", "surrogatepass")
    deepest = depth = 0
    in_string = False
    backslashes = 0  # length of the backslash run that ended the previous chunk
    for start in range(0, len(data), _DEPTH_CHUNK):
        a = np.frombuffer(data, np.uint8, min(_DEPTH_CHUNK, len(data) - start), start)
        is_bs = a == 0x5C
        index = np.arange(a.size, dtype=np.int32)
        last_other = np.maximum.accumulate(np.where(is_bs, -1, index))
        run_before = np.empty(a.size, np.int32)  # backslashes right before each byte
        run_before[0] = backslashes
        run_before[1:] = index[:-1] - last_other[:-1]
        run_before[1:][last_other[:-1] < 0] += backslashes  # runs that began in the previous chunk
        quotes = (a == 0x22) & (run_before % 2 == 0)
        parity = (np.cumsum(quotes) + in_string) % 2  # 1 inside a string (a closing quote counts as outside)
        steps = np.where(parity == 0, _STEP[a], 0)
        running = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(running.max()))
        depth, in_string = int(running[-1]), bool(parity[-1])
        backslashes = int(run_before[-1] + 1) if is_bs[-1] else 0
    return deepest


__all__ = ["Refused", "ValueScanner", "may_hold_surrogates", "nesting_bound"]
