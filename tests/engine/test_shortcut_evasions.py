"""Red-team tests for the scan engine's speed shortcuts: each tries to make one shortcut hide what a
loader would import or call, or change a report, and each fails if the shortcut is made unsound.

The shortcuts: a span whose first bytes cannot be a pickle is not walked
(``pickle_stream._fails_at_once``); a trace with nothing to judge is not judged (``judge_trace``);
the walker fuses BINPUT after the opcodes that build a value and counts its budget in chunks; small
files are read whole; ``.npy`` header parses are memoized; the ``.j`` guard before the Jinja suffix
check; magic bytes looked up by first byte. Payloads are harmless (``os.system("true")``); nothing
here is ever unpickled (the oracle in ``tests/pickle_oracle.py`` models what a loader would do).
"""
from __future__ import annotations

import ast
import pickletools
import random
import struct
import sys
import types
import zipfile

import pytest

import tensorsafe
from tensorsafe.engine import pickle_stream, scanner
from tensorsafe.errors import LimitExceeded, UnreadableFileError
from tensorsafe.limits import ScanLimits
from tensorsafe.pickles import judge, walker
from tensorsafe.pickles.front import CANNOT_START, cannot_be_pickle
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tensorsafe.pickles.values import Global
from tensorsafe.readers import blob, numpy_files, sniff
from tensorsafe.readers.blob import Span
from tensorsafe.report import Location
from tests.archives import zip_bytes
from tests import pickle_ops as op
from tests.conftest import rule_ids
from tests.pickle_oracle import run_stream

PAYLOAD = op.call_system()
"""os.system("true") as a protocol-2 pickle: what a loader would run."""
PAYLOAD_BODY = PAYLOAD[2:]
"""The same without its PROTO: put behind any front."""


_zip = zip_bytes


def _summary(report: tensorsafe.Report) -> list[tuple]:
    return [(f.kind, f.size, f.pickles, sorted(map(str, f.findings)),
             [(u.module, u.name, u.tier, u.count) for u in f.imports]) for f in report.files]


# -- 1. a span that fails at once is not walked -------------------------------------------------

FRONTS = [bytes([b]) for b in sorted(CANNOT_START)] + \
    [op.proto(p) + bytes([b]) for p in range(6) for b in sorted(CANNOT_START)]


def test_every_front_the_shortcut_skips_makes_a_loader_fail_before_any_import():
    """Both unpicklers (C: pickle/torch/numpy; pickle.py: joblib) stop at such a front, and so
    does the walk: whatever follows (here os.system) is never reached."""
    for front in FRONTS:
        data = front + PAYLOAD_BODY
        assert cannot_be_pickle(data[:3]), front
        for mode in ("c", "py"):
            stream = run_stream(data, mode=mode)
            assert not stream.stopped and not stream.imports and not stream.unresolved, (front, mode)
        trace = walker.walk(data)
        assert not trace.stopped and not trace.globals and not trace.calls, front
        assert not pickle_stream.looks_like_pickle(trace), front


def test_a_front_that_imports_first_is_walked():
    """The fronts the shortcut must never take: an import, PROTO then an import, FRAME first, a
    PROTO beyond the highest one (the walk reads on), a lone PROTO."""
    for data in (PAYLOAD_BODY, PAYLOAD, op.proto(4) + op.frame(PAYLOAD_BODY), b"\x95" + PAYLOAD_BODY,
                 op.proto(200) + PAYLOAD_BODY, op.proto(2), b"\x80", b""):
        assert not cannot_be_pickle(data[:3]), data[:3]


LOW_LIMITS = [ScanLimits(), ScanLimits(max_memo_entries=0), ScanLimits(max_memo_entries=1),
              ScanLimits(max_opcodes=0), ScanLimits(max_opcodes=1), ScanLimits(max_opcodes=2),
              ScanLimits(max_values=-1), ScanLimits(max_values=0)]


