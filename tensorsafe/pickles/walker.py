"""Pickle opcode walker: reads every opcode, keeps an inert stack, never imports or calls anything.

Written by hand on purpose (safety and speed): ``pickletools.genops`` trusts length fields when it
reads from a file, knows nothing of the memo or the stack, and cannot tell which value an opcode
calls. This walker bounds every read against its buffer, resolves ``STACK_GLOBAL`` operands
through the memo exactly as the unpickler would, and records every import, call and mutation.
It mirrors CPython's C unpickler (stack fences at marks, ``_compat_pickle`` import fixing) and
is at least as lenient, so nothing the real loader would execute can hide behind an early error.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import gc
import mmap
import struct
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from tensorsafe.limits import MAX_OPCODES, MAX_MEMO_ENTRIES, MAX_VALUES
from tensorsafe.errors import LimitExceeded, ParseError, PickleParseError
from tensorsafe.pickles.values import BytesRef, Call, Global, OutOfBand, PersistentRef, Unresolved

INLINE_BYTES_LIMIT = 1 << 20
"""Bytes arguments longer than this stay in the source buffer as a ``BytesRef``."""
DEADLINE_CHECK_INTERVAL = 1 << 12
_CHUNK_COUNTS = tuple(range(1, DEADLINE_CHECK_INTERVAL + 1))
"""The iteration numbers of one chunk of the walk's loop, made once: iterating a ``range`` makes
(and frees) an int object per opcode."""
HIGHEST_PROTOCOL = 5
MAX_FRAMING_NOTES = 16
"""Framing divergences recorded per stream (one is enough to fail it; the rest are detail)."""

_I4 = struct.Struct("<i").unpack_from
_U4 = struct.Struct("<I").unpack_from
_U2 = struct.Struct("<H").unpack_from
_U8 = struct.Struct("<Q").unpack_from
_F8 = struct.Struct(">d").unpack_from


class BuildHook(Protocol):
    """Called after ``BUILD``; returns the offset to resume at when raw data follows (joblib)."""

    def __call__(self, obj: object, pos: int, frame_end: int) -> int | None: ...


@dataclass
class PickleTrace:
    """Everything one pickle stream would import, call and modify, without running it."""

    start: int
    end: int = 0
    protocol: int = 0
    root: object = None
    stopped: bool = False
    opcodes: int = 0
    globals: list[Global | Unresolved] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    modified: list[tuple[int, object, str]] = field(default_factory=list)
    class_changes: list[tuple[int, object]] = field(default_factory=list)
    """(offset, new class) for each BUILD whose state assigns ``__class__``: the object turns into
    that class after it was built (no pickler writes this; joblib then reads it as an array wrapper)."""
    persistent: list[PersistentRef] = field(default_factory=list)
    out_of_band: list[int] = field(default_factory=list)
    frame_end: int = 0
    """Where the last FRAME read before STOP ends: a loader reading frames from a file (pickle.py's
    unframer, joblib's nested loads) goes on from there when it lies past STOP."""
    framing: list[tuple[int, str]] = field(default_factory=list)
    """(offset, what) wherever CPython's unpicklers read this stream's frames differently (see
    ``_op_frame``); the walk itself reads on as ``_pickle.loads`` does."""
    deep_key_offset: int | None = None
    """Where a dict key or set item nested past MAX_KEY_NESTING was met (it may crash a loader)."""
    error: PickleParseError | LimitExceeded | None = None

    @property
    def truncated(self) -> bool:
        return isinstance(self.error, PickleParseError) and getattr(self.error, "truncated", False)


class _Truncated(Exception):
    pass


class _Invalid(Exception):
    pass


def _fix_import(module: str, name: str) -> tuple[str, str]:
    """Apply the Python 2 name fixes the unpickler applies (``__builtin__`` -> ``builtins``, ...)."""
    fixed = _compat_pickle.NAME_MAPPING.get((module, name))
    if fixed is not None:
        return fixed
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _pop_fenced(stack: list, fence: int) -> object:
    if len(stack) <= fence:
        raise _Invalid("unpickling stack underflow")
    return stack.pop()


def _decode_quoted_string(raw: bytes) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b"'", b'"'):
        try:
            return codecs.escape_decode(raw[1:-1])[0].decode("latin-1")
        except ValueError as exc:
            raise _Invalid(f"bad STRING argument: {exc}") from None
    raise _Invalid("the STRING opcode argument must be quoted")


def _c_string(raw: bytes) -> bytes:
    """C's load_int/load_long/load_float/load_get/load_put parse the line as a C string: a NUL ends it."""
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


def _parse_int(raw: bytes, what: str) -> int:
    raw = _c_string(raw)
    try:
        return int(raw, 0)
    except ValueError:
        try:
            return int(raw, 10)
        except ValueError:
            raise _Invalid(f"bad {what} argument {raw[:40]!r}") from None


