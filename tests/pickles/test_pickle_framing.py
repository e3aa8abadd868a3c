"""Pickle framing (protocol 4+ ``FRAME``): wherever CPython's unpicklers read a stream differently,
the scan fails with PK-S06; where they all read it alike, the walker reads what they read.

The oracles are CPython's real unpicklers, each subclassed so that ``find_class`` records the name
and raises (nothing is ever imported, called or built from the data; payloads are harmless
``os.system("true")`` anyway), in the modes that read frames differently:

* ``c-bytes``: ``_pickle.loads`` of bytes, the whole buffer in memory (``_Unpickler_SetStringInput``).
  A subclass cannot be handed bytes, so it reads a file object whose ``peek`` returns all the
  remaining data: its first read (one opcode byte) peeks, so the C unpickler holds all the data in
  its buffer from then on and reads exactly as from bytes.
* ``c-file``: ``_pickle.Unpickler(io.BytesIO(data))`` (``torch.load`` of a zip member): no
  ``peek``, so a FRAME is read into the buffer whole and a read crossing its end reads afresh
  from the file, after the frame.
* ``c-buffered``: ``_pickle.Unpickler(open(path, "rb"))`` (``pickle.load`` of a file; a
  ``BufferedReader`` has ``peek``).
* ``py-bytes``: ``pickle._loads`` of bytes, which is ``pickle._Unpickler`` on a ``BytesIO``.
* ``py-file``: ``pickle._Unpickler`` on a ``BufferedReader`` (``joblib.load``).
"""
from __future__ import annotations

import _pickle
import io
import pickle
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.pickles.walker import walk
from tests import pickle_ops as op

