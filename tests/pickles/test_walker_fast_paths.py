"""The walker's fused opcodes (tensorsafe/pickles/walker.py, ``_loop``) against its plain path.

The loop runs a ``LONG_BINPUT`` or ``BINPUT`` that follows TUPLE/TUPLE1-3/REDUCE/BINUNICODE, and the
second MARK of a pair, in the same iteration as the opcode before it. The reference is the same walker
with fusion made impossible: a ``FRAME`` opcode (it changes no stack, memo or mark) is put in
front of every put and every MARK, so each runs as an opcode of its own. Both walks must see
the same values, imports, calls, references and errors, at the same offsets once the inserted
frames are taken out, and count the same opcodes plus one per frame run.
"""
from __future__ import annotations

import pytest

import bisect
import pickle
import pickletools
import re
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorsafe.errors import LimitExceeded
from tensorsafe.pickles.values import BytesRef, Call, Global, OutOfBand, PersistentRef, Unresolved
from tensorsafe.pickles.walker import DEADLINE_CHECK_INTERVAL, walk
from tests import pickle_ops as ops

PROPS = dict(derandomize=True, database=None, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
FRAME = b"\x95" + struct.pack("<Q", 0)

U4 = struct.Struct("<I").pack
texts = st.sampled_from([b"key", b"", b"storage", "é".encode(), b"\xff", b"\xed\xa0\x80"])
indices = st.integers(0, 5)
token = st.one_of(
    st.sampled_from([b"(", b"(", b"t", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"}", b"N", b"\x88", b"\x89",
                     b"R", b"R", b"Q", b"u", b"s", b"a", b"e", b"l", b"d", b"0", b"1", b"2", b"\x94", b"\x93",
                     b"."]),
    st.builds(lambda t: b"X" + U4(len(t)) + t, texts),
    st.builds(lambda i: b"r" + U4(i), indices),
    st.builds(lambda i: b"r" + U4(i), indices),
    st.builds(lambda i: b"h" + bytes([i]), indices),
    st.builds(lambda i: b"j" + U4(i), indices),
    st.builds(lambda i: b"q" + bytes([i]), indices),
    st.builds(lambda n: b"K" + bytes([n]), st.integers(0, 255)),
    st.builds(lambda n: b"M" + struct.pack("<H", n), st.integers(0, 65535)),
    st.builds(ops.global_, st.sampled_from(["os", "torch._utils", "collections"]),
              st.sampled_from(["system", "_rebuild_tensor_v2", "OrderedDict"])),
)


@st.composite
def streams(draw) -> tuple[list[bytes], int]:
    """Whole opcodes (so both walks agree on every boundary). Mostly valid: the generator tracks
    the stack depth above each mark, so tuples, calls and puts see real values and memo gets
    fetch them back; a new value is often followed by a put (as torch writes them); now and then
    any token, and maybe a last one cut short."""
    depths = [0, 0]  # values above each fence, innermost last; a MARK first, so the root can hold the stack
    memo: list[int] = []
    tokens: list[bytes] = [b"("]
    for _ in range(draw(st.integers(1, 40))):
        d = depths[-1]
        choices = ["push", "push", "mark", "any"]
        if d >= 1:
            choices += ["put", "put", "tuple1", "persid", "pop"]
        if d >= 2:
            choices += ["tuple2", "reduce", "reduce"]
        if d >= 3:
            choices += ["tuple3"]
        if len(depths) > 1:
            choices += ["tuple", "tuple"]
        kind = draw(st.sampled_from(choices))
        if kind == "push":
            if memo and draw(st.integers(0, 2)):
                i = draw(st.sampled_from(memo))
                tokens.append(b"h" + bytes([i]) if draw(st.booleans()) else b"j" + U4(i))
            else:
                tokens.append(draw(st.one_of(st.builds(lambda t: b"X" + U4(len(t)) + t, texts),
                                             st.builds(lambda n: b"K" + bytes([n]), st.integers(0, 255)),
                                             st.just(b")"), st.just(b"N"),
                                             st.just(ops.global_("torch._utils", "_rebuild_tensor_v2")))))
            depths[-1] += 1
        elif kind == "mark":
            tokens.append(b"(" * draw(st.integers(1, 2)))
            depths += [0] * len(tokens[-1])
        elif kind == "put":
            i = draw(st.integers(0, 6))
            tokens.append(draw(st.sampled_from([b"r" + U4(i), b"q" + bytes([i])])))
            memo.append(i)
        elif kind in ("tuple1", "tuple2", "tuple3"):
            n = int(kind[-1])
            tokens.append(bytes([0x84 + n]))  # TUPLE1, TUPLE2, TUPLE3
            depths[-1] += 1 - n
        elif kind == "reduce":
            tokens.append(b"R")
            depths[-1] -= 1
        elif kind == "persid":
            tokens.append(b"Q")
        elif kind == "pop":
            tokens.append(b"0")
            depths[-1] -= 1
        elif kind == "tuple":
            tokens.append(b"t")
            depths.pop()
            depths[-1] += 1
        else:
            tokens.append(draw(token))
        if kind in ("push", "tuple", "tuple1", "tuple2", "tuple3", "reduce") and draw(st.booleans()):
            i = draw(st.integers(0, 6))  # a put right after a new value, as torch writes them (fused)
            tokens.append(draw(st.sampled_from([b"r" + U4(i), b"q" + bytes([i])])))
            memo.append(i)
    if draw(st.integers(0, 3)):  # close every mark: the root holds everything left on the stack
        tokens.append(b"t" * (len(depths) - 1) + b".")
    if draw(st.integers(0, 3)) == 0:
        last = tokens[-1]
        tokens[-1] = last[:draw(st.integers(0, len(last) - 1))] if len(last) > 1 else last
    return [t for t in tokens if t], draw(st.sampled_from([0, 1, 3, 100]))


def unfused(tokens: list[bytes]) -> tuple[bytes, list[int]]:
    """The stream with a FRAME before every put and MARK, and where the frames start."""
    out, inserted = b"", []
    for t in tokens:
        for part in ([b"("] * len(t) if t.strip(b"(") == b"" else [t]):  # "((": a frame before each MARK
            if part[:1] in (b"r", b"q", b"("):
                inserted.append(len(out))
                out += FRAME
            out += part
    return out, inserted


class OffsetMap:
    """Offsets in the unfused stream -> offsets in the fused one."""

    def __init__(self, inserted: list[int]):
        self.inserted = inserted

    def __call__(self, offset: int | None) -> int | None:
        if offset is None:
            return None
        return offset - len(FRAME) * bisect.bisect_right(self.inserted, offset - 1)


def describe(trace, at) -> tuple:
    """Everything the trace holds, offsets through ``at`` (values by structure, sharing kept)."""
    seen: dict[int, int] = {}

    def v(x):
        if isinstance(x, (tuple, list, dict, Call)):
            if id(x) in seen:
                return ("same-as", seen[id(x)])
            seen[id(x)] = len(seen)
        if isinstance(x, Call):
            return ("call", v(x.func), v(x.args), x.kind, at(x.offset), v(x.kwargs), v(x.state),
                    None if x.items is None else [(v(a), v(b)) for a, b in x.items],
                    None if x.appended is None else [v(a) for a in x.appended])
        if isinstance(x, Global):
            return ("global", x.module, x.name, at(x.offset), x.opcode)
        if isinstance(x, Unresolved):
            return ("unresolved", x.reason, at(x.offset), x.opcode)
        if isinstance(x, PersistentRef):
            return ("ref", v(x.pid), at(x.offset))
        if isinstance(x, (BytesRef, OutOfBand)):
            return (type(x).__name__, at(getattr(x, "offset", None) or getattr(x, "start", None)))
        if isinstance(x, (tuple, list)):
            return (type(x).__name__, [v(y) for y in x])
        if isinstance(x, dict):
            return ("dict", [(v(k), v(y)) for k, y in x.items()])
        if isinstance(x, (set, frozenset)):
            return (type(x).__name__, sorted(map(repr, x)))
        return (type(x).__name__, x)

    err = trace.error
    return (trace.stopped, at(trace.end), v(trace.root), [v(g) for g in trace.globals], [v(c) for c in trace.calls],
            [(at(o), v(x), op) for o, x, op in trace.modified], [v(p) for p in trace.persistent],
            at(trace.deep_key_offset),
            None if err is None else (type(err).__name__, re.sub(r"\d+", "#", err.message),
                                      at(getattr(err, "offset", None)), getattr(err, "truncated", None)))


@pytest.mark.slow
@settings(max_examples=200, **PROPS)
@given(streams())
def test_fused_opcodes_do_what_the_plain_ones_do(case):
    tokens, max_memo = case
    fused_stream = b"".join(tokens)
    plain_stream, inserted = unfused(tokens)
    fused = walk(fused_stream, max_memo=max_memo)
    plain = walk(plain_stream, max_memo=max_memo)
    assert describe(fused, lambda o: o) == describe(plain, OffsetMap(inserted))
    if fused.stopped:
        frames_run = sum(1 for at in inserted if at < plain.end)
        assert plain.opcodes == fused.opcodes + frames_run


def test_round_trip_of_a_protocol_2_pickle_with_thousands_of_memo_entries():
    """Past 256 memo entries protocol 2 writes LONG_BINPUT: the fused puts keep sharing intact."""
    shared = ["shared", 1]
    data = {f"layer.{i}.weight": (i, f"s{i}", [i, i + 1], shared) for i in range(700)}
    raw = pickle.dumps(data, protocol=2)
    trace = walk(raw)
    assert trace.stopped and trace.error is None
    assert trace.opcodes == sum(1 for _ in pickletools.genops(raw))
    assert trace.root == data
    values = list(trace.root.values())
    assert all(v[3] is values[0][3] for v in values)  # one list, memoized once, fetched by every entry


def test_fused_opcodes_count_toward_the_opcode_budget():
    """A stream made only of fused pairs still meets the budget check (it runs between chunks of
    iterations, on the opcode count, which includes the fused puts)."""
    pair = b"X" + U4(1) + b"a" + b"r" + U4(0) + b"0"  # push, put (fused), pop
    stream = pair * (DEADLINE_CHECK_INTERVAL + 10) + b"N."
    within = walk(stream)
    assert within.stopped and within.opcodes == 3 * (DEADLINE_CHECK_INTERVAL + 10) + 2
    over = walk(stream, max_opcodes=1000)
    assert isinstance(over.error, LimitExceeded) and not over.stopped
    assert over.end % len(pair) == 0 and over.end < len(stream)  # it stops at an opcode boundary


def test_values_the_loop_builds_inline_have_every_slot_their_constructor_sets():
    """REDUCE and BINPERSID build ``Call`` and ``PersistentRef`` without calling ``__init__`` (it is
    the hot loop): every slot must hold what the constructor would have put there."""
    data = b"\x80\x02" + ops.global_("collections", "OrderedDict") + b")R" + b"K\x07Q" + b"\x86."
    trace = walk(data)
    call, ref = trace.root
    for made, expected in ((call, Call(call.func, (), "reduce", call.offset)), (ref, PersistentRef(7, ref.offset))):
        assert type(made) is type(expected)
        slots = type(made).__slots__
        assert {s: getattr(made, s) for s in slots} == {s: getattr(expected, s) for s in slots}
    assert (call.offset, ref.offset) == (data.index(b")R") + 1, data.index(b"Q"))