class Walker:
    """Walks one pickle stream in ``data[start:end]``. Use :func:`walk`."""

    def __init__(self, data, start: int, end: int, *, max_opcodes: int = MAX_OPCODES,
                 max_memo: int = MAX_MEMO_ENTRIES, deadline: float | None = None,
                 build_hook: BuildHook | None = None, max_values: int = MAX_VALUES):
        self.data = data
        self.end = end
        self.max_opcodes = max_opcodes
        self.max_memo = max_memo
        self.max_values = max_values
        self.held = 0
        """Values moved off the stack into containers and calls by the rare opcodes (see MAX_VALUES)."""
        self.deadline = deadline
        self.build_hook = build_hook
        self.trace = PickleTrace(start=start)
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.frame_end = start

    # -- reading arguments ---------------------------------------------------------------------
    def _need(self, pos: int, n: int) -> None:
        if n < 0 or pos + n > self.end:
            raise _Truncated(f"needs {n} bytes at offset {pos}, stream ends at {self.end}")
        if pos < self.frame_end < pos + n:
            self._diverge(pos, f"an argument read at offset {pos} runs {pos + n - self.frame_end:,} bytes past the "
                          "end of its frame: pickle.py stops there, the C unpickler reads on (and from a file "
                          "object may skip the frame's last bytes)")

    def _line(self, pos: int) -> tuple[bytes, int]:
        """A newline-ended argument (see :meth:`_line_bounds`)."""
        stop, after = self._line_bounds(pos)
        return bytes(self.data[pos:stop]), after

    def _c_line(self, pos: int) -> tuple[bytes, int]:
        """A newline-ended argument up to its first NUL (see :func:`_c_string`): all that C's load_int,
        load_long, load_float, load_get and load_put parse, and all that is copied (a line can run on
        through gigabytes of zero tensor data)."""
        stop, after = self._line_bounds(pos)
        nul = self.data.find(b"\0", pos, stop)
        return bytes(self.data[pos:stop if nul < 0 else nul]), after

    def _line_bounds(self, pos: int) -> tuple[int, int]:
        """Where the newline-ended argument at ``pos`` stops, and where the next opcode starts. At the
        end of the stream, pickle.py's readline returns the rest without a newline and drops its last
        byte: an import cut short there still imports its module, so the walker reads it the same way
        (and fails at the next opcode). One ``find`` (memchr), however long the line."""
        nl = self.data.find(b"\n", pos, self.end)
        if nl < 0:
            if pos >= self.end:
                raise _Truncated("line argument has no newline before the end of the stream")
            return self.end - 1, self.end
        if pos < self.frame_end <= nl:
            self._diverge(pos, f"a text argument read at offset {pos} runs past the end of its frame: pickle.py "
                          "stops there, the C unpickler reads on (from a file object, from after the frame)")
        return nl, nl + 1

    def _diverge(self, offset: int, message: str) -> None:
        if len(self.trace.framing) < MAX_FRAMING_NOTES:
            self.trace.framing.append((offset, message))

    def _counted(self, pos: int, n: int, kind: str, as_text: bool):
        self._need(pos, n)
        if as_text:
            try:
                return str(self.data[pos:pos + n], "utf-8", "surrogatepass"), pos + n
            except UnicodeDecodeError as exc:
                raise _Invalid(f"{kind} is not valid UTF-8: {exc.reason}") from None
        if n > INLINE_BYTES_LIMIT:
            return BytesRef(pos, n, kind), pos + n
        return bytes(self.data[pos:pos + n]), pos + n

    # -- stack helpers -------------------------------------------------------------------------
    @property
    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def _pop_mark(self) -> list:
        if not self.marks:
            raise _Invalid("could not find MARK")
        mark = self.marks.pop()
        items = self.stack[mark:]
        del self.stack[mark:]
        self.held += len(items)
        return items

    def _pop(self) -> object:
        """Pop above the fence: the value moves into what the opcode builds (it stays alive)."""
        self.held += 1
        return _pop_fenced(self.stack, self.fence)

    def _top(self) -> object:
        if len(self.stack) <= self.fence:
            raise _Invalid("unpickling stack underflow")
        return self.stack[-1]

    def _key(self, item: object, offset: int) -> object:
        key = _safe_key(item)
        if isinstance(key, _IdentityKey) and self.trace.deep_key_offset is None:
            self.trace.deep_key_offset = offset
        return key

    def _memo_put(self, index: int, offset: int) -> None:
        if index < 0:
            raise _Invalid("negative PUT argument")
        if len(self.memo) >= self.max_memo and index not in self.memo:
            raise LimitExceeded("MAX_MEMO_ENTRIES", self.max_memo,
                                f"memo grows past {self.max_memo:,} entries", location=f"@{offset}")
        self.memo[index] = self._top()

    def _memo_get(self, index: int) -> None:
        try:
            self.stack.append(self.memo[index])
        except KeyError:
            raise _Invalid(f"memo value not found at index {index}") from None

    def _import(self, module: str, name: str, offset: int, opcode: str) -> Global:
        module, name = _fix_import(module, name)
        g = Global(module, name, offset, opcode)
        self.trace.globals.append(g)
        return g

    def _call(self, func: object, args: object, kind: str, offset: int, kwargs: object = None) -> Call:
        c = Call(func, args, kind, offset, kwargs)
        self.trace.calls.append(c)
        return c

    def _modify(self, target: object, offset: int, opcode: str) -> None:
        if isinstance(target, (Global, Unresolved)):
            self.trace.modified.append((offset, target, opcode))

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> PickleTrace:
        trace = self.trace
        pos = trace.start
        try:
            pos = self._loop(pos)
        except _Truncated as exc:
            trace.error = _parse_error(f"truncated pickle: {exc}", self._op_offset, truncated=True)
        except _Invalid as exc:
            trace.error = _parse_error(str(exc), self._op_offset, truncated=False)
        except LimitExceeded as exc:
            trace.error = exc
        except PickleParseError as exc:  # raised by a build hook for data it could not follow
            trace.error = _parse_error(exc.message, exc.offset, truncated=False)
        except ParseError as exc:
            trace.error = _parse_error(exc.message, self._op_offset, truncated=False)
        except RecursionError:  # cannot happen in the loop itself; kept so a bug never passes as clean
            trace.error = _parse_error("recursion while walking pickle", self._op_offset, truncated=False)
        trace.end = pos if trace.stopped else self._op_offset
        return trace

    _op_offset = 0

    def _loop(self, pos: int) -> int:
        # One long function on purpose: locals, an if-chain ordered by how often each opcode starts
        # an iteration in real checkpoints (torch.save writes protocol 2: BINGET, BININT1,
        # BINUNICODE, TUPLE, REDUCE, MARK, ...; its puts are fused, see below) and the
        # common opcodes inlined, bounds and fence checks included, keep the per-opcode cost low
        # (this loop is the scanner's hot path). Every check the helpers make is made here too;
        # on a failed check the helper is called, or its error raised, so errors read the same.
        # REDUCE and BINPERSID build their Call / PersistentRef without the __init__ call (every
        # slot set here; tests/pickles/test_walker_fast_paths.py checks them against the constructors).
        #
        # Invariants that make it fast:
        # - ``fence`` is always ``marks[-1] if marks else 0``: set where the loop changes ``marks``,
        #   recomputed after every helper (helpers may pop marks).
        # - ``pos - 1`` is the offset of the opcode being run whenever anything raises: a branch
        #   moves ``pos`` past its argument only after its last check (errors report that offset).
        # - A value-building opcode followed by LONG_BINPUT or BINPUT (torch writes one after nearly
        #   every value) runs the put in the same iteration ("fused"), only when the put cannot fail:
        #   it has its argument bytes, the memo has room, and the stack top is the value just pushed,
        #   so it is above the fence. Otherwise the put runs as its own opcode.
        # - Iterations run in chunks of DEADLINE_CHECK_INTERVAL (``for count in _CHUNK_COUNTS``: the
        #   loop counts them, with ints made once); the opcode budget and the deadline are checked
        #   between chunks, on ``done + fused`` opcodes (so at least every DEADLINE_CHECK_INTERVAL
        #   opcodes).
        # - ``end`` is the end of the stream, or inside a FRAME the end of that frame: a read that
        #   crosses it takes the slow path (``_need``), which notes a read straddling the frame's
        #   end, and an opcode starting at or after it leaves the frame (``end = stream_end``).
        #   Without frames (protocol 2, torch's legacy files) this costs nothing.
        data, stack, memo, marks, trace = self.data, self.stack, self.memo, self.marks, self.trace
        stream_end = end = self.end
        append, pop, mark = stack.append, stack.pop, marks.append
        add_call, add_ref = trace.calls.append, trace.persistent.append
        new = object.__new__
        limit = self.max_opcodes
        max_memo = self.max_memo
        fence = marks[-1] if marks else 0
        put_end = end - 5  # a fused put needs pos <= put_end (LONG_BINPUT: opcode byte, 4 argument bytes)
        fused = 0  # opcodes run in another opcode's iteration: the opcode count is iterations + fused
        moved = 0  # values the hot opcodes moved off the stack into tuples and calls (see MAX_VALUES)
        done = 0  # iterations of the chunks already run
        try:
            while True:
                # iterations run in chunks: the loop counts them, the budget is checked between chunks
                for count in _CHUNK_COUNTS:  # (counted from the chunk's start: ``done + count``)
                    if pos >= end:
                        if pos >= stream_end:
                            pos += 1  # errors report ``pos - 1``: here, the end of the stream
                            raise _Truncated("stream ends before STOP")
                        end = stream_end  # past the end of the frame
                        put_end = end - 5
                    op = data[pos]
                    pos += 1
                    if op == 0x68:  # h BINGET
                        if pos >= end:
                            self._need(pos, 1)
                        try:
                            append(memo[data[pos]])
                        except KeyError:
                            self._memo_get(data[pos])
                        pos += 1
                    elif op == 0x4B:  # K BININT1
                        if pos >= end:
                            self._need(pos, 1)
                        append(data[pos])
                        pos += 1
                    elif op == 0x58:  # X BINUNICODE
                        first = pos + 4  # (each int computed once: past 256, every sum is a new object)
                        if first > end:
                            self._need(pos, 4)
                        n = _U4(data, pos)[0]
                        after = first + n
                        if after > end:
                            self._need(first, n)
                        try:
                            value = data[first:after].decode("utf-8", "surrogatepass")
                        except UnicodeDecodeError:
                            value = self._counted(first, n, "BINUNICODE", True)[0]
                        append(value)
                        pos = after
                        if pos <= put_end and len(memo) < max_memo:
                            if data[pos] == 0x72:
                                memo[_U4(data, pos + 1)[0]] = value
                                pos += 5
                                fused += 1
                            elif data[pos] == 0x71:
                                memo[data[pos + 1]] = value
                                pos += 2
                                fused += 1
                    elif op == 0x74:  # t TUPLE
                        if not marks:
                            self._pop_mark()
                        marks.pop()
                        value = tuple(stack[fence:])
                        moved += len(value)
                        del stack[fence:]
                        fence = marks[-1] if marks else 0
                        append(value)
                        if pos <= put_end and len(memo) < max_memo:
                            if data[pos] == 0x72:
                                memo[_U4(data, pos + 1)[0]] = value
                                pos += 5
                                fused += 1
                            elif data[pos] == 0x71:
                                memo[data[pos + 1]] = value
                                pos += 2
                                fused += 1
                    elif op == 0x52:  # R REDUCE
                        if len(stack) - fence < 2:
                            raise _Invalid("unpickling stack underflow")
                        args = pop()
                        moved += 2
                        value = new(Call)  # Call(func, args, "reduce", offset) without a Python __init__ call
                        value.func = pop()
                        value.args = args
                        value.kind = "reduce"
                        value.offset = pos - 1
                        value.kwargs = value.state = value.items = value.appended = None
                        add_call(value)
                        append(value)
                        if pos <= put_end and len(memo) < max_memo:
                            if data[pos] == 0x72:
                                memo[_U4(data, pos + 1)[0]] = value
                                pos += 5
                                fused += 1
                            elif data[pos] == 0x71:
                                memo[data[pos + 1]] = value
                                pos += 2
                                fused += 1
                    elif op == 0x28:  # ( MARK
                        fence = len(stack)
                        mark(fence)
                        if pos < end and data[pos] == 0x28:  # torch opens two marks in a row
                            mark(fence)
                            pos += 1
                            fused += 1
                    elif op == 0x72:  # r LONG_BINPUT
                        if pos + 4 > end:
                            self._need(pos, 4)
                        if len(stack) > fence and len(memo) < max_memo:
                            memo[_U4(data, pos)[0]] = stack[-1]
                        else:
                            self._memo_put(_U4(data, pos)[0], pos - 1)
                        pos += 4
                    elif op == 0x4E:  # N NONE
                        append(None)
                    elif op == 0x51:  # Q BINPERSID
                        if len(stack) <= fence:
                            raise _Invalid("unpickling stack underflow")
                        value = new(PersistentRef)  # PersistentRef(pid, offset), as for REDUCE's Call
                        value.pid = pop()
                        value.offset = pos - 1
                        add_ref(value)
                        append(value)
                    elif op == 0x89:  # NEWFALSE
                        append(False)
                    elif op == 0x29:  # ) EMPTY_TUPLE
                        append(())
                    elif op == 0x85:  # TUPLE1
                        if len(stack) <= fence:
                            raise _Invalid("unpickling stack underflow")
                        value = (pop(),)
                        moved += 1
                        append(value)
                        if pos <= put_end and len(memo) < max_memo:
                            if data[pos] == 0x72:
                                memo[_U4(data, pos + 1)[0]] = value
                                pos += 5
                                fused += 1
                            elif data[pos] == 0x71:
                                memo[data[pos + 1]] = value
                                pos += 2
                                fused += 1
                    elif op == 0x86:  # TUPLE2
                        if len(stack) - fence < 2:
                            raise _Invalid("unpickling stack underflow")
                        value = pop()
                        value = (pop(), value)
                        moved += 2
                        append(value)
                        if pos <= put_end and len(memo) < max_memo:
                            if data[pos] == 0x72:
                                memo[_U4(data, pos + 1)[0]] = value
                                pos += 5
                                fused += 1
                            elif data[pos] == 0x71:
                                memo[data[pos + 1]] = value
                                pos += 2
                                fused += 1
                    elif op == 0x4D:  # M BININT2
                        if pos + 2 > end:
                            self._need(pos, 2)
                        append(_U2(data, pos)[0])
                        pos += 2
                    elif op == 0x71:  # q BINPUT
                        if pos >= end:
                            self._need(pos, 1)
                        if len(stack) > fence and len(memo) < max_memo:
                            memo[data[pos]] = stack[-1]
                        else:
                            self._memo_put(data[pos], pos - 1)
                        pos += 1
                    elif op == 0x94:  # MEMOIZE
                        if len(stack) > fence and len(memo) < max_memo:
                            memo[len(memo)] = stack[-1]
                        else:
                            self._memo_put(len(memo), pos - 1)
                    elif op == 0x8C:  # SHORT_BINUNICODE
                        if pos >= end:
                            self._need(pos, 1)
                        n = data[pos]
                        if pos + 1 + n > end:
                            self._need(pos + 1, n)
                        try:
                            append(data[pos + 1:pos + 1 + n].decode("utf-8", "surrogatepass"))
                        except UnicodeDecodeError:
                            append(self._counted(pos + 1, n, "SHORT_BINUNICODE", True)[0])
                        pos += 1 + n
                    elif op == 0x6A:  # j LONG_BINGET
                        if pos + 4 > end:
                            self._need(pos, 4)
                        try:
                            append(memo[_U4(data, pos)[0]])
                        except KeyError:
                            self._memo_get(_U4(data, pos)[0])
                        pos += 4
                    elif op == 0x4A:  # J BININT
                        if pos + 4 > end:
                            self._need(pos, 4)
                        append(_I4(data, pos)[0])
                        pos += 4
                    elif op == 0x75:  # u SETITEMS
                        self._setitems(self._pop_mark(), pos - 1)
                        fence = marks[-1] if marks else 0
                    elif op == 0x87:  # TUPLE3
                        if len(stack) - fence < 3:
                            raise _Invalid("unpickling stack underflow")
                        c = pop()
                        b = pop()
                        value = (pop(), b, c)
                        moved += 3
                        append(value)
                        if pos <= put_end and len(memo) < max_memo:
                            if data[pos] == 0x72:
                                memo[_U4(data, pos + 1)[0]] = value
                                pos += 5
                                fused += 1
                            elif data[pos] == 0x71:
                                memo[data[pos + 1]] = value
                                pos += 2
                                fused += 1
                    elif op == 0x88:  # NEWTRUE
                        append(True)
                    elif op == 0x2E:  # . STOP
                        if done + count + fused > limit:  # the chunk checks run late; the limit is exact
                            self._check_budget(done + count + fused, limit, pos)
                        self._check_values(len(stack) + len(memo) + len(marks) + self.held + moved, pos)
                        trace.root = _pop_fenced(stack, fence)
                        trace.stopped = True
                        trace.opcodes = done + count + fused
                        trace.frame_end = self.frame_end
                        if pos < self.frame_end:
                            self._diverge(pos - 1, f"STOP leaves {self.frame_end - pos:,} bytes of its frame unread: "
                                          "the next read of the same file starts after STOP (C, buffered file) or "
                                          "after the frame (pickle.py, C on other file objects)")
                        return pos
                    else:
                        pos = self._rare(op, pos)
                        fence = marks[-1] if marks else 0
                        if op == 0x95:  # FRAME
                            end = self.frame_end
                            put_end = end - 5
                done += DEADLINE_CHECK_INTERVAL
                pos += 1  # a budget error reports ``pos - 1``: the opcode the walk stops before
                self._check_budget(done + fused, limit, pos)
                self._check_values(len(stack) + len(memo) + len(marks) + self.held + moved, pos)
                pos -= 1
        except BaseException:
            self._op_offset = pos - 1  # where the error is reported: the opcode that raised
            raise

    def _check_values(self, held: int, pos: int) -> None:
        if held > self.max_values:
            raise LimitExceeded("MAX_VALUES", self.max_values, f"the pickle holds more than {self.max_values:,} values "
                                "at once (its memory would grow with its opcode count)", location=f"@{pos - 1}")

    def _check_budget(self, count: int, limit: int, pos: int) -> None:
        if count > limit:
            raise LimitExceeded("MAX_OPCODES", limit, f"more than {limit:,} opcodes", location=f"@{pos - 1}")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LimitExceeded("MAX_SCAN_SECONDS", 0, "time limit reached while walking the pickle",
                                location=f"@{pos - 1}")

    def _rare(self, op: int, pos: int) -> int:
        handler = _RARE.get(op)
        if handler is None:
            raise _Invalid(f"invalid opcode 0x{op:02x}")
        return handler(self, pos)

    # -- container mutations -------------------------------------------------------------------
    def _setitems(self, items: list, offset: int) -> None:
        if len(items) % 2:
            raise _Invalid("odd number of items for SETITEMS")
        target = self._top()
        if isinstance(target, dict):
            key = self._key
            try:
                for k, v in zip(items[::2], items[1::2]):
                    target[k if type(k) is str else key(k, offset)] = v  # _key keeps a str as it is
            except TypeError as exc:
                raise _Invalid(f"unhashable dict key: {exc}") from None
        elif isinstance(target, Call):
            if target.items is None:
                target.items = []
            target.items.extend(zip(items[::2], items[1::2]))
        else:
            self._modify(target, offset, "SETITEMS")

    def _append_items(self, items: list, offset: int, opcode: str) -> None:
        target = self._top()
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, Call):
            if target.appended is None:
                target.appended = []
            target.appended.extend(items)
        else:
            self._modify(target, offset, opcode)