PROPS = dict(derandomize=True, database=None, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TMP = tempfile.TemporaryDirectory(prefix="tensorsafe-framing-")
SYSTEM = ("os", "system")


# -- the oracles ---------------------------------------------------------------------------------
class _Reached(Exception):
    """Raised by every oracle's find_class: the load stops before anything is imported."""


def _oracle(base: type) -> type:
    class Oracle(base):
        def find_class(self, module: str, name: str):
            self.reached.append((module, name))
            raise _Reached

        def persistent_load(self, pid: object) -> None:
            return None

    return Oracle


_C, _PY = _oracle(_pickle.Unpickler), _oracle(pickle._Unpickler)


class _WholeBuffer:
    """A file whose ``peek`` hands over everything left: the C unpickler then reads as from bytes."""

    def __init__(self, data: bytes):
        self._io = io.BytesIO(data)
        self.read, self.readline = self._io.read, self._io.readline

    def peek(self, n: int = 0) -> bytes:
        return self._io.getvalue()[self._io.tell():]


class _File(io.BufferedReader):
    """A real file's reader, with ``read(n)`` clamped to what is left (a hostile FRAME length must
    not make the oracle allocate gigabytes before it finds the end)."""

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > 0:
            n = min(n, len(self.raw.getbuffer()) + 1)
        return super().read(n)


MODES = {
    "c-bytes": lambda data: _C(_WholeBuffer(data)),
    "c-file": lambda data: _C(io.BytesIO(data)),
    "c-buffered": lambda data: _C(_File(io.BytesIO(data))),
    "py-bytes": lambda data: _PY(io.BytesIO(data)),
    "py-file": lambda data: _PY(_File(io.BytesIO(data))),
}
SEQUENTIAL_MODES = {  # modes that go on reading the same file after STOP
    "c-file": io.BytesIO, "c-buffered": lambda d: _File(io.BytesIO(d)),
    "py-bytes": io.BytesIO, "py-file": lambda d: _File(io.BytesIO(d)),
}


def reached(data: bytes) -> dict[str, tuple[str, str] | None]:
    """The first name each mode would import (None: it stops, or ends, before any)."""
    out = {}
    for mode, make in MODES.items():
        u = make(data)
        u.reached = []
        try:
            u.load()
        except Exception:  # noqa: BLE001, S110 (_Reached, or the loader's own error: it stops there)
            pass
        out[mode] = u.reached[0] if u.reached else None
    return out


def reached_in_sequence(data: bytes, loads: int = 2) -> dict[str, tuple[str, str] | None]:
    """As ``reached``, for a caller that loads pickles one after another from one file."""
    out = {}
    for mode, make_file in SEQUENTIAL_MODES.items():
        f = make_file(data)
        cls = _C if mode.startswith("c") else _PY
        out[mode] = None
        for _ in range(loads):
            u = cls(f)
            u.reached = []
            try:
                u.load()
            except _Reached:
                pass
            except Exception:  # noqa: BLE001 (the loader's own error: it reads no further)
                break
            if u.reached:
                out[mode] = u.reached[0]
                break
    return out


# -- the scanner ---------------------------------------------------------------------------------
_names = iter(range(10**9))


def scan(data: bytes) -> tensorsafe.Report:
    path = Path(_TMP.name) / f"framed-{next(_names)}.pkl"
    path.write_bytes(data)
    try:
        return tensorsafe.scan(path)
    finally:
        path.unlink()


def rules(report: tensorsafe.Report) -> set[str]:
    return {f.rule_id for f in report.findings}


def check_against_oracles(data: bytes, seen: dict | None = None) -> tensorsafe.Report:
    """The contract: a name any mode reaches makes the scan fail; modes that disagree give PK-S06;
    where they agree and the walker notes nothing, its first import is theirs."""
    seen = reached(data) if seen is None else seen
    report = scan(data)
    found = rules(report)
    if any(seen.values()):
        assert report.exit_code != 0, (seen, found)
    if len(set(seen.values())) > 1:
        assert "PK-S06" in found, (seen, found)
    trace = walk(data)
    if not trace.framing and len(set(seen.values())) == 1 and None not in seen.values():
        first = trace.globals[0]
        assert (first.module, first.name) == next(iter(seen.values())), (seen, trace.globals)
    return report


def frame_header(n: int) -> bytes:
    return b"\x95" + struct.pack("<Q", n)


PAYLOAD = op.global_(*SYSTEM) + op.binunicode("true") + op.TUPLE1 + op.REDUCE + op.STOP


# -- one test per divergence ---------------------------------------------------------------------
def test_counted_argument_straddling_the_frame_end_hides_a_call_from_a_walk_of_the_bytes():
    """BINUNICODE's length crosses the frame's end: from bytes it is one long string (no import);
    ``_pickle`` on a file object drops the frame's last two bytes, reads the length from after the
    frame (0) and runs what follows; pickle.py stops. Without the straddle check: clean."""
    hidden = b"0" + op.global_(*SYSTEM) + b"(" + op.binunicode("true") + b"t" + op.REDUCE + op.STOP
    after = b"\x00\x00" + b"\x00\x00" + hidden
    size = 2 + len(hidden)
    body = b"X" + struct.pack("<H", size)  # the length's low bytes; its high bytes come after the frame
    data = op.proto(4) + frame_header(len(body)) + body + after + op.STOP
    seen = reached(data)
    assert seen["c-file"] == SYSTEM and seen["c-bytes"] is None and seen["py-bytes"] is None
    report = check_against_oracles(data, seen)
    assert "PK-S06" in rules(report) and report.exit_code == 1


def test_counted_argument_in_a_rare_opcode_straddling_the_frame_end():
    """BINBYTES (read with readinto by ``_pickle``: no bytes dropped) crosses the frame's end:
    pickle.py refuses it, the C unpickler reads on into the call."""
    body = b"B" + struct.pack("<I", 3) + b"ab"
    data = op.proto(4) + frame_header(len(body)) + body + b"c" + b"0" + PAYLOAD
    seen = reached(data)
    assert seen["c-bytes"] == seen["c-file"] == SYSTEM and seen["py-bytes"] is None
    assert "PK-S06" in rules(check_against_oracles(data, seen))


def test_text_argument_straddling_the_frame_end_reads_another_line_from_a_file():
    """Two GET lines cross the ends of two frames: from bytes they fetch 'collections' and
    'OrderedDict' (allowed), ``_pickle`` on a file object re-reads each line from after its frame
    and fetches 'os' and 'system'. Without the line check: clean."""
    memo = (b"Vcollections\np21\n0" + b"Vos\np1\n0" + b"VOrderedDict\np22\n0" + b"Vsystem\np2\n0")
    data = (op.proto(4) + memo + frame_header(2) + b"g2" + b"1\n" + frame_header(2) + b"g2" + b"2\n"
            + op.STACK_GLOBAL + op.EMPTY_TUPLE + op.REDUCE + op.STOP)
    seen = reached(data)
    assert seen["c-file"] == SYSTEM and seen["c-bytes"] == ("collections", "OrderedDict")
    report = check_against_oracles(data, seen)
    assert "PK-S06" in rules(report) and report.exit_code == 1


def test_global_line_straddling_the_frame_end():
    body = b"cos\nsys"
    data = op.proto(4) + frame_header(len(body)) + body + b"tem\n" + op.binunicode("true") + op.TUPLE1 + op.REDUCE + op.STOP
    seen = reached(data)
    assert seen["c-bytes"] == SYSTEM and seen["c-file"] == ("os", "tem") and seen["py-bytes"] is None
    assert "PK-S06" in rules(check_against_oracles(data, seen))


def test_frame_inside_a_frame():
    """pickle.py refuses a FRAME before the end of the current frame; the C unpickler reads on."""
    inner = frame_header(len(PAYLOAD)) + PAYLOAD
    data = op.proto(4) + frame_header(len(inner) + 1) + inner + b"N"
    seen = reached(data)
    assert seen["c-bytes"] == SYSTEM and seen["py-bytes"] is None
    assert "PK-S06" in rules(check_against_oracles(data, seen))


def test_frame_starting_where_the_last_one_ends_is_not_nested():
    data = op.proto(4) + frame_header(2) + b"N0" + frame_header(len(PAYLOAD)) + PAYLOAD
    seen = reached(data)
    assert set(seen.values()) == {SYSTEM}
    report = check_against_oracles(data, seen)
    assert "PK-S06" not in rules(report) and "PK-I01" in rules(report)


@pytest.mark.parametrize("size", [len(PAYLOAD) + 1, len(PAYLOAD) + 100, 10**9, 2**62, 2**63 - 1])
def test_frame_longer_than_the_data(size):
    """``_pickle`` refuses a FRAME longer than the rest; pickle.py reads it short and runs it."""
    data = op.proto(4) + frame_header(size) + PAYLOAD
    seen = reached(data)
    assert seen["c-bytes"] is None and seen["c-file"] is None and seen["py-bytes"] == SYSTEM
    report = check_against_oracles(data, seen)
    assert {"PK-S06", "PK-I01"} <= rules(report)


def test_frame_longer_than_the_data_fails_even_without_an_import():
    report = scan(op.proto(4) + frame_header(10**9) + op.EMPTY_DICT + op.STOP)
    assert report.exit_code == 1 and rules(report) == {"PK-S06"}


@pytest.mark.parametrize("size", [2**63, 2**64 - 1])
def test_frame_length_no_loader_accepts_stops_the_walk(size):
    """A length past sys.maxsize (a negative int64) is refused by both unpicklers before anything
    in it runs: the walker stops there too instead of reading a payload no loader reaches."""
    data = op.proto(4) + frame_header(size) + PAYLOAD
    assert set(reached(data).values()) == {None}
    report = check_against_oracles(data)
    assert report.exit_code == 2 and "PK-S01" in rules(report) and "PK-I01" not in rules(report)


@pytest.mark.parametrize("data", [
    op.proto(4) + frame_header(3) + b"NN0" + PAYLOAD,                               # shorter, ends between opcodes
    op.proto(4) + frame_header(5) + b"X\x04\x00\x00\x00" + b"true0" + PAYLOAD,      # ends between two reads
    op.proto(4) + frame_header(1) + b"c" + b"os\nsystem\n" + PAYLOAD[len(op.global_(*SYSTEM)):],  # ends after an opcode byte
    op.proto(4) + frame_header(0) + PAYLOAD,                                         # empty
    op.proto(4) + frame_header(len(PAYLOAD)) + PAYLOAD,                              # as the Pickler writes it
], ids=["shorter", "between-reads", "after-opcode-byte", "empty", "exact"])
def test_frames_every_loader_reads_alike_are_read_as_they_read_them(data):
    seen = reached(data)
    assert set(seen.values()) == {SYSTEM}
    report = check_against_oracles(data, seen)
    assert "PK-S06" not in rules(report) and "PK-I01" in rules(report)


@pytest.mark.parametrize("tail", [b"\x95", b"\x95\x00\x00\x00", frame_header(0), frame_header(5)],
                         ids=["opcode-only", "half-length", "empty-frame", "frame-past-the-end"])
def test_frame_at_the_very_end(tail):
    data = op.proto(4) + op.EMPTY_DICT + tail
    assert set(reached(data).values()) == {None}
    assert scan(data).exit_code != 0


def test_frame_running_past_stop_moves_the_next_pickle():
    """After STOP, a file read with ``peek`` stands after STOP; pickle.py and ``_pickle`` on other
    file objects stand after the frame. Here the bytes after STOP are a BINBYTES header that
    swallows the second pickle which only the after-the-frame readers run."""
    second = PAYLOAD
    body = op.NONE + op.STOP + b"B" + struct.pack("<I", len(second))
    data = op.proto(4) + frame_header(len(body)) + body + second
    seen = reached_in_sequence(data)
    assert seen["py-bytes"] == seen["c-file"] == SYSTEM and seen["c-buffered"] is None
    report = scan(data)
    assert "PK-S06" in rules(report) and report.exit_code != 0


# -- what the picklers write stays clean -------------------------------------------------------
_VALUES = [
    {"a": 1, "b": [1.5, None, True], "c": "é" * 10},
    {f"key{i}": list(range(i % 50)) for i in range(3000)},   # many frames
    [b"x" * (70 * 1024), {"k": b"y" * 10}, b"z" * (200 * 1024), "tail"],  # large bytes outside frames
    [bytearray(b"q" * (100 * 1024)), "s" * (90 * 1024), ("t",) * 10],
]


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("dumps", [pickle.dumps, pickle._dumps], ids=["c-pickler", "py-pickler"])
@pytest.mark.parametrize("index", range(len(_VALUES)))
def test_pickler_output_is_clean_and_unflagged(protocol, dumps, index):
    data = dumps(_VALUES[index], protocol=protocol)
    assert b"\x95" in data
    trace = walk(data)
    assert trace.stopped and trace.framing == [] and trace.end == len(data)
    report = scan(data)
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_torch_save_is_clean(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.zeros(4), "n": 3}
    for name, kwargs in [("zip.pt", {}), ("legacy.pt", {"_use_new_zipfile_serialization": False}),
                         ("zip-p4.pt", {"pickle_protocol": 4})]:
        path = tmp_path / name
        torch.save(state, path, **kwargs)
        report = tensorsafe.scan(path)
        assert report.exit_code == 0, (name, [str(f) for f in report.findings])


def test_joblib_dump_is_clean(tmp_path):
    joblib = pytest.importorskip("joblib")
    np = pytest.importorskip("numpy")
    path = tmp_path / "model.joblib"
    joblib.dump({"a": np.arange(40000, dtype=np.float64), "b": np.ones((3, 5), dtype=np.int8),
                 "names": [f"n{i}" for i in range(5000)]}, path)
    report = tensorsafe.scan(path)
    assert report.exit_code == 0, [str(f) for f in report.findings]


# -- random framings -----------------------------------------------------------------------------
_BASES = [
    [op.proto(4), op.global_(*SYSTEM), op.binunicode("true"), op.TUPLE1, op.REDUCE, op.STOP],
    [op.proto(4), op.NONE, op.POP, op.unicode_("os"), op.MEMOIZE, op.unicode_("system"), op.MEMOIZE,
     op.STACK_GLOBAL, op.MEMOIZE, op.unicode_("true"), op.TUPLE1, op.REDUCE, op.STOP],
    [op.proto(4), op.EMPTY_DICT, op.MARK, op.unicode_("k"), op.binbytes(b"v" * 20), op.SETITEMS, op.POP,
     op.global_(*SYSTEM), op.MARK, op.string("true"), op.TUPLE, op.REDUCE, op.STOP],
]


@st.composite
def framed(draw) -> bytes:
    """A payload pickle with FRAME opcodes put in front of random opcodes, each with a length that
    may end on an opcode boundary, inside an argument, past STOP or past the end of the data."""
    base = draw(st.sampled_from(_BASES))
    where = draw(st.lists(st.integers(0, len(base)), min_size=1, max_size=3, unique=True))
    out = b""
    for i, token in enumerate(base + [b""]):
        if i in where:
            rest = b"".join(base[i:])
            size = draw(st.one_of(st.integers(0, len(rest) + 4),
                                  st.sampled_from([len(rest), sum(map(len, base[i:i + 1]))]),
                                  st.sampled_from([2**62, 2**63 - 1, 2**63, 2**64 - 1])))
            out += frame_header(size)
        out += token
    return out


@settings(max_examples=150, **PROPS)
@given(framed())
@example(op.proto(4) + frame_header(9) + op.global_(*SYSTEM) + op.binunicode("true") + op.TUPLE1 + op.REDUCE + op.STOP)
def test_random_framings_never_scan_clean_when_a_loader_reaches_the_import(data):
    check_against_oracles(data)