@pytest.mark.parametrize("limits", LOW_LIMITS, ids=repr)
def test_the_shortcut_answers_as_the_walk_would_at_any_limit(limits):
    """Where the shortcut says "no pickle", the walk under the same limits finds none either (a
    limit error counts as a pickle: with no memo room a first PUT is one, before its underflow)."""
    fs = types.SimpleNamespace(limits=limits)
    for front in FRONTS:
        data = front + PAYLOAD_BODY
        if pickle_stream._fails_at_once(fs, Span(data, 0, len(data))):
            trace = walker.walk(data, max_opcodes=limits.max_opcodes, max_memo=limits.max_memo_entries,
                                max_values=limits.max_values)
            assert not pickle_stream.looks_like_pickle(trace), (front, limits)


def test_a_first_put_with_no_memo_room_is_still_reported(scan_bytes):
    """The walk reports the memo limit before the PUT's stack underflow: the shortcut must not
    answer for it (it did, before ``max_memo_entries`` was among its conditions)."""
    for data in (op.binput(0) + b"hello", op.long_binput(0) + b"hello", op.MEMOIZE + b"hello", b"p0\nhello"):
        assert "PK-L01" in rule_ids(scan_bytes(data, "x.txt", limits=ScanLimits(max_memo_entries=0))), data
        assert "PK-L01" not in rule_ids(scan_bytes(data, "x.txt")), data  # no pickle: not walked


EVASIONS = {
    # zip members that are not .pkl, behind a front that fails, and the payload after them
    "members.pt": _zip({"a/data.pkl": op.proto(2) + op.EMPTY_DICT + op.STOP, "a/version": b"3\n",
                        "a/extra": b"q\x00" + PAYLOAD_BODY, "a/odd": op.MEMOIZE + PAYLOAD,
                        "a/evil": PAYLOAD, "a/byteorder": b"little"}),
    "deflated.zip": _zip({"x.bin": b"." + PAYLOAD, "y.bin": PAYLOAD, "z.npy": b"t" + PAYLOAD},
                         zipfile.ZIP_DEFLATED),
    "nested.zip": _zip({"inner.zip": _zip({"m": b"R" + PAYLOAD, "n.pkl": b"0" + PAYLOAD})}),
    "before_zip.bin": b"h\x00" + PAYLOAD + _zip({"a.pkl": PAYLOAD}),
    "after_zip.bin": _zip({"a.txt": b"hello"}) + b"q" + PAYLOAD,
    "trailing.pkl": PAYLOAD + b"\x94" + PAYLOAD,
    "trailing_text.pkl": op.proto(2) + op.NONE + op.STOP + b"version\n" + PAYLOAD,
    "proto_then_fail.pkl": op.proto(4) + b"u" + PAYLOAD,
    "frame_first.pkl": op.proto(4) + op.frame(PAYLOAD_BODY),
    "text_then_payload.txt": b"ordinary text\n" + PAYLOAD,
    "dot.txt": b"." + PAYLOAD,
}


@pytest.fixture
def shortcuts_off(monkeypatch):
    """Turn every shortcut that can be turned off off: the report must not change."""
    def off():
        monkeypatch.setattr(pickle_stream, "_fails_at_once", lambda fs, span: False)
        monkeypatch.setattr(scanner, "judge_trace", lambda trace, policy, path, location, base=0, itemsize=None:
                            judge.TraceJudge(policy, path, location, base, itemsize).judge(trace))
        monkeypatch.setattr(blob, "SMALL_FILE_BYTES", -1)
        monkeypatch.setattr(numpy_files, "MEMO_HEADER_BYTES", -1)
        monkeypatch.setattr(walker, "DEADLINE_CHECK_INTERVAL", 1 << 15)
        monkeypatch.setattr(walker, "_CHUNK_COUNTS", tuple(range(1, (1 << 15) + 1)))
    return off


@pytest.mark.parametrize("name", sorted(EVASIONS))
def test_each_evasion_gets_the_report_it_gets_with_the_shortcuts_off(tmp_path, shortcuts_off, name):
    path = tmp_path / name
    path.write_bytes(EVASIONS[name])
    fast = tensorsafe.scan(path)
    shortcuts_off()
    assert _summary(fast) == _summary(tensorsafe.scan(path))


@pytest.mark.parametrize("name", ["members.pt", "deflated.zip", "nested.zip", "before_zip.bin", "trailing.pkl",
                                  "trailing_text.pkl", "frame_first.pkl", "text_then_payload.txt"])
def test_each_evasion_that_a_loader_would_run_fails(scan_bytes, name):
    assert scan_bytes(EVASIONS[name], name).exit_code != 0


