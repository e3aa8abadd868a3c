"""The clean-file fast path of :func:`~.validator.validate_file`: "this file has no finding", or "don't know".

Most files are clean and laid out as safetensors' own writer lays them out. For those, the full
validator (three JSON readers, typed entries, a :class:`~.model.Header`, one function per rule,
issue lists) costs several times the reference's whole ``safe_open``: its cost is per file, not
per byte. :func:`clean_size` answers the same question with a few dozen C-level operations over
whole columns (no Python loop per tensor, no object per rule) and answers only when every rule
passes:

- I/O: one ``open``, ``fstat`` and ``pread`` of the first 64 KiB (the whole file, for small ones),
  then the header's remainder and the zip search window only where they lie outside it;
- parsing: only the writer's compact form without a backslash, split on ``"``. With no escape
  every ``"`` delimits a string, so the pieces are fixed fields, compared column-wise with their
  literals. Names must be unique printable ASCII (and never ``__metadata__``), metadata keys and
  values strings without a control character. Inside that form serde_json and our readers cannot
  differ: none of their differences (duplicates, escapes, surrogates, big, negative or fractional
  numbers, whitespace, nesting) can occur in it;
- numbers: the offsets pieces must be, character for character, what the writer prints for
  tensors laid out back to back in text order, each with the size its dtype and shape give (for
  many tensors: the same punctuation, the same numbers, no more digits, checked with numpy). That
  checks the JSON integer grammar and F13, F16, F17 (text order is the reference's sorted order
  when it is contiguous), and F18 with the file size;
- shapes: each distinct (dtype, shape field) is checked once per limits (F11, F12, F14, F15, P03,
  P04) and its byte size remembered: a model repeats a few shapes many times, files of one family
  repeat them across files;
- the remaining rules (P01, P02, P05-P08, A01-A03) by the all-clear predicates the full checks use
  first, or stricter ones.

Any doubt returns ``None`` and the caller runs the full validator, which also writes the findings.
``tests/test_validate_fastpath.py`` checks, on generated and hostile files, that a file gets a size
here only when the full validator reports nothing, and that writer-made files do get one.

The same checks are also compiled (``_native_fastpath.c``, built at install where a C compiler is
found): :func:`clean_size` then asks it alone (its "don't know" goes straight to the full
validator), and the Python form stays the reference and the fallback. ``tests/test_validate_native.py``
holds the compiled form to the same soundness test and to deciding exactly the files the Python
form decides.
"""
from __future__ import annotations

import os
import re
import stat
import struct
from itertools import accumulate
from operator import mod

import numpy as np

from tensorsafe.header import polyglot
from tensorsafe.header.advisories import WRITER_ALIGNMENT
from tensorsafe.header.dtypes import DTYPE_BITS
from tensorsafe.header.layout import LENGTH_BYTES, MAX_HEADER_BYTES
from tensorsafe.header.limits import HeaderLimits
from tensorsafe.header.offsets import U64_MAX
from tensorsafe.header.policy_rules import metadata_issues

try:
    from tensorsafe.header import _native_fastpath as native
except ImportError:  # built without a C compiler: the Python checks alone
    native = None

FIRST_READ = 64 * 1024
"""Bytes read at once from the front: a small file whole, the header of most files."""
DEPTH_WITH_TENSORS = 3
"""Root object, tensor entry, shape and offset arrays: the depth of every header with tensors (ST-P07)."""
MEMO_ENTRIES = 4096
"""Distinct (dtype, shape field) pairs remembered per limits; past this the memo starts afresh."""
MEMO_FIELD_CHARS = 256
"""Longer shape fields are not remembered (a hostile header must not grow the memo)."""