def _parse_error(message: str, offset: int, *, truncated: bool) -> PickleParseError:
    err = PickleParseError(message, offset=offset, location=f"@{offset}")
    err.truncated = truncated  # type: ignore[attr-defined]
    return err


# -- rare opcodes: one small handler each, (walker, pos after opcode) -> new pos ---------------
def _op_proto(w: Walker, pos: int) -> int:
    w._need(pos, 1)
    proto = w.data[pos]
    if proto > HIGHEST_PROTOCOL:
        raise _Invalid(f"unsupported pickle protocol: {proto}")
    w.trace.protocol = proto
    return pos + 1


def _op_frame(w: Walker, pos: int) -> int:
    """Where CPython's unpicklers part ways on frames (3.11 and 3.12; 3.13 before 3.13.15 and 3.14
    before 3.14.7, whose ``_pickle`` refuses a read across a frame's end and a nested FRAME as
    pickle.py does, gh-154848; a frame past the data or past STOP still splits them):

    - ``_pickle`` from bytes (``loads``, ``torch.load`` of a zip member) ignores frames once it
      has checked that the whole frame is there; from a file object it reads the frame into its
      buffer, and a read that crosses the buffer's end (a frame's end) drops the rest of the
      buffer and reads afresh from the file, after the frame (``_Unpickler_ReadImpl``,
      ``_Unpickler_Readline``; not ``_Unpickler_ReadInto``, nor a file with ``peek`` that had the
      bytes at hand).
    - ``pickle.py`` (``joblib.load``) reads a frame into a ``BytesIO``: a read that crosses its end,
      or a FRAME before its end, raises; a frame longer than the rest of the file is read short
      and its opcodes run (where ``_pickle`` refuses the FRAME); after STOP the file stands after
      the frame.

    So when no read crosses a frame's end, no FRAME starts inside another, no frame runs past the
    data or past STOP, every loader reads the stream straight through, as this walker does;
    anything else is recorded in ``trace.framing`` (PK-S06) and the walk reads on as
    ``_pickle.loads`` does (a frame past the end: as pickle.py, which runs it).
    """
    w._need(pos, 8)
    size = _U8(w.data, pos)[0]
    if size > sys.maxsize:  # both unpicklers refuse it (OverflowError, ValueError)
        raise _Invalid(f"FRAME length {size:,} exceeds the largest size a loader accepts")
    body = pos + 8
    if body < w.frame_end:
        w._diverge(pos - 1, f"FRAME begins {w.frame_end - body:,} bytes before the end of the current frame: "
                   "pickle.py refuses it, the C unpickler reads on")
    if size > w.end - body:
        w._diverge(pos - 1, f"FRAME declares {size:,} bytes where {w.end - body:,} remain: the C unpickler "
                   "refuses it, pickle.py runs the short frame")
    w.frame_end = min(w.end, body + size)
    return body


