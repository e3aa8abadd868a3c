"""Property tests for the opcode walker (tensorsafe/pickles/walker.py).

Two kinds of truth are used, neither of which is the walker itself:

* ``pickle.dumps`` of our own plain data: we know exactly what each stream holds, so the
  walker must rebuild it (``trace.root == data``) and must find only the imports the protocol
  needs for it (none from protocol 3 on). Nothing is ever unpickled.
* the oracle in ``tests/pickle_oracle.py``, which models the C unpickler's stack, mark and
  memo rules independently. The walker's docstring promises to be "at least as lenient" as the
  C loader, "so nothing the real loader would execute can hide behind an early error": on any
  input, the walker must not stop before the point where the C loader stops, and it must record
  every import the C loader would perform up to that point.
"""
from __future__ import annotations

import math
import pickle
import pickletools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tensorsafe.errors import PickleParseError
from tensorsafe.pickles.policy import ALLOWED
from tensorsafe.pickles.values import Call, Global, Unresolved
from tensorsafe.pickles.walker import walk
from tests import pickle_ops as ops
from tests.pickle_oracle import run_stream
from tests.pickle_strategies import hashables, opcode_soup, plain_data

PROPS = dict(derandomize=True, database=None, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- helpers -----------------------------------------------------------------------------------
def same(a: object, b: object) -> bool:
    """Equality that also compares types (``1`` is not ``True`` or ``1.0``), float signs and NaNs."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if isinstance(a, (set, frozenset)):
        return a == b
    return a == b


def resolve(value: object) -> object:
    """Evaluate the few allowed, side-effect-free calls low protocols use for bytes and sets.

    Implemented here by hand (no import is resolved): ``_codecs.encode(text, "latin1")`` is
    ``text.encode("latin-1")``; ``builtins.bytes()`` is ``b""``; ``builtins.set(items)`` and
    ``builtins.frozenset(items)`` build the set.
    """
    if isinstance(value, Call) and isinstance(value.func, Global):
        key = (value.func.module, value.func.name)
        args = resolve(value.args)
        if key == ("_codecs", "encode") and len(args) == 2 and args[1] == "latin1":
            return args[0].encode("latin-1")
        if key == ("builtins", "bytes") and args == ():
            return b""
        if key == ("builtins", "set"):
            return set(args[0]) if args else set()
        if key == ("builtins", "frozenset"):
            return frozenset(args[0]) if args else frozenset()
        raise AssertionError(f"unexpected call {key} in plain data")
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v) for v in value)
    if isinstance(value, dict):
        return {resolve(k): resolve(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return type(value)(resolve(v) for v in value)
    return value


def genops_count(data: bytes) -> int:
    return sum(1 for _ in pickletools.genops(data))


def has_bytes(value: object) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, (list, tuple)):
        return any(has_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(has_bytes(k) or has_bytes(v) for k, v in value.items())
    return False


def names(trace) -> list[tuple[str, str]]:
    return [(g.module, g.name) for g in trace.globals if isinstance(g, Global)]


def assert_as_lenient_as_c(data: bytes) -> None:
    """The walker goes at least as far as the C unpickler and records every import it performs.

    ``c`` is the oracle's model of ``_pickle.c``. Where C completes, the walker must complete at
    the same STOP (they agree on every opcode boundary). Where C raises at the opcode at offset
    ``b``, the walker must not have stopped with an error before ``b``. Every import C performs
    before ``b`` (or its STOP) must be among the walker's imports; an import C cannot resolve
    statically (computed STACK_GLOBAL operands, EXT codes) must be an ``Unresolved`` for the walker.
    """
    w = walk(data)
    c = run_stream(data, 0, mode="c")
    if c.incomplete:
        return
    where = f"C: stopped={c.stopped} end={c.end} break@{c.break_offset} ({c.break_opcode}: {c.reason}); " \
            f"walker: stopped={w.stopped} end={w.end} error={w.error!r}"
    if c.stopped:
        assert w.stopped and w.end == c.end, "walker stops before the C loader does: " + where
    else:
        if w.stopped:
            assert w.end - 1 >= c.break_offset, "walker and C disagree on opcode boundaries: " + where
        else:
            assert isinstance(w.error, PickleParseError), where
            assert w.error.offset >= c.break_offset, "walker stops before the C loader does: " + where
    missing = {(m, n) for m, n, _ in c.imports} - set(names(w))
    assert not missing, f"imports the C loader performs but the walker never saw: {missing}; {where}"
    if c.unresolved:
        assert any(isinstance(g, Unresolved) for g in w.globals), f"{c.unresolved} not unresolved; {where}"


# -- round trips -------------------------------------------------------------------------------
@settings(max_examples=150, **PROPS)
@given(plain_data, st.sampled_from([4, 5]))
def test_round_trip_protocol_4_and_5(data, protocol):
    """Protocols 4 and 5 encode plain data without a single import: the walker rebuilds it exactly."""
    raw = pickle.dumps(data, protocol=protocol)
    trace = walk(raw)
    assert trace.error is None and trace.stopped
    assert trace.end == len(raw)
    assert trace.protocol == protocol
    assert trace.globals == [] and trace.calls == [] and trace.modified == []
    assert trace.opcodes == genops_count(raw)
    assert same(trace.root, data), (trace.root, data)


@settings(max_examples=60, **PROPS)
@given(plain_data)
def test_round_trip_protocol_3_has_no_imports(data):
    """Protocol 3 has native bytes: still no import for plain data, and the same value."""
    raw = pickle.dumps(data, protocol=3)
    trace = walk(raw)
    assert trace.stopped and trace.end == len(raw) and trace.protocol == 3
    assert trace.globals == [] and trace.calls == []
    assert same(trace.root, data)


@settings(max_examples=120, **PROPS)
@given(plain_data, st.sampled_from([0, 1, 2]))
def test_round_trip_low_protocols_import_only_codecs_for_bytes(data, protocol):
    """Protocols 0-2 have no bytes opcode: bytes become ``_codecs.encode(text, "latin1")`` (and
    ``b""`` becomes ``__builtin__.bytes()``, mapped to ``builtins.bytes``). Those are the only
    imports, they are allowlisted, there are none without bytes, and resolving them gives the data back.
    Protocols 0 and 1 carry no PROTO opcode: the walker reports protocol 0 for both."""
    raw = pickle.dumps(data, protocol=protocol)
    trace = walk(raw)
    assert trace.stopped and trace.end == len(raw) and trace.error is None
    assert trace.protocol == (2 if protocol == 2 else 0)
    imported = set(names(trace))
    assert imported <= {("_codecs", "encode"), ("builtins", "bytes")}
    assert all(key in ALLOWED for key in imported)
    assert bool(imported) == has_bytes(data)
    assert trace.opcodes == genops_count(raw)
    assert same(resolve(trace.root), data)


@settings(max_examples=60, **PROPS)
@given(st.sets(hashables, max_size=6), st.frozensets(hashables, max_size=6), st.integers(0, 5))
def test_sets_at_every_protocol(s, fs, protocol):
    """Sets have opcodes from protocol 4 (EMPTY_SET, ADDITEMS, FROZENSET); below that they are
    ``builtins.set(list)`` / ``builtins.frozenset(list)`` calls, allowlisted."""
    data = [s, fs]
    trace = walk(pickle.dumps(data, protocol=protocol))
    assert trace.stopped
    imported = set(names(trace))
    if protocol >= 4:
        assert imported == set()
        assert trace.root == data
    else:
        assert imported <= {("builtins", "set"), ("builtins", "frozenset"), ("_codecs", "encode"),
                            ("builtins", "bytes")}
        assert resolve(trace.root) == data


@settings(max_examples=80, **PROPS)
@given(plain_data, st.integers(0, 5))
def test_oracle_agrees_with_walker_on_real_pickles(data, protocol):
    """Cross-check of the oracle itself: on what pickle.dumps writes, both reach the same STOP
    and see the same imports (so a disagreement elsewhere points at a real difference)."""
    raw = pickle.dumps(data, protocol=protocol)
    c = run_stream(raw, 0, mode="c")
    py = run_stream(raw, 0, mode="py")
    trace = walk(raw)
    assert c.stopped and py.stopped and c.end == py.end == trace.end == len(raw)
    assert [(m, n) for m, n, _ in c.imports] == names(trace)


@settings(max_examples=300, **PROPS)
@given(st.binary(max_size=48) | opcode_soup())
@example(b"I1\x00\n.")
@example(b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00N0N.")
def test_oracle_tokenises_like_genops(data):
    """Cross-check of the oracle's tokeniser: wherever ``pickletools.genops`` can read, the oracle
    finds the same opcodes at the same offsets (it may stop earlier, on a stack or memo error
    genops does not look for, or go further, where genops is stricter than the loader)."""
    seen: list[int] = []
    try:
        for _, _, pos in pickletools.genops(data):
            seen.append(pos)
    except ValueError:
        pass
    ours = run_stream(data, 0, mode="c").ops
    n = min(len(seen), len(ours))
    assert ours[:n] == seen[:n]


@settings(max_examples=40, **PROPS)
@given(plain_data, st.integers(0, 5), st.data())
def test_concatenated_pickles_walk_one_at_a_time(data, protocol, draw):
    """``start`` and ``end`` bound the walk: the second of two concatenated pickles is found at
    the first one's end, and a walk cut short of the STOP is truncated, never stopped."""
    first = pickle.dumps(data, protocol=protocol)
    raw = first + pickle.dumps([data], protocol=protocol)
    one = walk(raw)
    assert one.stopped and one.end == len(first)
    two = walk(raw, one.end)
    assert two.stopped and two.end == len(raw)
    cut = draw.draw(st.integers(0, len(first) - 1))
    short = walk(raw, 0, cut)
    assert not short.stopped and short.error is not None


# -- robustness and leniency -------------------------------------------------------------------
@settings(max_examples=300, **PROPS)
@given(st.binary(max_size=64) | opcode_soup())
def test_walk_never_raises_and_reports_a_consistent_trace(data):
    """Any bytes: the walk returns (never raises); it either stopped at a STOP opcode inside the
    buffer, or carries an error; offsets stay inside the buffer."""
    trace = walk(data)
    assert trace.stopped != (trace.error is not None)
    assert 0 <= trace.end <= len(data)
    if trace.stopped:
        assert data[trace.end - 1:trace.end] == b"."
    else:
        assert 0 <= trace.error.offset <= len(data)


@settings(max_examples=400, **PROPS)
@given(opcode_soup())
@example(ops.global_("os", "system") + ops.unicode_("x") + b"\x85R.")
@example(b"\x80\x02}(N(u" + ops.global_("os", "system") + b".")
@example(b"\x80\x02](Ne" + ops.call_system())
@example(b"(I1\nN\x82\x01.")
def test_walker_is_at_least_as_lenient_as_the_c_unpickler(data):
    """The walker's contract (module docstring): it never gives up before the C unpickler, so
    nothing the loader would execute hides behind an early walker error."""
    assert_as_lenient_as_c(data)


@pytest.mark.parametrize("line", [
    b"I1\x00x\n", b"L1\x00\n", b"F1.5\x00junk\n", b"Np0\x00\n", b"Np0\n0g0\x00\n",
    b"I\x00\n",
])
def test_walker_reads_numbers_with_embedded_nul_as_c_does(line):
    """C parses INT/LONG/FLOAT/GET/PUT lines as NUL-terminated C strings (found by the property above)."""
    assert_as_lenient_as_c(line + b"0" + ops.global_("os", "system") + b"(" + ops.string("true") + b"tR.")


def test_compat_mapping_is_safe_at_every_protocol():
    """The walker (and the oracle) map Python 2 names with ``_compat_pickle`` at every protocol,
    although the loader maps them only below protocol 3. That is safe only while no Python 2 name
    whose Python 3 target is allowlisted or benign is itself an importable Python 3 module: above
    protocol 3 the loader then fails on the import instead of loading the allowlisted target."""
    import _compat_pickle
    import importlib.util

    from tensorsafe.pickles.policy import BENIGN

    trusted = set(ALLOWED) | set(BENIGN)
    for (module, name), target in _compat_pickle.NAME_MAPPING.items():
        if target in trusted:
            assert importlib.util.find_spec(module.split(".")[0]) is None, (module, name, target)
    for module, target in _compat_pickle.IMPORT_MAPPING.items():
        if any(key[0] == target for key in trusted):
            assert importlib.util.find_spec(module.split(".")[0]) is None, (module, target)
