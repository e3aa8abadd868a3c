"""A reader that fails exactly where the reference fails: serde_json deserializing ``HashMetadata``.

Written by hand on purpose (exactness): the reference reads the header in three phases, and the
first format error depends on them. ``HashMetadata`` has a ``#[serde(flatten)]`` tensor map, so

1. serde_json streams the top-level object: syntax (ST-F05) and depth (ST-F06) everywhere, the
   top-level type (ST-F07), a repeated ``__metadata__`` (ST-F08) and the metadata's own types
   (ST-F09) in text order, while every other entry is buffered untyped;
2. then the buffered entries become tensors (ST-F08, ST-F10 to ST-F13; :mod:`.entries`);
3. then trailing characters (ST-F05) are refused.

This module covers phases 1 and 3 and is only used for headers the fast readers refuse, so it
favours being a line-by-line mirror of serde_json's ``de.rs`` over speed. Each error names serde's
message, so a reviewer can compare.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from tensorsafe.readers.safetensors import strict_json
from tensorsafe.readers.safetensors.json_values import Obj, OutOfRange, describe, floating, integer
from tensorsafe.readers.safetensors.model import HeaderFormatError

RECURSION_LIMIT = 128
"""serde_json's default: entering the 128th nested array or object fails (the root counts 1)."""
JSON_WHITESPACE = " \t\n\r"

_WS = re.compile(r"[ \t\n\r]*")
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_DIGITS = re.compile(r"[0-9]*")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class TopLevel(NamedTuple):
    """Phase 1's result: the metadata (``None`` when absent or null) and the buffered entries."""

    metadata: Obj | None
    metadata_null: bool
    entries: list[tuple[str, object]]


