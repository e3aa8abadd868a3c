"""GGUF (llama.cpp) files: the header and metadata, parsed by hand with every count bounded.

Hand-written on purpose: the ``gguf`` package's reader memory-maps the file and trusts its counts,
so a crafted count allocates or loops without end. Here every count and length is checked against
the bytes left before anything is read, metadata entries, array items and string bytes have caps,
and only the chat templates are kept. Layout (little endian, versions 2 and 3)::

    "GGUF"  u32 version  u64 tensor_count  u64 metadata_count
    metadata_count x (string key, u32 value_type, value)
    tensor_count  x (string name, u32 n_dims, n_dims x u64 dim, u32 ggml_type, u64 offset)
    padding to general.alignment, then raw tensor data (numbers only: nothing a loader runs)

A string is a u64 byte length and UTF-8 bytes; an array is a u32 item type, a u64 count and the
items (arrays may nest). The code a GGUF file can carry is its Jinja chat template
(``tokenizer.chat_template`` and the named ``tokenizer.chat_template.<name>``), judged by
:mod:`tensorsafe.engine.jinja_template`.

A file that parses can still be one llama.cpp refuses: an empty or repeated metadata key, a
``general.alignment`` that is not a u32, tensor infos that do not lay out the data section
(:mod:`tensorsafe.engine.gguf_layout`). The first such reason is kept as ``GGUFHeader.refusal``
and the chat templates are judged all the same.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.engine.chat_templates import judge_chat_templates
from tensorsafe.engine.gguf_layout import GGML_MAX_DIMS, TensorLayout
from tensorsafe.errors import ParseError
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = frozenset({2, 3})
MAX_GGUF_METADATA_ENTRIES = 65_536
MAX_GGUF_ARRAY_ITEMS = 64 * 1024 * 1024
"""Array items in all metadata together (a tokenizer holds a few hundred thousand)."""
MAX_GGUF_STRING_BYTES = 512 * 1024 * 1024
"""String bytes in all metadata and tensor names together."""
MAX_GGUF_ARRAY_DEPTH = 8
MAX_GGUF_TENSORS = 1_000_000
GGUF_DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
READ_WINDOW = 1 << 20
DEADLINE_EVERY = 1 << 16
"""Items parsed between two looks at the scan's deadline."""

U32, STRING, ARRAY = 4, 8, 9
INFO_TAILS = [struct.Struct(f"<{n}QIQ").unpack for n in range(GGML_MAX_DIMS + 1)]
"""A tensor info after its name and dimension count: the dimensions, the ggml type, the offset."""
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""uint8, int8, uint16, int16, uint32, int32, float32, bool, uint64, int64, float64."""


@dataclass
class GGUFHeader:
    version: int
    tensor_count: int
    metadata_count: int
    templates: list[tuple[str, bytes | str]] = field(default_factory=list)
    """(key, raw bytes) of every chat template string, duplicates included."""
    data_start: int = 0
    refusal: str | None = None
    """The first reason llama.cpp refuses the file though it parses (see the module docstring)."""


class DeadlinePassed(Exception):
    """The scan's time ran out while parsing (the caller has already recorded it)."""