_INT = r"(?:0|[1-9][0-9]{0,18}+)"
_SHAPE_FIELD = re.compile(r":\[(?:" + _INT + "(?:," + _INT + r")*+)?+\],")
_FIELDS = 10
"""Quote-delimited pieces per entry: name, ':{', 'dtype', ':', dtype, ',', 'shape', shape, 'data_offsets', offsets."""
_ALIGN = {dtype: max(1, bits // 8) for dtype, bits in DTYPE_BITS.items()}
_LOADER_LIMITED = frozenset({"F4", "F6_E2M3", "F6_E3M2"})
"""ST-A03 dtypes: left to the full check."""
_STRING = r'"[^"\\\x00-\x1f\x7f]*+"'
"""A JSON string without escapes or control characters (nor DEL: the rules call it invisible)."""
_METADATA = re.compile(r'\{"__metadata__":\{((?:' + _STRING + ":" + _STRING + "(?:," + _STRING + ":" + _STRING
                       + r")*+)?+)\},")
_NOT_CLEAN = 1 << 70
"""A memo value: this (dtype, shape field) breaks a rule. Larger than any file, so a sum of sizes
holding it never equals the data size."""
_O_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_U64 = struct.Struct("<Q").unpack_from
_S_IFMT, _S_IFREG = 0o170000, stat.S_IFREG
_CANNOT_START, _PROTO = polyglot.CANNOT_START, polyglot.PROTO
EOCD_MAGIC, EOCD_SEARCH = polyglot.EOCD_MAGIC, polyglot.EOCD_SEARCH
assert FIRST_READ <= EOCD_SEARCH  # a file read whole in the first read is its own zip window
_NUMPY_MIN = 100
"""From this many tensors on, the offsets are checked with numpy."""
_CONTROLS = bytes(0 if b < 0x20 or b == 0x7F else 1 for b in range(256))
"""A translation table marking ASCII control characters (and DEL) as NUL, everything else as 1."""
_NUMPY_BYTES = 4096
"""From this many bytes on, the control-character check goes through numpy."""
_SKELETON, _SKELETON_LAST = b':[,]},"', b":[,]}}"
"""An offsets piece without its digits (pieces joined by '"'), and the last one."""
_POWERS_OF_10 = np.array([10 ** k for k in range(20)], np.uint64)
_OFFSET_TEMPLATES: dict[int, str] = {}
"""Tensor count -> the offsets template of :func:`_offset_template` (below :data:`_NUMPY_MIN` tensors)."""
_TEMPLATES_MAX_N = 1024
_MEMOS: dict[int, tuple[HeaderLimits, dict[tuple[str, str], int]]] = {}
"""id(limits) -> (limits, memo); the limits object is kept, so its id is not reused while here."""
_MEMO: tuple[HeaderLimits | None, dict[tuple[str, str], int]] = (None, {})
"""The memo used last, found without a lookup."""


def clean_size(path: str, limits: HeaderLimits) -> int | None:
    """The file's size when every header rule passes on it (no finding at all), else ``None``.

    ``None`` means only "not decided here": the file may be clean, bad, or unreadable."""
    if native is None:
        return python_clean_size(path, limits)
    size = native.clean_size(path, limits)  # "don't know" is final: the Python form decides the same files
    return size if size is None or size > 0 else _front_is_no_pickle(path, -size)


def _front_is_no_pickle(path: str, size: int) -> int | None:
    """``size`` when the file's front does not walk as a pickle (ST-P08), else ``None``; for files
    the compiled checks passed but whose first bytes may start a pickle stream."""
    try:
        fd = os.open(path, _O_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        head = os.pread(fd, FIRST_READ, 0)
        if os.fstat(fd).st_size != size or len(head) < LENGTH_BYTES:
            return None
        return size if _front_says_nothing(_Front(fd, head, size)) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def python_clean_size(path: str, limits: HeaderLimits) -> int | None:
    """:func:`clean_size` in Python alone."""
    try:
        fd = os.open(path, _O_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        size = st.st_size
        if st.st_mode & _S_IFMT != _S_IFREG or size < LENGTH_BYTES + 3:
            return None
        head = os.pread(fd, FIRST_READ, 0)
        n = _U64(head)[0]
        end = LENGTH_BYTES + n
        if len(head) != (size if size < FIRST_READ else FIRST_READ) or end > size or n % WRITER_ALIGNMENT \
                or n > limits.header_warn_bytes or n > MAX_HEADER_BYTES:
            return None  # F02, F03, A01 (length), P01
        if head[0] not in _CANNOT_START and (head[0] != _PROTO or head[2] not in _CANNOT_START) \
                and not _front_says_nothing(_Front(fd, head, size)):
            return None  # P08, A04: the front walks as a pickle (only when the first bytes allow one)
        if size <= FIRST_READ:  # the zip window (the last EOCD_SEARCH bytes) is the whole file
            raw, tail = head[LENGTH_BYTES:end], head
        else:
            raw = head[LENGTH_BYTES:end] if end <= FIRST_READ else os.pread(fd, n, LENGTH_BYTES)
            tail_start = max(0, size - EOCD_SEARCH)
            tail = os.pread(fd, size - tail_start, tail_start)
            if len(raw) != n or len(tail) != size - tail_start:
                return None
    except OSError:
        return None
    finally:
        os.close(fd)
    if EOCD_MAGIC in tail:  # P08: a zip end record may end the file
        return None
    try:
        text = raw.decode("utf-8")  # F04
    except UnicodeDecodeError:
        return None
    return size if _header_clean(text, size - end, limits) else None


def _front_says_nothing(src: "_Front") -> bool:
    """The full check's pickle-front verdict (ST-P08 or ST-A04) has nothing to say about this file."""
    front = polyglot.pickle_front(src)
    return front is None or front.issue is None


class _Front:
    """The file as the pickle check reads it (a ``ByteSource``): from the first read where it can,
    mapped by its descriptor for the walk to the pickle's real end."""

    def __init__(self, fd: int, head: bytes, size: int):
        self.fd, self.head, self.size = fd, head, size

    def read(self, offset: int, n: int) -> bytes:
        if offset + n <= len(self.head):
            return self.head[offset:offset + n]
        return os.pread(self.fd, n, offset)

    def fileno(self) -> int:
        return self.fd


def _header_clean(text: str, data_size: int, limits: HeaderLimits) -> bool:
    """Every format, policy and advisory rule passes on this header (``False``: don't know).

    One function on purpose: on a small file each Python call costs about as much as a rule."""
    if "\\" in text:
        return False
    parts = text.split('"')  # odd pieces are strings, even ones what lies between them
    parts[-1] = parts[-1].rstrip(" ")  # A01: only spaces may pad, nothing may lead
    if parts[0] != "{" or parts[-1][-1:] != "}":
        return False
    first = 1
    if parts[1] == "__metadata__":
        match = _METADATA.match(text)  # '{"__metadata__":{"k":"v",...},': no escape, no control character
        if match is None:
            return False
        pairs = match.group(1)
        first = pairs.count('"') + 3  # '{', '__metadata__', ':{', 4 pieces a pair, '},' (or ':{},')
        if parts[first - 1] != ("}," if pairs else ":{},"):  # nothing may stand before the first name
            return False
        if pairs:
            keys = parts[3:first:4]
            if len(set(keys)) != len(keys) or not pairs.isascii():  # F08; the compiled form decides ASCII only
                return False
            if not (pairs.isascii() and "" not in keys and len(keys) <= limits.max_metadata_entries
                    and len(pairs) <= limits.max_metadata_bytes
                    and (len(pairs) <= limits.max_metadata_key_bytes
                         or max(map(len, keys)) <= limits.max_metadata_key_bytes)) \
                    and metadata_issues(dict(zip(keys, parts[5:first:4])), limits):  # P06, else the exact check
                return False
    n, extra = divmod(len(parts) - first, _FIELDS)
    if extra or not n or n > limits.max_tensors or limits.max_json_depth < DEPTH_WITH_TENSORS:
        return False  # A03 (no tensors), P02, P07
    if parts[first + 1::_FIELDS].count(":{") != n or parts[first + 2::_FIELDS].count("dtype") != n \
            or parts[first + 3::_FIELDS].count(":") != n or parts[first + 5::_FIELDS].count(",") != n \
            or parts[first + 6::_FIELDS].count("shape") != n or parts[first + 8::_FIELDS].count("data_offsets") != n:
        return False
    names = parts[first::_FIELDS]
    joined = "/" + "/".join(names) + "/"  # P05, stricter: an empty name or a '/' at either end shows as '//'
    if len(set(names)) != n or not joined.isascii() or _has_control(joined.encode("ascii")) \
            or "//" in joined or ":" in joined or ".." in joined or "__metadata__" in joined \
            or (len(joined) > limits.max_name_bytes and max(map(len, names)) > limits.max_name_bytes):
        return False  # also F08: a repeated name, a second metadata
    dtypes = parts[first + 4::_FIELDS]
    if not _LOADER_LIMITED.isdisjoint(dtypes):  # A03
        return False
    last = _MEMO  # one read: another thread may switch it
    memo = last[1] if last[0] is limits else _memo_for(limits)
    sizes = list(map(memo.get, zip(dtypes, parts[first + 7::_FIELDS])))  # F11, F12, F14, F15, P03, P04
    if None in sizes:
        _fill(sizes, dtypes, parts[first + 7::_FIELDS], memo, limits)
    # F13, F16, F17, F18: the offsets are what the writer prints for tensors back to back in text order
    offsets = '"'.join(parts[first + 9::_FIELDS])
    if n >= _NUMPY_MIN:
        return _NOT_CLEAN not in sizes and _layout_clean_columns(offsets, sizes, dtypes, data_size)
    ends = list(accumulate(sizes))
    if ends[-1] != data_size:  # also when a size is _NOT_CLEAN: the sum is past any file size
        return False
    template = _OFFSET_TEMPLATES.get(n) or _offset_template(n)
    if offsets != template.format(*ends):
        return False
    if any(map(mod, ends, map(_ALIGN.__getitem__, dtypes[1:]))):  # A02: tensor i+1 starts at ends[i]
        return _unaligned_are_empty(ends, sizes[1:], dtypes[1:])
    return True


def configure_native() -> None:
    """Hand the compiled checks the facts they share with these (the modules here own them)."""
    native.configure(bytes(b in _CANNOT_START for b in range(256)), _PROTO, FIRST_READ, MAX_HEADER_BYTES,
                     WRITER_ALIGNMENT, EOCD_SEARCH, DEPTH_WITH_TENSORS, DTYPE_BITS, _LOADER_LIMITED)


if native is not None:
    configure_native()


def _unaligned_are_empty(begins, sizes, dtypes) -> bool:
    """ST-A02 exempts empty tensors: every tensor whose start is not a multiple of its element size is empty."""
    return all(not size for begin, size, dtype in zip(begins, sizes, dtypes) if begin % _ALIGN[dtype])


def _layout_clean_columns(offsets: str, sizes: list[int], dtypes: list[str], data_size: int) -> bool:
    """The end of :func:`_header_clean` with numpy, for many tensors: the offsets text is the
    writer's if its punctuation is, its numbers are the running ends, and it has no more digits
    than they need (a leading zero or a number past uint64 would add some)."""
    if _NOT_CLEAN in sizes or not offsets.isascii():
        return False
    data = np.frombuffer(offsets.encode("ascii"), np.uint8)
    n = len(sizes)
    digit = (data >= 0x30) & (data <= 0x39)
    if data[~digit].tobytes() != _SKELETON * (n - 1) + _SKELETON_LAST:
        return False
    numbers = np.fromstring(np.where(digit, data, np.uint8(0x20)).tobytes(), np.uint64, sep=" ")
    ends = np.cumsum(np.array(sizes, np.uint64))
    if numbers.size != 2 * n or int(ends[-1]) != data_size:
        return False
    begins = numbers[0::2]
    if begins[0] or not np.array_equal(numbers[1::2], ends) or not np.array_equal(begins[1:], ends[:-1]):
        return False
    digits = np.maximum(np.searchsorted(_POWERS_OF_10, ends, side="right"), 1)  # decimal digits of each end
    if len(data) - len(_SKELETON) * (n - 1) - len(_SKELETON_LAST) != 1 + 2 * int(digits.sum()) - int(digits[-1]):
        return False  # '0', then every end twice (as an end, then as the next begin) but the last
    if not (begins & np.uint64(7)).any():  # A02: 8-aligned everywhere (the data area starts 8-aligned)
        return True
    unaligned = begins % np.fromiter(map(_ALIGN.__getitem__, dtypes), np.uint64, n) != 0
    return not (unaligned & (numbers[1::2] > begins)).any()


def _has_control(data: bytes) -> bool:
    """An ASCII control character or DEL in ``data`` (a table translation for short text, numpy for long)."""
    if len(data) < _NUMPY_BYTES:
        return b"\x00" in data.translate(_CONTROLS)
    a = np.frombuffer(data, np.uint8)
    return int(a.min()) < 0x20 or b"\x7f" in data


def _offset_template(n: int) -> str:
    """``str.format`` template of the offsets pieces of ``n`` tensors back to back, joined by ``"``:
    ``:[0,{0}]},":[{0},{1}]},"...:[{n-2},{n-1}]}}``, given the running ends."""
    pieces = [":[0,{0}"] + [']}},":[{%d},{%d}' % (i - 1, i) for i in range(1, n)] + ["]}}}}"]
    template = "".join(pieces)
    if n <= _TEMPLATES_MAX_N:
        _OFFSET_TEMPLATES[n] = template
    return template


def _memo_for(limits: HeaderLimits) -> dict[tuple[str, str], int]:
    """The memo of these limits (made on first use), now the one used last."""
    global _MEMO
    entry = _MEMOS.get(id(limits))
    if entry is None or entry[0] is not limits:
        if len(_MEMOS) > 8:
            _MEMOS.clear()
        entry = _MEMOS[id(limits)] = (limits, {})
    _MEMO = entry
    return entry[1]


def _fill(sizes: list, dtypes: list[str], shapes: list[str], memo: dict, limits: HeaderLimits) -> None:
    """Sizes the memo does not know yet, computed and remembered."""
    if len(memo) > MEMO_ENTRIES:
        memo.clear()
    for i, key in enumerate(zip(dtypes, shapes)):
        if sizes[i] is None:
            sizes[i] = _exact_bytes(key[0], key[1], limits)
            if len(key[1]) <= MEMO_FIELD_CHARS:
                memo[key] = sizes[i]


def _exact_bytes(dtype: str, field: str, limits: HeaderLimits) -> int:
    """The tensor's byte size as the reference computes it (ST-F14, ST-F15), or ``_NOT_CLEAN`` when
    the dtype is unknown, the shape field is not ``:[d,...],`` or a rule (F14, F15, P03, P04) fires."""
    bits = DTYPE_BITS.get(dtype)
    if bits is None or _SHAPE_FIELD.fullmatch(field) is None:
        return _NOT_CLEAN
    dims = list(map(int, field[2:-2].split(","))) if len(field) > 4 else []
    if len(dims) > limits.max_rank or (dims and max(dims) > limits.max_dim):
        return _NOT_CLEAN
    elements = nonzero = 1
    for d in dims:
        elements *= d
        if elements > U64_MAX:
            return _NOT_CLEAN
        nonzero *= d or 1
    total = elements * bits
    if nonzero > limits.max_elements or total > U64_MAX or total % 8:
        return _NOT_CLEAN
    return total // 8