# -- 2. a trace with nothing to judge is not judged ---------------------------------------------

def _soup(rnd: random.Random) -> bytes:
    pieces = [op.MARK, op.NONE, op.TUPLE, op.TUPLE1, op.TUPLE2, op.REDUCE, op.BUILD, op.EMPTY_DICT, op.SETITEMS,
              op.SETITEM, op.MEMOIZE, op.POP, op.DUP, op.EMPTY_LIST, op.APPEND, op.NEWOBJ, op.STACK_GLOBAL,
              b"Q", b"K\x01", b"\x97", b"\x98", b"\x90", b"\x8f", b"\x82\x01", op.binput(0), op.binget(0),
              op.unicode_("__class__"), op.unicode_("os"), op.global_("collections", "OrderedDict"),
              op.global_("os", "system"), op.frame(op.NONE), op.frame(op.NONE + op.STOP + op.NONE),
              b"\x95" + struct.pack("<Q", 9) + op.NONE, op.STOP]
    return op.proto(rnd.choice((2, 4, 5))) + b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 14)))


def test_the_judge_shortcut_gives_what_the_full_judge_gives():
    """On random opcode soups (persistent ids, out-of-band buffers, builds, framing, errors),
    skipped or not, ``judge_trace`` answers as ``TraceJudge.judge``."""
    rnd = random.Random(13)
    skipped = 0
    for _ in range(3000):
        data = _soup(rnd)
        for end in (len(data), len(data) - 1):
            trace = walker.walk(data, 0, end, max_values=rnd.choice((10**6, 3)))
            full = judge.TraceJudge(DEFAULT_POLICY, "x.pkl", Location(), 0).judge(trace)
            fast = judge.judge_trace(trace, DEFAULT_POLICY, "x.pkl", Location(), 0)
            assert (fast.findings, dict(fast.imports), dict(fast.tiers), fast.nested) == \
                (full.findings, dict(full.imports), dict(full.tiers), full.nested), data
            skipped += not full.findings
    assert skipped > 50  # the shortcut was taken


ONE_FIELD_TRACES = {
    "calls": op.proto(2) + op.NONE + op.EMPTY_TUPLE + op.REDUCE + op.STOP,  # a call of None, no import
    "class_changes": op.proto(2) + op.EMPTY_DICT + op.EMPTY_DICT + op.unicode_("__class__") + op.NONE
    + op.SETITEM + op.BUILD + op.STOP,
    "deep_key_offset": op.proto(2) + op.EMPTY_DICT + op.NONE + op.TUPLE1 * 70 + op.NONE + op.SETITEM + op.STOP,
    "out_of_band": op.proto(5) + b"\x97" + op.STOP,
    "framing": op.proto(4) + op.frame(op.NONE + op.STOP + op.NONE),
    "error": op.proto(2) + op.NONE + op.APPEND + op.STOP,
}


@pytest.mark.parametrize("field", sorted(ONE_FIELD_TRACES))
def test_a_trace_with_only_one_thing_to_judge_is_judged(field):
    """Each field the shortcut looks at, alone in a trace (no import): the trace is judged."""
    trace = walker.walk(ONE_FIELD_TRACES[field])
    assert getattr(trace, field) not in (None, [], False) and not trace.globals
    fast = judge.judge_trace(trace, DEFAULT_POLICY, "x.pkl", Location(), 0)
    assert fast.findings and fast.findings == judge.TraceJudge(DEFAULT_POLICY, "x.pkl", Location(), 0).judge(trace).findings


def test_a_persistent_id_alone_is_judged_as_before(scan_bytes):
    """BINPERSID records no import or call: ``pickle.load`` fails at it (no persistent_load), the
    shortcut skips it as the judge found nothing in it before; an import behind it still fails."""
    only_pid = op.proto(2) + op.unicode_("x") + b"Q" + op.STOP
    assert scan_bytes(only_pid, "pid.pkl").exit_code == 0
    behind = op.proto(2) + op.unicode_("x") + b"Q" + op.POP + PAYLOAD_BODY
    assert "PK-I01" in rule_ids(scan_bytes(behind, "pid_then_call.pkl"))


# -- 3. fused BINPUT, chunked budget ------------------------------------------------------------

