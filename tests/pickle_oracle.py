"""An independent oracle: which imports would a real loader perform on these bytes?

Used by the property tests to judge a "clean" verdict without trusting the code under test.
Nothing here imports, calls or unpickles anything from the data: values are inert stand-ins.

What it models, and why it can be trusted more than the walker for this one question:

* **Tokenising** uses pickletools' own argument readers (``opcode.arg.reader``) for every
  opcode with a counted or fixed-size argument: they agree with the C unpickler on where each
  argument ends, and fail exactly where it fails (truncation, negative counts, bad UTF-8).
  pickletools is *stricter* than the real loaders for line arguments (``INT``, ``LONG``,
  ``FLOAT``, ``GET``, ``PUT``, ``STRING``, ``GLOBAL``, ``INST``, ``PERSID``): its
  ``read_decimalnl_short`` is ``int(s)`` where ``Modules/_pickle.c`` uses ``strtol(s, 0)`` on
  a NUL-terminated copy of the line, and its ``GLOBAL`` reader escape-decodes and demands
  ASCII where C decodes UTF-8. A genops error is therefore *not* proof that the loader stops:
  line arguments are re-read here with the rules of the loader being modelled.
* **Stack, marks and memo** follow ``Modules/_pickle.c`` ("c" mode: ``pickle.load``,
  ``torch.load``, ``numpy.load``): pops respect the fence of the innermost mark,
  ``APPENDS``/``SETITEMS``/``ADDITEMS`` need their target above the fence, ``POP`` pops a
  mark when the stack is empty above it, ``STACK_GLOBAL`` needs two ``str`` operands.
  "py" mode follows ``Lib/pickle.py``'s ``_Unpickler`` (what ``joblib.load`` uses): the same
  stack rules, Python's ``int()``/``float()`` for line arguments, the ``_Unframer`` (a frame
  is read into memory whole, so bytes read *around* it by joblib come from after the frame
  while later opcodes still come from the rest of the frame), no persistent ids.
* **Imports** are recorded when the loader would call ``find_class`` (before an error later in
  the same opcode, as the loader does). Python 2 names are mapped with ``_compat_pickle`` at
  every protocol (the loader maps only below protocol 3; above it the unmapped names are
  Python 2 modules that do not exist, which ``test_compat_mapping_is_safe_at_every_protocol``
  checks). ``STACK_GLOBAL`` with operands computed at load time and ``EXT*`` codes are
  *unresolved*: the loader could import anything there.

* **joblib** (1.6, ``joblib/numpy_pickle.py``): after ``BUILD`` of a ``NumpyArrayWrapper``
  instance (called directly, or made by ``copyreg._reconstructor``), joblib reads the alignment
  padding and ``prod(shape) * itemsize`` raw bytes from the file; an object array is a nested
  pickle read by a fresh, plain ``pickle._Unpickler`` (joblib < 1.5: ``pickle.load``, also
  followed). The C model reads the same bytes as opcodes, as ``pickle.load`` and ``torch.load``
  of a joblib file do.
* **Containers** (``analyse_file``): see its docstring. Zip members are read the lenient way
  (no CRC check, central-directory sizes, local-header name and extra lengths), so what any
  zip reader could hand to the unpickler is covered.

Sources: CPython ``Modules/_pickle.c`` and ``Lib/pickle.py`` (the fence checks in
``do_append``/``do_setitems``/``load_additems`` date from 3.6), ``Lib/pickletools.py`` 3.11,
joblib 1.6 ``numpy_pickle.py``/``numpy_pickle_utils.py``, torch 2.x ``serialization.py``.

What it cannot know (and so does not claim): the value-level errors of the real objects
(calling a non-callable, ``BUILD`` on an int, unhashable results of calls), which encoding
the caller passes for Python 2 strings (read as latin-1), whether the copyreg extension registry
has entries (``EXT*`` is unresolved), and what a ``persistent_load`` does (assumed present, as
in torch, for the C model). There the oracle keeps going where the loader might stop, so it may
report imports the loader never reaches; as far as the rules above go, it never misses one the
loader does reach before its first error. Loaders outside this list (dill, cloudpickle, pandas,
the oldest torch tar layout) are not modelled: their members are only followed as plain files.
Nor is ``_pickle`` reading a file object without ``peek`` (``torch.load`` of a zip member): a
read that crosses a frame's end is taken afresh from after the frame there; the scanner fails
every such stream (PK-S06), which tests/pickles/test_pickle_framing.py checks against the real unpicklers.
"""
from __future__ import annotations