def _op_global(w: Walker, pos: int) -> int:
    offset = pos - 1
    module, pos = w._line(pos)
    if pos >= w.end:  # pickle.py reads the missing name as '' and still imports the module first
        w._import(_utf8(module, "GLOBAL"), "", offset, "GLOBAL")
        raise _Truncated("GLOBAL has no name line before the end of the stream")
    name, pos = w._line(pos)
    w.stack.append(w._import(_utf8(module, "GLOBAL"), _utf8(name, "GLOBAL"), offset, "GLOBAL"))
    return pos


def _op_inst(w: Walker, pos: int) -> int:
    offset = pos - 1
    module, pos = w._line(pos)
    name, pos = w._line(pos)
    cls = w._import(_utf8(module, "INST"), _utf8(name, "INST"), offset, "INST")
    w.stack.append(w._call(cls, tuple(w._pop_mark()), "inst", offset))
    return pos


def _op_stack_global(w: Walker, pos: int) -> int:
    name = w._pop()
    module = w._pop()
    if isinstance(module, str) and isinstance(name, str):
        w.stack.append(w._import(module, name, pos - 1, "STACK_GLOBAL"))
        return pos
    symbolic = (Global, Unresolved, Call, PersistentRef, BytesRef, OutOfBand)
    if isinstance(module, symbolic) or isinstance(name, symbolic):
        u = Unresolved(f"STACK_GLOBAL operands computed at load time ({_kind(module)}, {_kind(name)})", pos - 1,
                       "STACK_GLOBAL")
        w.trace.globals.append(u)
        w.stack.append(u)
        return pos
    raise _Invalid("STACK_GLOBAL requires str operands")