def _opcode_count(data: bytes) -> int:
    return sum(1 for _ in pickletools.genops(data))


@pytest.mark.parametrize("pairs", [1, 2047, 2048, 4095, 4096, 4097, 8191, 8192, 8193])
@pytest.mark.parametrize("put", [op.binput(1), op.long_binput(1)])
def test_the_opcode_budget_is_exact_with_fused_puts_across_chunks(pairs, put):
    data = op.proto(2) + op.NONE + (op.TUPLE1 + put) * pairs + op.STOP
    count = _opcode_count(data)
    trace = walker.walk(data, max_opcodes=count)
    assert trace.stopped and trace.opcodes == count
    short = walker.walk(data, max_opcodes=count - 1)
    assert isinstance(short.error, LimitExceeded) and short.error.limit == "MAX_OPCODES"


def test_a_fused_put_at_a_frames_end_and_across_it():
    """A put that is the frame's last opcode is fused (the memo gets it); one whose argument lies
    past the frame's end runs on its own and notes the framing divergence."""
    inside = op.proto(4) + op.frame(op.global_("os", "system") + op.unicode_("a") + op.TUPLE1 + op.binput(7))
    data = inside + op.POP + op.binget(7) + op.REDUCE + op.STOP
    trace = walker.walk(data)
    assert trace.stopped and not trace.framing and isinstance(trace.calls[0].func, Global)
    assert (trace.calls[0].func.qualified, trace.calls[0].args) == ("os.system", ("a",))
    body = op.global_("os", "system") + op.unicode_("a") + op.TUPLE1
    after = op.POP + op.binget(7) + op.REDUCE + op.STOP
    at_end = walker.walk(op.proto(4) + op.frame(body + b"q") + b"\x07" + after)  # read from after the frame
    assert at_end.stopped and not at_end.framing
    assert (at_end.calls[0].func.qualified, at_end.calls[0].args) == ("os.system", ("a",))
    straddle = walker.walk(op.proto(4) + op.frame(body + b"r\x07\x00") + b"\x00\x00"
                           + op.POP + op.long_binget(7) + op.REDUCE + op.STOP)
    assert straddle.stopped and straddle.framing  # pickle.py: "pickle exhausted before end of frame"
    assert (straddle.calls[0].func.qualified, straddle.calls[0].args) == ("os.system", ("a",))


def test_a_fused_put_overwritten_later_hands_out_the_later_value():
    """Memo trick: slot 0 first holds an allowed tuple (fused put), then os.system (a put of its
    own); the call made through slot 0 is a call of os.system."""
    data = (op.proto(2) + op.NONE + op.TUPLE1 + op.binput(0) + op.POP + op.global_("os", "system") + op.binput(0)
            + op.POP + op.binget(0) + op.unicode_("true") + op.TUPLE1 + op.binput(1) + op.REDUCE + op.STOP)
    trace = walker.walk(data)
    assert trace.stopped and [c.func.qualified for c in trace.calls] == ["os.system"]


def test_a_fused_put_with_the_memo_full_is_a_limit_error():
    data = op.proto(2) + op.NONE + op.TUPLE1 + op.binput(0) + op.TUPLE1 + op.binput(1) + op.STOP
    assert walker.walk(data, max_memo=2).stopped
    trace = walker.walk(data, max_memo=1)
    assert isinstance(trace.error, LimitExceeded) and trace.error.limit == "MAX_MEMO_ENTRIES"
    assert walker.walk(data.replace(op.binput(1), op.binput(0)), max_memo=1).stopped  # a put over a slot


# -- 4. small files read whole ------------------------------------------------------------------

@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, (1 << 20) + 1])
def test_a_payload_at_the_end_of_a_file_at_the_small_file_boundary(tmp_path, monkeypatch, size):
    head = op.proto(2) + op.binbytes(b"\0" * (size - len(PAYLOAD) - 8)) + op.STOP
    data = head + PAYLOAD
    assert len(data) == size
    path = tmp_path / "edge.pkl"
    path.write_bytes(data)
    fast = tensorsafe.scan(path)
    assert {"PK-I01", "PK-S04"} <= rule_ids(fast) and fast.files[0].size == size
    monkeypatch.setattr(blob, "SMALL_FILE_BYTES", -1)
    assert _summary(fast) == _summary(tensorsafe.scan(path))


