"""Hostile headers get a finding and exit 1 or 2, in bounded memory and time."""
from __future__ import annotations

import struct
import time
import tracemalloc

import pytest

import tensorsafe
from tensorsafe.safetensors import HeaderLimits

BIG = 100 << 20


def _check(tmp_path, data: bytes, *, seconds: float = 5.0, memory: int = 64 << 20):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(data)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        report = tensorsafe.validate(path, HeaderLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert report.exit_code in (1, 2) and report.findings
    assert elapsed < seconds, f"{elapsed:.1f} s"
    assert peak < memory, f"peak {peak:,} bytes"
    return [f.rule_id for f in report.findings], peak


def test_length_2_63(tmp_path):
    ids, peak = _check(tmp_path, struct.pack("<Q", 1 << 63) + b"{}" + bytes(6))
    assert ids == ["ST-F02"] and peak < 1 << 20


def test_100mb_length_on_1kb_file_allocates_nothing(tmp_path):
    ids, peak = _check(tmp_path, struct.pack("<Q", 99_999_999) + b"{" + b" " * 1015)
    assert ids == ["ST-F03"] and peak < 1 << 20


def test_deep_nesting(tmp_path):
    text = b'{"a":' + b"[" * 5_000_000
    ids, _ = _check(tmp_path, struct.pack("<Q", len(text)) + text)
    assert ids == ["ST-F06"]


def test_deep_nesting_of_objects(tmp_path):
    text = b'{"a":' * 1_000_000 + b"1" + b"}" * 1_000_000
    ids, _ = _check(tmp_path, struct.pack("<Q", len(text)) + text, memory=160 << 20)
    assert ids == ["ST-F06"]


def test_nul_header(tmp_path):
    ids, _ = _check(tmp_path, struct.pack("<Q", 4096) + bytes(4096))
    assert ids == ["ST-F05"]


def test_invalid_utf8(tmp_path):
    ids, _ = _check(tmp_path, struct.pack("<Q", 16) + b'{"a\xff\xfe":1}    ' + b"x" * 8)
    assert ids == ["ST-F04"]


def test_many_tiny_tensors_over_the_limit(tmp_path):
    n = 150_000
    parts = [f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(n)]
    text = ("{" + ",".join(parts) + "}").encode()
    text += b" " * (-len(text) % 8)
    ids, _ = _check(tmp_path, struct.pack("<Q", len(text)) + text, seconds=20, memory=400 << 20)
    assert ids[0] == "ST-P02"


@pytest.mark.parametrize("tail", [b"NaN}", b"1e999}", b'"\\ud800"}'])
def test_error_at_the_end_of_a_big_header(tmp_path, tail):
    body = b",".join(b'"k%d":"%s"' % (i, b"v" * 50) for i in range(20_000))
    text = b'{"__metadata__":{' + body + b'},"z":' + tail
    ids, _ = _check(tmp_path, struct.pack("<Q", len(text)) + text, seconds=10, memory=200 << 20)
    assert ids == ["ST-F05"]