def _op_ext(size: int):
    def handler(w: Walker, pos: int) -> int:
        w._need(pos, size)
        code = int.from_bytes(w.data[pos:pos + size], "little")
        if code <= 0:
            raise _Invalid("EXT specifies code <= 0")
        u = Unresolved(f"copyreg extension code {code}", pos - 1, f"EXT{size}")
        w.trace.globals.append(u)
        w.stack.append(u)
        return pos + size
    return handler


def _op_newobj(w: Walker, pos: int) -> int:
    args = w._pop()
    cls = w._pop()
    w.stack.append(w._call(cls, args, "newobj", pos - 1))
    return pos


def _op_newobj_ex(w: Walker, pos: int) -> int:
    kwargs = w._pop()
    args = w._pop()
    cls = w._pop()
    w.stack.append(w._call(cls, args, "newobj_ex", pos - 1, kwargs))
    return pos


def _op_obj(w: Walker, pos: int) -> int:
    items = w._pop_mark()
    if not items:
        raise _Invalid("OBJ without a class")
    w.stack.append(w._call(items[0], tuple(items[1:]), "obj", pos - 1))
    return pos


def _op_build(w: Walker, pos: int) -> int:
    state = w._pop()
    obj = w._top()
    for installed in installed_setstates(state):
        w.trace.calls.append(Call(installed, None, "setstate", pos - 1))
    for cls in _state_values(state, "__class__"):
        w.trace.class_changes.append((pos - 1, cls))
    if isinstance(obj, Call):
        obj.state = state
    else:
        w._modify(obj, pos - 1, "BUILD")
    if w.build_hook is not None:
        resume = w.build_hook(obj, pos, w.frame_end)
        if resume is not None:
            if resume > w.end:
                raise _Truncated("array data after BUILD runs past the end of the stream")
            return resume
    return pos