def test_a_file_that_grows_after_its_size_was_read_is_not_judged(tmp_path, monkeypatch):
    """A file appended to between ``fstat`` and the read: a loader would read the new bytes too, so the
    scan, which read only what the size promised, gives no verdict (IO-01), read whole or mapped."""
    path = tmp_path / "grows.pkl"
    path.write_bytes(PAYLOAD)
    real_read = blob._read_whole

    def grow_then_read(fd, size):
        with open(path, "ab") as f:
            f.write(b"\x94" * 100)
        return real_read(fd, size)

    monkeypatch.setattr(blob, "_read_whole", grow_then_read)
    with pytest.raises(UnreadableFileError, match="holds more bytes than its size"):
        blob.MappedFile(path, read_small=True)
    report = tensorsafe.scan(path)
    assert report.exit_code == 2 and "IO-01" in rule_ids(report)


# -- 6. memoized .npy header parses -------------------------------------------------------------

def _npy(header: str, body: bytes = b"") -> bytes:
    text = header.encode("latin-1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def test_no_scan_changes_a_shared_header_parse(scan_bytes):
    """The memo hands every file with the same header text one shared dict: after scans of
    structured, object and plain arrays, each memoized value still equals a fresh parse."""
    headers = ["{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }",
               "{'descr': [('a', '<f4', (2,))], 'fortran_order': False, 'shape': (1,), }",
               "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
               "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1), }"]
    for h in headers:
        data = _npy(h, PAYLOAD + b"\0" * 8)
        first, second = scan_bytes(data, "a.npy"), scan_bytes(data, "b.npy")
        assert [(f.rule_id, f.message) for f in first.findings] == [(f.rule_id, f.message) for f in second.findings]
        text = data[10:10 + struct.unpack_from("<H", data, 8)[0]].decode("latin-1")
        assert numpy_files._parsed(text) == ast.literal_eval(text)
    assert "PK-I01" in rule_ids(scan_bytes(_npy(headers[2], PAYLOAD), "c.npy"))


# -- 7. the ".j" guard before the Jinja suffix check --------------------------------------------

def test_only_j_lowers_to_a_j():
    """``".j" in name.lower()`` holds for every name whose lowered suffix is a Jinja one: only
    ``j`` and ``J`` lower to text holding a ``j`` (and only ``.`` to a dot), in any Unicode case
    mapping (U+0130 lowers to two characters, neither a ``j``)."""
    js = [c for c in range(sys.maxunicode + 1) if "j" in chr(c).lower() or "." in chr(c).lower()]
    assert js == [ord("."), ord("J"), ord("j")]


@pytest.mark.parametrize("name", ["T.JINJA", "t.Jinja2", "x.J2", "a.b.jInJa"])
def test_a_jinja_name_in_any_case_is_checked(scan_bytes, name):
    pytest.importorskip("jinja2")
    escape = b"{{ cycler.__init__.__globals__.os.popen('true').read() }}"
    assert "TPL-01" in rule_ids(scan_bytes(escape, name))
    assert "TPL-01" in rule_ids(scan_bytes(_zip({f"dir/{name}": escape}), "templates.zip"))


# -- 8. magic bytes by first byte ---------------------------------------------------------------

def test_magics_by_first_byte_answer_in_the_listed_order():
    """Every magic (whole, cut, with a bz2 block digit or not) is told as the first listed magic
    that it starts with would tell it."""
    flat = [pair for group in sniff.LEADING_MAGICS.values() for pair in group]
    for magic, _ in flat:
        for head in (magic, magic + b"1", magic + b"x", magic[:-1]):
            want = next((k for m, k in flat if head.startswith(m)
                         and (k is not sniff.Kind.BZ2 or len(head) > 3 and head[3:4] in b"123456789")), None)
            got = sniff.sniff(Span(head + b"\0" * 64, 0, len(head) + 64))
            assert got is want if want is not None else got is not sniff.Kind.BZ2, head
    for magic, name in sniff.UNOPENED_FORMATS:
        assert sniff.unopened_format(magic + b"\0") == next(n for m, n in sniff.UNOPENED_FORMATS
                                                             if (magic + b"\0").startswith(m))
    assert sniff.unopened_format(b"") is None