class _Cursor:
    """Sequential reads over a span through a window, so millions of small reads stay cheap."""

    def __init__(self, span: Span, deadline_ok: Callable[[], bool]):
        self.span = span
        self.deadline_ok = deadline_ok
        self.items = 0
        self.pos = 0
        self._win = b""
        self._win_pos = 0
        self.string_bytes = 0
        self.array_items = 0

    @property
    def left(self) -> int:
        return self.span.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left:
            raise ParseError(f"{what} at byte {self.pos:,} needs {n:,} bytes, {self.left:,} are left")
        lo = self.pos - self._win_pos
        if lo < 0 or lo + n > len(self._win):
            if n > READ_WINDOW:
                data = self.span.read(self.pos, n)
                self.pos += n
                return data
            self._win = self.span.read(self.pos, READ_WINDOW)
            self._win_pos, lo = self.pos, 0
        self.pos += n
        return self._win[lo:lo + n]

    def skip(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            raise ParseError(f"{what} at byte {self.pos:,} needs {n:,} bytes, {self.left:,} are left")
        self.pos += n

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string_length(self, what: str) -> int:
        self.items += 1
        if self.items % DEADLINE_EVERY == 0 and not self.deadline_ok():
            raise DeadlinePassed
        n = self.u64(f"{what} length")
        if n > self.left:
            raise ParseError(f"{what} at byte {self.pos - 8:,} declares {n:,} bytes, {self.left:,} are left")
        self.string_bytes += n
        if self.string_bytes > MAX_GGUF_STRING_BYTES:
            raise ParseError(f"more than {MAX_GGUF_STRING_BYTES:,} bytes of strings (limit MAX_GGUF_STRING_BYTES)")
        return n

    def string(self, what: str) -> bytes:
        return self.take(self.string_length(what), what)


def parse_gguf(span: Span, deadline_ok: Callable[[], bool] = lambda: True) -> GGUFHeader:
    """Header, metadata and tensor infos; raises ``ParseError`` on anything malformed or over a cap,
    ``DeadlinePassed`` when ``deadline_ok()`` says the time is up."""
    c = _Cursor(span, deadline_ok)
    if c.take(4, "magic") != GGUF_MAGIC:
        raise ParseError("not a GGUF file (magic)")
    version = c.u32("version")
    if version not in GGUF_VERSIONS:
        raise ParseError(f"GGUF version {version} is not supported (2 and 3 are read; a big-endian file reads as "
                         "a huge version)")
    tensor_count, metadata_count = c.u64("tensor count"), c.u64("metadata count")
    if metadata_count > MAX_GGUF_METADATA_ENTRIES:
        raise ParseError(f"{metadata_count:,} metadata entries (limit MAX_GGUF_METADATA_ENTRIES "
                         f"{MAX_GGUF_METADATA_ENTRIES:,})")
    if tensor_count > MAX_GGUF_TENSORS:
        raise ParseError(f"{tensor_count:,} tensors (limit MAX_GGUF_TENSORS {MAX_GGUF_TENSORS:,})")
    header = GGUFHeader(version, tensor_count, metadata_count)
    alignment = _read_metadata(c, header)
    layout = TensorLayout(alignment)
    for i in range(tensor_count):
        name = c.string(f"tensor {i} name")
        n_dims = c.u32(f"tensor {i} dimension count")
        if n_dims > GGML_MAX_DIMS:
            raise ParseError(f"tensor {name[:64]!r} has {n_dims} dimensions (GGML_MAX_DIMS is {GGML_MAX_DIMS})")
        *dims, type_id, offset = INFO_TAILS[n_dims](c.take(8 * n_dims + 12, f"tensor {i} shape, type and offset"))
        layout.add(name, tuple(dims), type_id, offset)
    header.data_start = c.pos + (-c.pos) % alignment
    if tensor_count:
        layout.check_data(header.data_start, span.size)
    header.refusal = header.refusal or layout.problem
    return header


def _read_metadata(c: _Cursor, header: GGUFHeader) -> int:
    """Walks the metadata, keeping the chat templates; returns the data alignment.

    llama.cpp finds a key with strcmp, so a NUL ends the name it sees, and takes the first match."""
    alignment: int | None = None
    keys: set[str] = set()
    for i in range(header.metadata_count):
        key = _text(c.string(f"metadata key {i}"), f"metadata key {i}")
        vtype = c.u32(f"type of {key!r}")
        if header.refusal is None and (not key or key in keys):
            header.refusal = f"metadata key {key!r} is {'repeated' if key else 'empty'}"
        keys.add(key)
        c_key = key.partition("\0")[0]
        is_template = c_key == CHAT_TEMPLATE_KEY or c_key.startswith(CHAT_TEMPLATE_KEY + ".")
        if is_template and vtype != STRING:
            raise ParseError(f"chat template {key!r} is not a string (type {vtype}): it cannot be judged")
        if is_template:
            header.templates.append((key, c.string(f"value of {key!r}")))
        elif c_key == ALIGNMENT_KEY and alignment is None:
            alignment = _alignment(c, key, vtype, header)
        else:
            _skip_value(c, vtype, key, 0)
    return GGUF_DEFAULT_ALIGNMENT if alignment is None else alignment


def _alignment(c: _Cursor, key: str, vtype: int, header: GGUFHeader) -> int:
    if vtype != U32:
        _skip_value(c, vtype, key, 0)
        header.refusal = header.refusal or f"{ALIGNMENT_KEY} has value type {vtype}, not u32 (4)"
        return GGUF_DEFAULT_ALIGNMENT
    alignment = struct.unpack("<I", c.take(4, ALIGNMENT_KEY))[0]
    if alignment == 0 or alignment & (alignment - 1):
        raise ParseError(f"{ALIGNMENT_KEY} {alignment} is not a power of two")
    return alignment


def _skip_value(c: _Cursor, vtype: int, key: str, depth: int) -> None:
    size = SCALAR_SIZES.get(vtype)
    if size is not None:
        c.skip(size, f"value of {key!r}")
    elif vtype == STRING:
        c.skip(c.string_length(f"string in {key!r}"), f"string in {key!r}")
    elif vtype == ARRAY:
        if depth >= MAX_GGUF_ARRAY_DEPTH:
            raise ParseError(f"arrays in {key!r} nest deeper than {MAX_GGUF_ARRAY_DEPTH} (limit MAX_GGUF_ARRAY_DEPTH)")
        item_type, count = c.u32(f"array type of {key!r}"), c.u64(f"array length of {key!r}")
        c.array_items += count
        if c.array_items > MAX_GGUF_ARRAY_ITEMS:
            raise ParseError(f"more than {MAX_GGUF_ARRAY_ITEMS:,} array items (limit MAX_GGUF_ARRAY_ITEMS)")
        item_size = SCALAR_SIZES.get(item_type)
        if item_size is not None:
            c.skip(count * item_size, f"array {key!r}")
        elif item_type in (STRING, ARRAY):
            if count * (8 if item_type == STRING else 12) > c.left:  # each item is at least a length
                raise ParseError(f"array {key!r} declares {count:,} items, more than the {c.left:,} bytes left hold")
            for _ in range(count):
                _skip_value(c, item_type, key, depth + 1)
        else:
            raise ParseError(f"array {key!r} has unknown item type {item_type}")
    else:
        raise ParseError(f"metadata {key!r} has unknown value type {vtype}")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def scan_gguf(fs: FileScan, span: Span, location: Location) -> None:
    """GGUF-02 when the header cannot be read or llama.cpp refuses the file; GGUF-01 for each chat
    template that reaches Python internals (judged in a refused file too: other readers load it)."""
    fs.note_kind("gguf")
    try:
        header = parse_gguf(span, lambda: fs.check_deadline(location))
    except DeadlinePassed:
        return
    except ParseError as exc:
        fs.add("GGUF-02", f"GGUF header or metadata is malformed: {exc.message}", location)
        return
    if header.templates:
        judge_chat_templates(fs, header.templates, location, "GGUF-01", "GGUF-02", "GGUF file")
    if header.refusal is not None:
        fs.add("GGUF-02", f"GGUF file is refused by llama.cpp: {header.refusal}", location)