def installed_setstates(state: object) -> list[object]:
    """What a BUILD state (or torch's ``_set_obj_state``) may put under ``__setstate__``, in the
    instance dict or by setattr from a slot-state dict: the unpickler's next BUILD on that object
    looks ``__setstate__`` up on the instance and calls it, so each value counts as called."""
    return _state_values(state, "__setstate__")


def _state_values(state: object, attribute: str) -> list[object]:
    """Values a state dict (or (dict, slot dict) pair) stores under ``attribute``, or under a key
    computed at load time (``builtins.str(...)`` may return any name). A mapping built by a call
    (``OrderedDict()`` + SETITEMS) is read the same way; one whose contents came in the call's
    arguments (``dict(pairs)``) is itself returned: what it holds is not in the file."""
    found: list[object] = []
    for part in (state if type(state) is tuple and len(state) == 2 else (state,)):
        if type(part) is dict:
            pairs = part.items()
        elif isinstance(part, Call) and (part.items or _fills_a_mapping(part)):
            pairs = part.items or ()
            if _fills_a_mapping(part):
                found.append(part)
        else:
            continue
        found.extend(v for k, v in pairs if k == attribute or isinstance(k, _COMPUTED))
    return found


def _fills_a_mapping(call: Call) -> bool:
    """A call that may return a dict filled from its arguments (a computed callee may be anything)."""
    if call.kind == "setstate" or not call.args:
        return False
    func = call.func
    return not isinstance(func, Global) or (func.module, func.name) in _MAPPING_MAKERS


_COMPUTED = (Call, Global, Unresolved, PersistentRef)
_MAPPING_MAKERS = frozenset({("builtins", "dict"), ("collections", "OrderedDict"), ("collections", "Counter"),
                             ("collections", "defaultdict"), ("copyreg", "_reconstructor")})


