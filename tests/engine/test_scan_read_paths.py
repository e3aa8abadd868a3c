"""The scanner's fast paths read the same bytes and reach the same verdicts as the slow ones.

A small file is read whole into memory, a large one is memory-mapped (``MappedFile(read_small=True)``);
a span whose first opcode already fails is not walked (``pickle_stream._fails_at_once``); numpy
headers are parsed once per distinct header text. Each case here scans real files both ways.
"""
from __future__ import annotations

import os
import pickle
import struct

import pytest

import tensorsafe
from tensorsafe.engine import scanner
from tensorsafe.errors import UnreadableFileError
from tensorsafe.limits import ScanLimits
from tensorsafe.readers import blob
from tests.archives import zip_bytes
from tests import pickle_ops as ops
from tests.conftest import rule_ids

PAYLOAD = ops.proto(2) + ops.global_("os", "system") + ops.binunicode("true") + b"\x85R."
"""os.system("true"): harmless, and what a loader would run."""


_zip = zip_bytes


def _npy(header: str, body: bytes = b"") -> bytes:
    text = header.encode("latin-1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


CASES = {
    "benign.pkl": pickle.dumps({"epoch": 3, "names": ["a", "b"], "lr": 1e-4}, protocol=2),
    "evil.pkl": PAYLOAD,
    "model.pt": _zip({"model/data.pkl": pickle.dumps({"w": 1}, protocol=2), "model/version": b"3\n",
                      "model/byteorder": b"little", "model/.data/serialization_id": b"0123456789"}),
    "evil.pt": _zip({"model/data.pkl": PAYLOAD, "model/version": b"3\n"}),
    "text_member.zip": _zip({"notes.txt": b"little", "odd.bin": b"\x00\x01\x02\x03"}),
    "array.npy": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", b"\0" * 8),
    "objects.npy": _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", PAYLOAD),
    "bad_header.npy": _npy("{'descr': '<f4', 'shape': (2,), 'x': __import__('os')}"),
    "version": b"3\n",
    "empty.bin": b"",
}


def _summary(report: tensorsafe.Report) -> list[tuple]:
    return [(f.path, f.kind, f.size, f.pickles, sorted(map(str, f.findings)),
             [(u.module, u.name, u.tier, u.count) for u in f.imports]) for f in report.files]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_file_read_whole_and_a_mapped_file_get_the_same_report(tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_bytes(CASES[name])
    whole = tensorsafe.scan(path)
    monkeypatch.setattr(blob, "SMALL_FILE_BYTES", -1)  # every file mapped, as before the small-file read
    mapped = tensorsafe.scan(path)
    assert _summary(whole) == _summary(mapped)


def test_the_verdicts_the_fast_paths_reach(scan_bytes):
    assert rule_ids(scan_bytes(CASES["evil.pt"], "evil.pt")) >= {"PK-I01"}
    assert rule_ids(scan_bytes(CASES["objects.npy"], "objects.npy")) >= {"NPY-01", "PK-I01"}
    assert scan_bytes(CASES["model.pt"], "model.pt").exit_code == 0
    assert scan_bytes(CASES["array.npy"], "array.npy").exit_code == 0
    assert "NPY-02" in rule_ids(scan_bytes(CASES["bad_header.npy"], "bad.npy"))


def test_a_repeated_npy_header_gets_the_same_verdict_each_time(scan_bytes):
    """The header parse is memoized by its text: the second file's verdict is the first's."""
    first = scan_bytes(CASES["objects.npy"], "a.npy")
    second = scan_bytes(CASES["objects.npy"], "b.npy")
    assert rule_ids(first) == rule_ids(second) >= {"NPY-01"}
    assert "NPY-02" in rule_ids(scan_bytes(CASES["bad_header.npy"], "c.npy"))
    assert "NPY-02" in rule_ids(scan_bytes(CASES["bad_header.npy"], "d.npy"))


def test_a_stream_that_fails_at_once_is_still_walked_when_a_limit_is_that_low(scan_bytes):
    """A lone STOP fails as a pickle (stack underflow) without any limit; with no opcode allowed
    the walk reports the limit first, so the shortcut must not answer for it."""
    assert scan_bytes(b".", "dot.txt").exit_code == 0
    limited = scan_bytes(b".", "dot.txt", limits=ScanLimits(max_opcodes=0))
    assert "PK-L01" in rule_ids(limited)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc (a file whose size says 0)")
def test_a_file_with_more_bytes_than_its_size_is_not_judged():
    """/proc files say they hold 0 bytes and hold more: a loader reads them, so a scan of "nothing" is no verdict."""
    report = tensorsafe.scan("/proc/self/status")
    assert report.exit_code == 2 and not report.clean
    assert "holds more bytes than its size" in report.files[0].findings[0].message



@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_put_where_a_checked_file_was_is_refused_without_waiting(tmp_path, monkeypatch):
    """The scanner stats a path before it opens it; a FIFO swapped in between must not block the scan
    (opening a FIFO for reading waits for a writer) and is no verdict."""
    fifo = tmp_path / "model.ckpt"
    os.mkfifo(fifo)
    monkeypatch.setattr(scanner, "_not_a_regular_file", lambda fs: False)  # as if the stat saw a regular file
    with pytest.raises(UnreadableFileError, match="a FIFO"):
        blob.MappedFile(fifo, read_small=True)
    report = tensorsafe.scan(fifo)
    assert report.exit_code == 2 and "IO-01" in rule_ids(report)