import bz2
import codecs
import io
import lzma
import math
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field

import pickletools

HIGHEST_PROTOCOL = 5
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_INFLATE = 64 << 20
JOBLIB_WRAPPERS = frozenset({("joblib.numpy_pickle", "NumpyArrayWrapper"),
                             ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper")})
CODE2OP = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
LINE_OPS = frozenset({"INT", "LONG", "FLOAT", "GET", "PUT", "STRING", "UNICODE", "GLOBAL", "INST", "PERSID"})


class Break(Exception):
    """The modelled loader raises here: nothing after this point runs.

    ``structural``: no parser could read on from here (the data ends, an opcode byte is not an
    opcode, a line has no newline, a count is negative or runs past the end). Other breaks are
    about values (a number C will not parse, a stack underflow, an unhashable key), where a
    parser may legitimately be more lenient than the loader.
    """

    def __init__(self, reason: str, structural: bool = False):
        super().__init__(reason)
        self.structural = structural


class Incomplete(Exception):
    """The oracle cannot tell where the loader goes next (it says so instead of guessing)."""


# -- inert values -----------------------------------------------------------------------------
class Obj:
    """Anything the loader would build by importing, calling or loading: opaque here."""

    __slots__ = ("kind", "ref", "args", "state")

    def __init__(self, kind: str, ref: object = None, args: object = None):
        self.kind, self.ref, self.args, self.state = kind, ref, args, None

    def __repr__(self) -> str:
        return f"Obj({self.kind}, {self.ref!r})"


@dataclass
class Stream:
    """What the modelled loader does with one pickle stream."""

    start: int
    mode: str
    imports: list = field(default_factory=list)        # (module, name, offset)
    unresolved: list = field(default_factory=list)     # (reason, offset)
    stopped: bool = False
    end: int | None = None                             # offset after STOP
    break_offset: int | None = None                    # offset of the opcode that raises
    break_opcode: str | None = None
    reason: str = ""
    structural: bool = False                           # see Break
    root: object = None
    incomplete: bool = False
    nested: list = field(default_factory=list)         # joblib object-array pickles
    file_end: int | None = None                        # "py": where the file stands afterwards
    ops: list = field(default_factory=list)            # offset of every opcode read
    frame_rest_after_array: bool = False               # joblib read an array while a frame had bytes left
    nested_frame_past_stop: bool = False               # an object array's pickle ended inside a frame


def _fix(module: str, name: str) -> tuple[str, str]:
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


# -- C's number parsing, on the NUL-terminated copy of the line C works on -----------------------
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_STRTOD = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.I)


def _cstr(line: bytes) -> bytes:
    """The line (newline included) as C's string functions see it: up to the first NUL."""
    return line.split(b"\0", 1)[0]


def _pylong(s: bytes, base: int) -> int:
    try:
        return int(s, base)
    except ValueError:
        raise Break(f"not an int: {s[:30]!r}") from None


def c_int(line: bytes) -> int:
    """``load_int``: ``strtol(s, &end, 0)``; end must be at the newline or NUL, else PyLong base 0."""
    s = _cstr(line)
    if s == b"":
        return 0  # strtol converts nothing and leaves end at the NUL: C accepts it as 0
    m = _STRTOL.match(s)
    if m and s[m.end():m.end() + 1] in (b"", b"\n"):
        digits = m.group(2)
        if digits[:2].lower() == b"0x":
            v = int(digits[2:], 16)
        elif digits.startswith(b"0"):
            v = int(digits, 8) if len(digits) > 1 else 0
        else:
            v = int(digits)
        v = -v if m.group(1) == b"-" else v
        if -(1 << 63) <= v < (1 << 63):
            return v
    return _pylong(s, 0)


def c_float(line: bytes) -> float:
    """``load_float``: ``PyOS_string_to_double`` prefix, then the newline or NUL; overflow raises."""
    s = _cstr(line)
    m = _STRTOD.match(s)
    if not m or s[m.end():m.end() + 1] not in (b"", b"\n"):
        raise Break("not a float")
    text = m.group().decode()
    v = float(text)
    if math.isinf(v) and "inf" not in text.lower():
        raise Break("float overflow")
    return v


# -- the reader: plain (C) or with pickle.py's _Unframer ----------------------------------------
class Reader:
    """Reads opcodes and arguments as the modelled loader does.

    "c": straight through the bytes (``FRAME`` only checks that the frame is all there).
    "py": ``pickle._Unframer``: ``FRAME`` reads the frame into memory; reads come from it until
    it is empty, then from the file; a read that ends partway through a frame's end raises;
    joblib's own reads (``file_read``) always come from the file, after the current frame.
    """

    def __init__(self, data: bytes, pos: int, end: int, framed: bool):
        self.data, self.pos, self.end, self.framed = data, pos, end, framed
        self.frame: io.BytesIO | None = None
        self.frame_start = 0

    def file_read(self, n: int) -> bytes:
        out = self.data[self.pos:min(self.end, self.pos + max(0, n))]
        self.pos += len(out)
        return out

    def file_readline(self) -> bytes:
        nl = self.data.find(b"\n", self.pos, self.end)
        stop = self.end if nl < 0 else nl + 1
        out = self.data[self.pos:stop]
        self.pos = stop
        return out

    @property
    def offset(self) -> int:
        """Offset in ``data`` of the next byte read."""
        if self.frame is not None and self.frame.tell() < len(self.frame.getbuffer()):
            return self.frame_start + self.frame.tell()
        return self.pos

    def read_some(self, n: int) -> bytes:
        """``_Unframer.read`` (short only at the end of the file; callers check the length)."""
        if self.frame is not None:
            got = self.frame.read(n)
            if not got and n != 0:
                self.frame = None
                return self.file_read(n)
            if len(got) < n:
                raise Break("pickle exhausted before end of frame")  # C reads on
            return got
        return self.file_read(n)

    def read(self, n: int) -> bytes:
        got = self.read_some(n)
        if len(got) < n:
            raise Break("truncated", structural=True)
        return got

    def readline(self, partial_ok: bool) -> bytes:
        """A line with its newline; pickle.py (``partial_ok``) returns a last line without one."""
        if self.frame is not None:
            got = self.frame.readline()
            if not got:
                self.frame = None
                got = self.file_readline()
            elif not got.endswith(b"\n"):
                raise Break("pickle exhausted before end of frame")  # C reads on
        else:
            got = self.file_readline()
        if not got.endswith(b"\n") and not partial_ok:
            raise Break("line without newline", structural=True)
        return got

    def load_frame(self, size: int) -> None:
        if not self.framed:  # C: the whole frame must be there; it is then read in place
            if self.pos + size > self.end:
                raise Break("frame truncated")  # pickle.py reads a short frame and goes on
            return
        if self.frame is not None and self.frame.read() != b"":
            raise Break("new frame before end of current frame")
        self.frame_start = self.pos
        self.frame = io.BytesIO(self.file_read(size))


class _ArgFile:
    """What pickletools' argument readers read from: the loader's own reads."""

    def __init__(self, reader: Reader):
        self.read = reader.read_some


# -- the machine --------------------------------------------------------------------------------
class Machine:
    def __init__(self, data: bytes, start: int, end: int | None, mode: str, joblib: bool = False,
                 max_ops: int = 2_000_000):
        self.r = Reader(data, start, len(data) if end is None else min(end, len(data)), framed=mode == "py")
        self.mode = mode
        self.joblib = joblib
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.proto = 0
        self.out = Stream(start=start, mode=mode)
        self.max_ops = max_ops

    # stack helpers, as _pickle.c
    @property
    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def pop(self) -> object:
        if len(self.stack) <= self.fence:
            raise Break("stack underflow")
        return self.stack.pop()

    def top(self) -> object:
        if len(self.stack) <= self.fence:
            raise Break("stack underflow")
        return self.stack[-1]

    def marker(self) -> int:
        if not self.marks:
            raise Break("could not find MARK")
        return self.marks.pop()

    def pop_to(self, x: int) -> list:
        items = self.stack[x:]
        del self.stack[x:]
        return items

    def imported(self, module: str, name: str, offset: int) -> Obj:
        module, name = _fix(module, name)
        self.out.imports.append((module, name, offset))
        return Obj("global", (module, name))

    def run(self) -> Stream:
        try:
            self._loop()
        except Break as exc:
            self.out.reason = str(exc)
            self.out.structural = exc.structural
        except (Incomplete, RecursionError) as exc:
            self.out.reason = str(exc) or type(exc).__name__
            self.out.incomplete = True
        self.out.file_end = self.r.pos
        return self.out

    def _loop(self) -> None:
        ops = 0
        while True:
            ops += 1
            if ops > self.max_ops:
                raise Incomplete("too many opcodes for the oracle")
            offset = self.r.offset
            self.out.break_offset, self.out.break_opcode = offset, None
            self.out.ops.append(offset)
            code = self.r.read_some(1)
            if not code:
                raise Break("ran out of input", structural=True)
            op = CODE2OP.get(code)
            if op is None:
                raise Break(f"invalid opcode {code!r}", structural=True)
            self.out.break_opcode = op.name
            if op.name in LINE_OPS:
                arg = None
            elif op.arg is None:
                arg = None
            else:
                try:
                    arg = op.arg.reader(_ArgFile(self.r))
                except UnicodeDecodeError as exc:
                    raise Break(f"{op.name}: {exc}") from None
                except ValueError as exc:  # pickletools' counted readers fail where the loader does
                    raise Break(f"{op.name}: {exc}", structural=True) from None
            if op.name == "STOP":
                self.out.root = self.pop()
                self.out.stopped = True
                self.out.end = self.r.offset
                self.out.break_offset = self.out.break_opcode = None
                return
            self.step(op.name, arg, offset)

    # one opcode ------------------------------------------------------------------------------
    def step(self, name: str, arg: object, offset: int) -> None:
        s = self.stack
        if name in ("NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "LONG4",
                    "BINFLOAT", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
                    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            s.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}.get(name, arg))
        elif name in ("BINSTRING", "SHORT_BINSTRING"):
            s.append(arg.encode("latin-1").decode("latin-1") if isinstance(arg, str) else arg)
        elif name in ("INT", "LONG", "FLOAT", "GET", "PUT", "STRING", "UNICODE", "GLOBAL", "INST", "PERSID"):
            self.line_op(name, offset)
        elif name == "EMPTY_TUPLE":
            s.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(s) - n < self.fence:
                raise Break("stack underflow")
            s.append(tuple(self.pop_to(len(s) - n)))
        elif name == "TUPLE":
            s.append(tuple(self.pop_to(self.marker())))
        elif name == "EMPTY_LIST":
            s.append([])
        elif name == "LIST":
            s.append(self.pop_to(self.marker()))
        elif name == "EMPTY_DICT":
            s.append({})
        elif name == "DICT":
            items = self.pop_to(self.marker())
            if len(items) % 2:
                raise Break("odd number of items for DICT")
            s.append(self.hashing(lambda: {items[i]: items[i + 1] for i in range(0, len(items), 2)}))
        elif name == "EMPTY_SET":
            s.append(set())
        elif name == "FROZENSET":
            items = self.pop_to(self.marker())
            s.append(self.hashing(lambda: frozenset(items)))
        elif name == "APPEND":
            if len(s) - 1 <= self.fence:
                raise Break("stack underflow")
            value = s.pop()
            if isinstance(s[-1], list):
                s[-1].append(value)
        elif name in ("APPENDS", "ADDITEMS"):
            x = self.marker()
            if x > len(s) or x <= self.fence:
                raise Break("stack underflow")
            items = self.pop_to(x)
            target = s[-1]
            if isinstance(target, list) and name == "APPENDS":
                target.extend(items)
            elif isinstance(target, set) and name == "ADDITEMS":
                self.hashing(lambda: target.update(items))
        elif name in ("SETITEM", "SETITEMS"):
            x = len(s) - 2 if name == "SETITEM" else self.marker()
            if x > len(s) or x <= self.fence:
                raise Break("stack underflow")
            items = s[x:]
            if len(items) % 2:
                raise Break("odd number of items for SETITEMS")
            del s[x:]
            target = s[-1]
            if isinstance(target, dict):
                self.hashing(lambda: target.update({items[i]: items[i + 1] for i in range(0, len(items), 2)}))
        elif name == "POP":
            if self.marks and self.marks[-1] == len(s):
                self.marks.pop()
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_to(self.marker())
        elif name == "DUP":
            s.append(self.top())
        elif name == "MARK":
            self.marks.append(len(s))
        elif name in ("BINGET", "LONG_BINGET"):
            self.memo_get(arg)
        elif name in ("BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self.top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name == "STACK_GLOBAL":
            gname = self.pop()
            module = self.pop()
            if isinstance(gname, str) and isinstance(module, str) and type(gname) is str and type(module) is str:
                s.append(self.imported(module, gname, offset))
            elif isinstance(gname, Obj) or isinstance(module, Obj):
                self.out.unresolved.append(("STACK_GLOBAL of computed operands", offset))
                s.append(Obj("unresolved"))
            else:
                raise Break("STACK_GLOBAL requires str")
        elif name in ("EXT1", "EXT2", "EXT4"):
            code = arg if name != "EXT4" else struct.unpack("<i", struct.pack("<I", arg & 0xFFFFFFFF))[0]
            if code <= 0:
                raise Break("EXT specifies code <= 0")
            self.out.unresolved.append((f"extension code {code}", offset))
            s.append(Obj("unresolved"))
        elif name == "REDUCE":
            args = self.pop()
            func = self.pop()
            s.append(Obj("call", func, args))
        elif name == "NEWOBJ":
            args = self.pop()
            cls = self.pop()
            s.append(Obj("call", cls, args))
        elif name == "NEWOBJ_EX":
            self.pop()
            args = self.pop()
            cls = self.pop()
            s.append(Obj("call", cls, args))
        elif name == "OBJ":
            i = self.marker()
            if len(s) - i < 1:
                raise Break("stack underflow")
            args = tuple(self.pop_to(i + 1))
            cls = self.pop()
            s.append(Obj("call", cls, args))
        elif name == "BUILD":
            if len(s) - 2 < self.fence:
                raise Break("stack underflow")
            state = s.pop()
            inst = s[-1]
            if isinstance(inst, Obj) and inst.kind == "array" and not isinstance(state, tuple):
                raise Break("ndarray.__setstate__ takes a tuple")  # joblib put a real array there
            if isinstance(inst, Obj):
                inst.state = state
            if self.joblib:
                self.joblib_build()
        elif name == "BINPERSID":
            pid = self.pop()
            if self.mode == "py":
                raise Break("joblib's unpickler has no persistent_load")
            s.append(Obj("persistent", pid))
        elif name == "PROTO":
            if arg > HIGHEST_PROTOCOL:
                raise Break("unsupported pickle protocol")
            self.proto = arg
        elif name == "FRAME":
            if arg > (1 << 63) - 1:
                raise Break("frame too large")
            self.r.load_frame(arg)
        elif name == "NEXT_BUFFER":
            raise Break("out-of-band buffer without buffers")
        elif name == "READONLY_BUFFER":
            if isinstance(self.top(), str):
                raise Break("memoryview of str")
        else:  # pragma: no cover - every opcode of protocol 0-5 is handled above
            raise Incomplete(f"oracle does not model {name}")

    def hashing(self, fn):
        try:
            return fn()
        except TypeError:
            raise Break("unhashable") from None

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise Break("memo value not found")
        self.stack.append(self.memo[index])

    # line opcodes: C (_pickle.c) or pickle.py rules -------------------------------------------
    def line_op(self, name: str, offset: int) -> None:
        py = self.mode == "py"
        s = self.stack
        if name == "INST" and not py:
            i = self.marker()  # C looks for the mark before reading the class
        line = self.r.readline(partial_ok=py)
        if name == "INT":
            if not py and len(line) < 2:
                raise Break("bad readline")
            if py:
                s.append(False if line == b"00\n" else True if line == b"01\n" else _pylong(line, 0))
            else:
                s.append(c_int(line))
        elif name == "LONG":
            if py:
                body = line[:-1]
                s.append(_pylong(body[:-1] if body.endswith(b"L") else body, 0))
            else:
                if len(line) < 2:
                    raise Break("bad readline")
                if line[-2:-1] == b"L":
                    line = line[:-2] + b"\0"
                s.append(_pylong(_cstr(line), 0))
        elif name == "FLOAT":
            if py:
                try:
                    s.append(float(line[:-1]))
                except ValueError:
                    raise Break("not a float") from None
            else:
                if len(line) < 2:
                    raise Break("bad readline")
                s.append(c_float(line))
        elif name == "GET":
            if not py and len(line) < 2:
                raise Break("bad readline")
            self.memo_get(_pylong(line[:-1] if py else _cstr(line), 10))
        elif name == "PUT":
            if py:
                idx = _pylong(line[:-1], 10)
                value = self.top()
            else:
                if len(line) < 2:
                    raise Break("bad readline")
                value = self.top()
                idx = _pylong(_cstr(line), 10)
            if idx < 0:
                raise Break("negative PUT argument")
            self.memo[idx] = value
        elif name == "STRING":
            body = line[:-1]
            if not (len(body) >= 2 and body[:1] == body[-1:] and body[:1] in (b"'", b'"')):
                raise Break("STRING argument must be quoted")
            try:
                s.append(codecs.escape_decode(body[1:-1])[0].decode("latin-1"))
            except ValueError:
                raise Break("bad STRING escape") from None
        elif name == "UNICODE":
            try:
                s.append(str(line[:-1], "raw-unicode-escape"))
            except UnicodeDecodeError:
                raise Break("bad UNICODE argument") from None
        elif name in ("GLOBAL", "INST"):
            line2 = self.r.readline(partial_ok=py)
            enc = "ascii" if name == "INST" else "utf-8"
            if not py and (len(line) < 2 or len(line2) < 2):
                raise Break("bad readline")
            try:
                module, gname = line[:-1].decode(enc), line2[:-1].decode(enc)
            except UnicodeDecodeError:
                raise Break(f"{name} argument does not decode") from None
            if not module or "\0" in module:
                raise Break("no module can have this name")  # __import__("") raises; no file name holds NUL
            g = self.imported(module, gname, offset)
            if name == "GLOBAL":
                s.append(g)
            else:
                if py:
                    i = self.marker()  # pickle.py imports first, then pops the mark
                s.append(Obj("call", g, tuple(self.pop_to(i))))
        elif name == "PERSID":
            try:
                pid = line[:-1].decode("ascii")
            except UnicodeDecodeError:
                raise Break("persistent id is not ASCII") from None
            if py:
                raise Break("joblib's unpickler has no persistent_load")
            s.append(Obj("persistent", pid))

    # joblib: NumpyArrayWrapper.read after BUILD (joblib/numpy_pickle.py) -------------------------
    def joblib_build(self) -> None:
        inst = self.stack[-1]
        if not (isinstance(inst, Obj) and inst.kind == "call"):
            return
        cls = inst.ref
        if _global_name(cls) == ("copyreg", "_reconstructor") and isinstance(inst.args, tuple) and inst.args:
            cls = inst.args[0]  # copyreg._reconstructor(cls, object, None) makes a cls instance too
        if _global_name(cls) not in JOBLIB_WRAPPERS:
            return
        state = inst.state
        if not isinstance(state, dict):
            raise Incomplete("joblib wrapper state is not a literal dict")
        dtype, shape = state.get("dtype"), state.get("shape")
        itemsize, hasobject = _joblib_dtype(dtype)
        if not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
            raise Incomplete("joblib wrapper shape is not literal")
        count = math.prod(shape) if shape else 1
        if count < 0:
            raise Break("negative array size")
        if self.r.frame is not None and self.r.frame.tell() < len(self.r.frame.getbuffer()):
            self.out.frame_rest_after_array = True
        self.stack.pop()
        if hasobject:
            # joblib 1.6 reads the objects with a fresh, plain pickle._Unpickler on the file (no
            # array hook inside); joblib < 1.5 used pickle.load (C rules): both are followed, the
            # outer stream goes on where the pickle.py one ends.
            older = Machine(self.r.data, self.r.pos, self.r.end, "c").run()
            inner = Machine(self.r.data, self.r.pos, self.r.end, "py", joblib=False).run()
            self.out.nested += [older, inner]
            if not inner.stopped:
                if inner.incomplete:
                    raise Incomplete("nested joblib pickle")
                raise Break("nested joblib pickle failed")
            if inner.file_end != inner.end:
                self.out.nested_frame_past_stop = True  # the outer stream goes on after that frame
            self.r.pos = inner.file_end
        else:
            if state.get("numpy_array_alignment_bytes") is not None:
                pad = self.r.file_read(1)
                n = pad[0] if pad else 0
                if n:
                    self.r.file_read(n)
            want = count * itemsize
            if self.r.pos + want > self.r.end:
                raise Break("array data truncated", structural=True)
            self.r.pos += want
        self.stack.append(Obj("array"))


def _global_name(value: object) -> tuple[str, str] | None:
    if isinstance(value, Obj) and value.kind == "global":
        return value.ref
    return None


def _joblib_dtype(dtype: object) -> tuple[int, bool]:
    import numpy as np

    if not (isinstance(dtype, Obj) and dtype.kind == "call" and _global_name(dtype.ref) in
            {("numpy", "dtype")} and isinstance(dtype.args, tuple) and dtype.args
            and isinstance(dtype.args[0], str)):
        raise Incomplete("joblib dtype is not a literal numpy.dtype call")
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    if len(state) > 3 and state[3] is not None:
        raise Incomplete("record dtype")
    try:
        parsed = np.dtype(dtype.args[0])  # parses a type string; runs nothing from the data
    except Exception:
        raise Break("not a dtype") from None
    itemsize = parsed.itemsize
    if itemsize == 0 and len(state) > 5 and type(state[5]) is int and state[5] > 0:
        itemsize = state[5]
    return itemsize, parsed.hasobject


def run_stream(data: bytes, start: int = 0, end: int | None = None, mode: str = "c",
               joblib: bool = False) -> Stream:
    return Machine(data, start, end, mode, joblib).run()


# -- containers: which streams the real loaders read -------------------------------------------
@dataclass
class FileVerdict:
    streams: list = field(default_factory=list)   # (label, Stream)

    def all_streams(self):
        for label, st in self.streams:
            yield label, st
            for n in _nested(st):
                yield f"{label} > joblib object array", n

    def reachable_imports(self) -> list:
        return [(m, n, label) for label, st in self.all_streams() for (m, n, _) in st.imports]

    def unresolved(self) -> list:
        return [(r, label) for label, st in self.all_streams() for (r, _) in st.unresolved]

    def incomplete(self) -> list:
        return [label for label, st in self.all_streams() if st.incomplete]


def _nested(st: Stream):
    for n in st.nested:
        yield n
        yield from _nested(n)


def analyse_file(data: bytes, depth: int = 0) -> FileVerdict:
    """Every pickle stream a loader in this repo's threat model would read from ``data``:

    * ``pickle.load`` / ``torch.load`` of a non-zip file: the stream at 0 (C rules); when its
      value is torch's legacy magic number, the four pickles ``torch.load`` reads after it;
    * ``joblib.load`` of a non-compressed file: the stream at 0 with pickle.py rules and joblib's
      array reads (compressed: the same on the decompressed bytes);
    * zip archives (``torch.load``, ``numpy.load``): every ``*.pkl`` member and every ``.npy``
      member holding objects, read the lenient way (no CRC check, central-directory sizes);
    * ``numpy.load(allow_pickle=True)``: the pickle after an object array's header;
    * tar and compressed files: their members or contents, as files of their own.
    Raw storage data inside archives is never unpickled by any loader and is not looked at.
    """
    out = FileVerdict()
    if depth > 4:
        return out
    decompressed = _decompress(data)
    if decompressed is not None:
        sub = analyse_file(decompressed, depth + 1)
        out.streams += [(f"<decompressed> {label}", st) for label, st in sub.streams]
        return out
    if data.startswith(b"\x93NUMPY"):
        offset = _npy_object_offset(data)
        if offset is not None:
            out.streams.append(("npy object array", run_stream(data, offset, mode="c")))
        return out
    first = run_stream(data, 0, mode="c")
    out.streams.append(("stream 0 (pickle.load)", first))
    if first.stopped and first.root == TORCH_LEGACY_MAGIC:
        pos = first.end
        for label in ("protocol", "sys info", "main object", "storage keys"):
            st = run_stream(data, pos, mode="c")
            out.streams.append((f"legacy {label}", st))
            if not st.stopped:
                break
            pos = st.end
    out.streams.append(("stream 0 (joblib.load)", run_stream(data, 0, mode="py", joblib=True)))
    for name, member in _zip_members(data):
        if name.endswith((".pkl", ".pickle")):
            out.streams.append((f"zip {name}", run_stream(member, 0, mode="c")))
        elif member.startswith(b"\x93NUMPY") or _container_magic(member):
            sub = analyse_file(member, depth + 1)
            out.streams += [(f"zip {name} > {label}", st) for label, st in sub.streams]
    for name, member in _tar_members(data):
        sub = analyse_file(member, depth + 1)
        out.streams += [(f"tar {name} > {label}", st) for label, st in sub.streams]
    return out


def _container_magic(data: bytes) -> bool:
    return data.startswith((b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


def _decompress(data: bytes) -> bytes | None:
    """gzip/bz2/xz/zlib/lzma, as far as the data decompresses: joblib reads them as a stream and
    takes the end of the input for the end of the data (no end marker or checksum needed), so what
    decompresses before an error is what its unpickler reads. ``None`` if not compressed."""
    try:
        if data.startswith(b"\x1f\x8b"):
            d = zlib.decompressobj(31)
            return d.decompress(data, MAX_INFLATE)
        if data.startswith(b"BZh"):
            return bz2.BZ2Decompressor().decompress(data, MAX_INFLATE)
        if data.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor().decompress(data, MAX_INFLATE)
        if data[:1] == b"x" and len(data) > 1 and (data[0] * 256 + data[1]) % 31 == 0:
            return zlib.decompressobj(15).decompress(data, MAX_INFLATE)
        if data.startswith(b"\x5d\x00\x00"):
            return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data, MAX_INFLATE)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return b""
    return None


def _npy_object_offset(data: bytes) -> int | None:
    import numpy as np
    from numpy.lib import format as npformat

    f = io.BytesIO(data)
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f, max_header_size=1 << 20)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(f, max_header_size=1 << 20)
    except Exception:  # numpy.load raises too: it reads no pickle
        return None
    return f.tell() if np.dtype(dtype).hasobject else None


def _zip_members(data: bytes):
    """Members as a lenient reader sees them: local header for the data offset, central sizes."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error,
            NotImplementedError, UnicodeDecodeError, IndexError):
        return
    for info in infos[:1000]:
        start = info.header_offset
        head = data[start:start + 30]
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            continue
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        raw = data[start + 30 + name_len + extra_len:][:info.compress_size]
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                member = raw
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                member = zlib.decompressobj(-15).decompress(raw, MAX_INFLATE)
            else:
                continue
        except zlib.error:
            continue
        yield info.filename, member


def _tar_members(data: bytes):
    if data[257:262] != b"ustar":
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    yield m.name, data[m.offset_data:m.offset_data + m.size]
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError):
        return