def _op_persid(w: Walker, pos: int) -> int:
    """A protocol-0 persistent id: an ASCII line. A line longer than :data:`INLINE_BYTES_LIMIT` stays
    in the buffer (a ``BytesRef``, like a long bytes argument): a safetensors file whose header
    length starts with ``P`` reads on through its tensor data to the first newline, gigabytes that
    copying and decoding would spend seconds and memory on."""
    offset = pos - 1
    stop, after = w._line_bounds(pos)
    if not _is_ascii(w.data, pos, stop):
        raise _Invalid("persistent IDs in protocol 0 must be ASCII strings")
    pid = BytesRef(pos, stop - pos, "persistent id") if stop - pos > INLINE_BYTES_LIMIT \
        else str(w.data[pos:stop], "ascii")
    pos = after
    ref = PersistentRef(pid, offset)
    w.trace.persistent.append(ref)
    w.stack.append(ref)
    return pos


ASCII_CHUNK_BYTES = 1 << 20


def _is_ascii(data: bytes | mmap.mmap | memoryview, start: int, stop: int) -> bool:
    """``data[start:stop]`` is ASCII, checked a chunk at a time (never one copy of a long line)."""
    return all(bytes(data[i:min(i + ASCII_CHUNK_BYTES, stop)]).isascii() for i in range(start, stop, ASCII_CHUNK_BYTES))


def _op_binpersid(w: Walker, pos: int) -> int:
    ref = PersistentRef(w._pop(), pos - 1)
    w.trace.persistent.append(ref)
    w.stack.append(ref)
    return pos


def _op_setitem(w: Walker, pos: int) -> int:
    value = w._pop()
    key = w._pop()
    w._setitems([key, value], pos - 1)
    return pos


def _op_append(w: Walker, pos: int) -> int:
    w._append_items([w._pop()], pos - 1, "APPEND")
    return pos


def _op_appends(w: Walker, pos: int) -> int:
    w._append_items(w._pop_mark(), pos - 1, "APPENDS")
    return pos


def _op_additems(w: Walker, pos: int) -> int:
    items = w._pop_mark()
    target = w._top()
    if isinstance(target, set):
        try:
            target.update(w._key(x, pos - 1) for x in items)
        except TypeError as exc:
            raise _Invalid(f"unhashable set item: {exc}") from None
    elif isinstance(target, Call):
        w.trace.calls.append(Call(target, tuple(items), "additems", pos - 1))
    else:
        w._modify(target, pos - 1, "ADDITEMS")
    return pos


def _op_frozenset(w: Walker, pos: int) -> int:
    items = w._pop_mark()
    try:
        w.stack.append(frozenset(w._key(x, pos - 1) for x in items))
    except TypeError as exc:
        raise _Invalid(f"unhashable frozenset item: {exc}") from None
    return pos


def _op_dict(w: Walker, pos: int) -> int:
    items = w._pop_mark()
    if len(items) % 2:
        raise _Invalid("odd number of items for DICT")
    try:
        w.stack.append({w._key(items[i], pos - 1): items[i + 1] for i in range(0, len(items), 2)})
    except TypeError as exc:
        raise _Invalid(f"unhashable dict key: {exc}") from None
    return pos


def _op_pop(w: Walker, pos: int) -> int:
    if len(w.stack) > w.fence:
        w.stack.pop()
    elif w.marks:
        w.marks.pop()
    else:
        raise _Invalid("unpickling stack underflow")
    return pos


def _op_pop_mark(w: Walker, pos: int) -> int:
    w._pop_mark()
    return pos


def _op_dup(w: Walker, pos: int) -> int:
    w.stack.append(w._top())
    return pos


def _op_get(w: Walker, pos: int) -> int:
    line, pos = w._c_line(pos)
    w._memo_get(_parse_int(line, "GET"))
    return pos


def _op_put(w: Walker, pos: int) -> int:
    offset = pos - 1
    line, pos = w._c_line(pos)
    w._memo_put(_parse_int(line, "PUT"), offset)
    return pos


def _op_int(w: Walker, pos: int) -> int:
    line, pos = w._c_line(pos)
    line = _c_string(line)
    if not line.strip():  # C's strtol reads an empty line (or one cut by a NUL) as 0
        w.stack.append(0)
        return pos
    w.stack.append(False if line == b"00" else True if line == b"01" else _parse_int(line, "INT"))
    return pos


def _op_long(w: Walker, pos: int) -> int:
    line, pos = w._c_line(pos)
    line = _c_string(line)
    if line.endswith(b"L"):
        line = line[:-1]
    w.stack.append(_parse_int(line, "LONG"))
    return pos


def _op_float(w: Walker, pos: int) -> int:
    line, pos = w._c_line(pos)
    try:
        w.stack.append(float(_c_string(line)))
    except ValueError:
        raise _Invalid(f"bad FLOAT argument {line[:40]!r}") from None
    return pos


def _op_binfloat(w: Walker, pos: int) -> int:
    w._need(pos, 8)
    w.stack.append(_F8(w.data, pos)[0])
    return pos + 8


def _op_long_n(size: int):
    def handler(w: Walker, pos: int) -> int:
        w._need(pos, size)
        n = w.data[pos] if size == 1 else _I4(w.data, pos)[0]
        if n < 0:
            raise _Invalid("LONG pickle has negative byte count")
        w._need(pos + size, n)
        w.stack.append(int.from_bytes(w.data[pos + size:pos + size + n], "little", signed=True))
        return pos + size + n
    return handler


def _op_string(w: Walker, pos: int) -> int:
    line, pos = w._line(pos)
    w.stack.append(_decode_quoted_string(line))
    return pos