class SerdeReader:
    """Reads one header text; errors are :class:`HeaderFormatError` with a file offset.

    ``accelerate``: buffered values go through ``json``'s C scanner (:mod:`.strict_json`) when the
    whole text has no lone-surrogate escape and nests less deep than serde's limit; a value the
    scanner refuses is read again here, character by character, for the reference's exact error."""

    def __init__(self, text: str, base_offset: int = 8, *, accelerate: bool = True):
        self.text = text
        self.end = len(text)
        self.pos = 0
        self.base = base_offset
        self.remaining_depth = RECURSION_LIMIT
        self.accelerate = accelerate and not strict_json.may_hold_surrogates(text) \
            and strict_json.nesting_bound(text) < RECURSION_LIMIT
        self.scanner = strict_json.ValueScanner()
        self.duplicate_keys = False
        """Some object repeats a key (the reference lets most of these through: ST-F08 is ours)."""

    # -- errors --------------------------------------------------------------------------------
    def fail(self, message: str, rule: str = "ST-F05", pos: int | None = None) -> HeaderFormatError:
        pos = self.pos if pos is None else pos
        offset = self.base + len(self.text[:pos].encode("utf-8", "surrogatepass"))
        return HeaderFormatError(rule, f"{message} at header byte {offset - self.base}", offset=offset)

    # -- low level -----------------------------------------------------------------------------
    def peek(self) -> str | None:
        """serde's ``parse_whitespace``: skip JSON whitespace, return the next character."""
        self.pos = _WS.match(self.text, self.pos).end()
        return self.text[self.pos] if self.pos < self.end else None

    def enter(self) -> None:
        """serde's ``check_recursion!``, before eating ``[`` or ``{``."""
        self.remaining_depth -= 1
        if self.remaining_depth == 0:
            raise self.fail("recursion limit exceeded", "ST-F06")

    def leave(self) -> None:
        self.remaining_depth += 1

    def ident(self, rest: str) -> None:
        for expected in rest:
            if self.pos >= self.end:
                raise self.fail("EOF while parsing a value")
            if self.text[self.pos] != expected:
                self.pos += 1
                raise self.fail("expected ident")
            self.pos += 1

    # -- phase 1: the top-level object -----------------------------------------------------------
    def read_top(self) -> TopLevel:
        peek = self.peek()
        if peek is None:
            raise self.fail("EOF while parsing a value")
        if peek != "{":
            raise self.invalid_type("struct HashMetadata", "ST-F07")
        self.enter()
        self.pos += 1
        metadata: Obj | None = None
        metadata_seen = metadata_null = False
        entries: list[tuple[str, object]] = []
        first = True
        while True:
            key = self.next_key(first)
            if key is None:
                break
            first = False
            if key == "__metadata__":
                if metadata_seen:
                    raise self.fail("duplicate field `__metadata__`", "ST-F08")
                metadata_seen = True
                self.colon()
                metadata = self.metadata_option()
                metadata_null = metadata is None
            else:
                self.colon()
                entries.append((key, self.content()))
        self.leave()
        self._note_duplicates(entries)
        return TopLevel(metadata, metadata_null, entries)

    def _note_duplicates(self, pairs: list) -> None:
        if len(pairs) > 1 and len({k for k, _ in pairs}) != len(pairs):
            self.duplicate_keys = True

    def finish(self) -> None:
        """Phase 3 (after the tensors): ``end_map`` then ``Deserializer::end``."""
        self.peek()
        self.pos += 1  # the closing brace that ended phase 1
        if self.peek() is not None:
            raise self.fail("trailing characters")

    # -- metadata: Option<HashMap<String, String>> -------------------------------------------------
    def metadata_option(self) -> Obj | None:
        if self.peek() == "n":
            self.pos += 1
            self.ident("ull")
            return None
        peek = self.peek()
        if peek is None:
            raise self.fail("EOF while parsing a value")
        if peek != "{":
            raise self.invalid_type("a map", "ST-F09")
        self.enter()
        self.pos += 1
        pairs = Obj()
        first = True
        while True:
            key = self.next_key(first)
            if key is None:
                break
            first = False
            self.colon()
            pairs.append((key, self.metadata_string()))
        self.pos += 1  # end_map: the brace next_key stopped at
        self.leave()
        self._note_duplicates(pairs)
        return pairs

    def metadata_string(self) -> str:
        peek = self.peek()
        if peek is None:
            raise self.fail("EOF while parsing a value")
        if peek != '"':
            raise self.invalid_type("a string", "ST-F09")
        self.pos += 1
        return self.string()

    # -- maps and sequences (serde_json's MapAccess / SeqAccess) -----------------------------------
    def next_key(self, first: bool) -> str | None:
        peek = self.peek()
        if peek == "}":
            return None
        if peek == "," and not first:
            self.pos += 1
            peek = self.peek()
        elif peek is None:
            raise self.fail("EOF while parsing an object")
        elif not first:
            raise self.fail("expected `,` or `}`")
        if peek == '"':
            self.pos += 1
            return self.string()
        if peek == "}":
            raise self.fail("trailing comma")
        if peek is None:
            raise self.fail("EOF while parsing a value")
        raise self.fail("key must be a string")

    def colon(self) -> None:
        peek = self.peek()
        if peek == ":":
            self.pos += 1
        elif peek is None:
            raise self.fail("EOF while parsing an object")
        else:
            raise self.fail("expected `:`")

    def next_element(self, first: bool) -> bool:
        peek = self.peek()
        if peek == "]":
            return False
        if peek == "," and not first:
            self.pos += 1
            peek = self.peek()
        elif peek is None:
            raise self.fail("EOF while parsing a list")
        elif not first:
            raise self.fail("expected `,` or `]`")
        if peek == "]":
            raise self.fail("trailing comma")
        if peek is None:
            raise self.fail("EOF while parsing a value")
        return True

    # -- any value, buffered (serde's Content via deserialize_any) ---------------------------------
    def content(self) -> object:
        peek = self.peek()
        if peek is None:
            raise self.fail("EOF while parsing a value")
        if self.accelerate and peek in "{[":
            try:
                value, self.pos = self.scanner.scan(self.text, self.pos)
                self.duplicate_keys |= self.scanner.duplicates
                return value
            except strict_json.Refused:
                pass
        if peek == "{":
            self.enter()
            self.pos += 1
            pairs = Obj()
            first = True
            while (key := self.next_key(first)) is not None:
                first = False
                self.colon()
                pairs.append((key, self.content()))
            self.pos += 1
            self.leave()
            self._note_duplicates(pairs)
            return pairs
        if peek == "[":
            self.enter()
            self.pos += 1
            items: list = []
            first = True
            while self.next_element(first):
                first = False
                items.append(self.content())
            self.pos += 1
            self.leave()
            return items
        return self.scalar(peek)

    def scalar(self, peek: str) -> object:
        if peek == '"':
            self.pos += 1
            return self.string()
        if peek == "-" or "0" <= peek <= "9":
            return self.number()
        self.pos += 1
        if peek == "n":
            self.ident("ull")
            return None
        if peek == "t":
            self.ident("rue")
            return True
        if peek == "f":
            self.ident("alse")
            return False
        self.pos -= 1
        raise self.fail("expected value")

    def invalid_type(self, expected: str, rule: str) -> HeaderFormatError:
        """serde_json's ``peek_invalid_type``: scalars are parsed first (their own errors win)."""
        start = self.pos
        peek = self.text[self.pos] if self.pos < self.end else "\0"
        if peek == "[":
            value: object = []
        elif peek == "{":
            value = Obj()
        elif peek in '"-0123456789ntf':
            value = self.scalar(peek)
        else:
            return self.fail("expected value")
        return self.fail(f"invalid type: {describe(value)}, expected {expected}", rule, start)

    # -- strings and numbers ---------------------------------------------------------------------
    def string(self) -> str:
        """The rest of a string after its opening quote (serde_json's ``parse_str``)."""
        text, parts = self.text, []
        while True:
            stop = _PLAIN.match(text, self.pos).end()
            parts.append(text[self.pos:stop])
            self.pos = stop
            if stop >= self.end:
                raise self.fail("EOF while parsing a string")
            c = text[stop]
            self.pos += 1
            if c == '"':
                return "".join(parts)
            if c != "\\":
                raise self.fail("control character (\\u0000-\\u001F) found while parsing a string")
            parts.append(self.escape())

    def escape(self) -> str:
        if self.pos >= self.end:
            raise self.fail("EOF while parsing a string")
        c = self.text[self.pos]
        self.pos += 1
        if c in _ESCAPES:
            return _ESCAPES[c]
        if c != "u":
            raise self.fail("invalid escape")
        n = self.hex4()
        if 0xDC00 <= n <= 0xDFFF:
            raise self.fail("lone leading surrogate in hex escape")
        if 0xD800 <= n <= 0xDBFF:
            if self.text[self.pos:self.pos + 2] != "\\u":
                if self.pos + (self.text[self.pos:self.pos + 1] == "\\") >= self.end:
                    raise self.fail("EOF while parsing a string")
                raise self.fail("unexpected end of hex escape")
            self.pos += 2
            low = self.hex4()
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.fail("lone leading surrogate in hex escape")
            return chr(0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00))
        return chr(n)

    def hex4(self) -> int:
        if self.end - self.pos < 4:
            self.pos = self.end
            raise self.fail("EOF while parsing a string")
        m = _HEX4.match(self.text, self.pos)
        self.pos += 4
        if m is None:
            raise self.fail("invalid escape")
        return int(m.group(), 16)

    def number(self) -> int | float:
        """serde_json's ``parse_any_number``: the grammar errors, then u64 / i64 / f64."""
        text, start = self.text, self.pos
        if text[self.pos] == "-":
            self.pos += 1
        if self.pos >= self.end:
            raise self.fail("EOF while parsing a value")
        c = text[self.pos]
        if c == "0":
            self.pos += 1
            if self.pos < self.end and "0" <= text[self.pos] <= "9":
                raise self.fail("invalid number")
        elif "1" <= c <= "9":
            self.pos = _DIGITS.match(text, self.pos + 1).end()
        else:
            raise self.fail("invalid number")
        is_float = False
        if self.pos < self.end and text[self.pos] == ".":
            self.pos += 1
            self.required_digits()
            is_float = True
        if self.pos < self.end and text[self.pos] in "eE":
            self.pos += 1
            if self.pos < self.end and text[self.pos] in "+-":
                self.pos += 1
            self.required_digits()
            is_float = True
        literal = text[start:self.pos]
        try:
            return floating(literal) if is_float else integer(literal)
        except OutOfRange:
            raise self.fail("number out of range", pos=start) from None

    def required_digits(self) -> None:
        if self.pos >= self.end:
            raise self.fail("EOF while parsing a value")
        if not "0" <= self.text[self.pos] <= "9":
            raise self.fail("invalid number")
        self.pos = _DIGITS.match(self.text, self.pos).end()