def _op_unicode(w: Walker, pos: int) -> int:
    line, pos = w._line(pos)
    w.stack.append(str(line, "raw-unicode-escape", "replace"))
    return pos


def _op_counted(size_bytes: int, kind: str, as_text: bool, signed: bool = False, binstring: bool = False):
    def handler(w: Walker, pos: int) -> int:
        w._need(pos, size_bytes)
        if size_bytes == 1:
            n = w.data[pos]
        elif size_bytes == 4:
            n = (_I4 if signed else _U4)(w.data, pos)[0]
        else:
            n = _U8(w.data, pos)[0]
        if n < 0:
            raise _Invalid(f"{kind} pickle has negative byte count")
        value, pos = w._counted(pos + size_bytes, n, kind, as_text)
        if binstring and isinstance(value, bytes):
            value = value.decode("latin-1")
        w.stack.append(value)
        return pos
    return handler


def _op_const(value_factory):
    def handler(w: Walker, pos: int) -> int:
        w.stack.append(value_factory())
        return pos
    return handler


def _op_mark_collect(factory):
    def handler(w: Walker, pos: int) -> int:
        w.stack.append(factory(w._pop_mark()))
        return pos
    return handler


def _op_next_buffer(w: Walker, pos: int) -> int:
    w.trace.out_of_band.append(pos - 1)
    w.stack.append(OutOfBand(pos - 1))
    return pos


def _op_readonly_buffer(w: Walker, pos: int) -> int:
    w._top()
    return pos


def _kind(value: object) -> str:
    """A short description for messages (never the repr of an attacker-built value)."""
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, Global):
        return value.qualified[:120]
    return f"a {type(value).__name__}"


MAX_KEY_NESTING = 64
"""Dict keys and set items nested deeper are kept by identity instead of hashed: CPython hashes
nested tuples recursively in C with no recursion guard, so hashing an attacker's 2,000,000-deep
tuple would crash the scanner (a real loader crashes too; a shallower one it hashes and goes on)."""


class _IdentityKey:
    __slots__ = ("value",)

    def __init__(self, value: object):
        self.value = value


def _safe_key(item: object) -> object:
    if not isinstance(item, (tuple, frozenset)):
        return item
    level, depth = [item], 0
    while level:
        depth += 1
        if depth > MAX_KEY_NESTING:
            return _IdentityKey(item)
        level = list({id(x): x for v in level for x in v if isinstance(x, (tuple, frozenset))}.values())
    return item


def _utf8(raw: bytes, opcode: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid(f"{opcode} argument is not valid UTF-8") from None


_RARE = {
    0x80: _op_proto, 0x95: _op_frame, 0x63: _op_global, 0x69: _op_inst, 0x93: _op_stack_global,
    0x82: _op_ext(1), 0x83: _op_ext(2), 0x84: _op_ext(4),
    0x81: _op_newobj, 0x92: _op_newobj_ex, 0x6F: _op_obj, 0x62: _op_build,
    0x50: _op_persid, 0x51: _op_binpersid,
    0x73: _op_setitem, 0x61: _op_append, 0x65: _op_appends, 0x90: _op_additems, 0x91: _op_frozenset,
    0x64: _op_dict, 0x30: _op_pop, 0x31: _op_pop_mark, 0x32: _op_dup,
    0x67: _op_get, 0x70: _op_put, 0x49: _op_int, 0x4C: _op_long, 0x46: _op_float, 0x47: _op_binfloat,
    0x8A: _op_long_n(1), 0x8B: _op_long_n(4),
    0x53: _op_string, 0x56: _op_unicode,
    0x54: _op_counted(4, "BINSTRING", False, signed=True, binstring=True),
    0x55: _op_counted(1, "SHORT_BINSTRING", False, binstring=True),
    0x42: _op_counted(4, "BINBYTES", False), 0x43: _op_counted(1, "SHORT_BINBYTES", False),
    0x8E: _op_counted(8, "BINBYTES8", False), 0x96: _op_counted(8, "BYTEARRAY8", False),
    0x8D: _op_counted(8, "BINUNICODE8", True),
    0x4E: _op_const(lambda: None), 0x7D: _op_const(dict), 0x5D: _op_const(list), 0x8F: _op_const(set),
    0x6C: _op_mark_collect(list),
    0x97: _op_next_buffer, 0x98: _op_readonly_buffer,
}


def walk(data, start: int = 0, end: int | None = None, *, max_opcodes: int = MAX_OPCODES,
         max_memo: int = MAX_MEMO_ENTRIES, deadline: float | None = None,
         build_hook: BuildHook | None = None, max_values: int = MAX_VALUES) -> PickleTrace:
    """Walk one pickle stream starting at ``start``; never raises for bad input (see ``trace.error``).

    ``data`` is any buffer with ``bytes``-like indexing and ``find`` (bytes, mmap).
    """
    stop = len(data) if end is None else min(end, len(data))
    walker = Walker(data, start, stop, max_opcodes=max_opcodes, max_memo=max_memo, deadline=deadline,
                    build_hook=build_hook, max_values=max_values)
    if not gc.isenabled():  # paused by the caller (the scanner pauses it per file): a small walk's
        return walker.run()  # cost is mostly fixed, the context manager was a fifth of it
    with collector_paused():
        return walker.run()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector; restored after (nested uses are fine).

    A walk allocates many small objects and frees none of them, and the scan of a file keeps its
    traces until it ends: collections meanwhile only rescan them, and once they are many a full
    collection rescans the whole heap too (10-15% of a checkpoint scan). The scanner pauses it
    for each file (``scan_file``); the walk pauses it for callers that walk directly.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
