"""Small misses found by peer-suite reviews: nested-payload noise, lzma "alone" streams with other
lc/lp/pb, old-style (v7) tars, and dill's reconstructors (a decision pinned, not a fix)."""
from __future__ import annotations

import io
import lzma
import pickle
import tarfile

import numpy as np
import pytest

from tensorsafe.readers.blob import Span
from tensorsafe.readers.sniff import Kind, sniff
from tests import pickle_ops as op
from tests.conftest import rule_ids

SYSTEM = b"cos\nsystem\n(S'true'\ntR."
"""``os.system("true")`` at protocol 0: harmless, and never unpickled here."""
BENIGN = pickle.dumps({"weights": [1.0, 2.0], "step": 3}, protocol=2)


# -- 1. a nested pickle carried as _codecs.encode(text, "latin1") --------------------------------
def _loads_of_codecs_text(inner: bytes) -> bytes:
    """``_pickle.loads(_codecs.encode(text, "latin1"))``: how protocols 0-2 hand a loader bytes."""
    encoded = (op.global_("_codecs", "encode") + op.unicode_(inner.decode("latin-1")) + op.unicode_("latin1")
               + op.TUPLE2 + op.REDUCE)
    return op.proto(2) + op.global_("_pickle", "loads") + encoded + op.TUPLE1 + op.REDUCE + op.STOP


def _nested_findings(report):
    return [f for f in report.findings if f.location.members]


def test_codecs_encoding_name_is_not_scanned_as_a_nested_pickle(scan_bytes):
    report = scan_bytes(_loads_of_codecs_text(BENIGN))
    assert report.exit_code == 1 and "PK-I01" in rule_ids(report)  # a nested loader is still dangerous
    assert [f.rule_id for f in report.findings if f.rule_id == "PK-C04"] == ["PK-C04"]  # the text, not "latin1"
    assert _nested_findings(report) == []  # was: PK-S01 "could not find MARK" for the 6 bytes "latin1"


def test_hostile_pickle_in_codecs_text_is_still_found(scan_bytes):
    report = scan_bytes(_loads_of_codecs_text(SYSTEM))
    nested = _nested_findings(report)
    assert {f.trigger for f in nested} == {"os.system"}
    assert "PK-S01" not in {f.rule_id for f in nested}


# -- 2. lzma "alone" streams with any lc/lp/pb ---------------------------------------------------
LCLPPB = [(3, 0, 2), (0, 2, 0), (4, 0, 4), (1, 3, 1), (0, 0, 0), (0, 4, 2)]


def _alone(data: bytes, lc: int, lp: int, pb: int) -> bytes:
    filters = [{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb}]
    return lzma.compress(data, format=lzma.FORMAT_ALONE, filters=filters)


@pytest.mark.parametrize("lc,lp,pb", LCLPPB)
def test_lzma_alone_with_any_properties_is_read(scan_bytes, lc, lp, pb):
    data = _alone(BENIGN, lc, lp, pb)
    assert lzma.decompress(data) == BENIGN  # what lzma.open, LZMAFile, pandas and joblib read
    assert sniff(Span.of_bytes(data)) is Kind.LZMA
    report = scan_bytes(data, "model.pkl.lzma")
    assert report.exit_code == 0, report.findings


@pytest.mark.parametrize("lc,lp,pb", LCLPPB)
def test_hostile_pickle_in_lzma_alone_fails(scan_bytes, lc, lp, pb):
    report = scan_bytes(_alone(SYSTEM, lc, lp, pb))
    assert report.exit_code == 1
    assert any(f.trigger == "os.system" and f.location.members == ("<lzma>",) for f in report.findings)


def _header(props: int, dict_size: int = 1 << 23, size: int = (1 << 64) - 1, first: int = 0) -> bytes:
    return bytes([props]) + dict_size.to_bytes(4, "little") + size.to_bytes(8, "little") + bytes([first]) + b"x" * 64


@pytest.mark.parametrize("head", [
    _header(0x0D),                    # lc 4 + lp 1 > 4: the decoder refuses the properties
    _header(225),                     # pb > 4
    _header(0x12, dict_size=5_000_000),  # neither 2^n nor 2^n + 2^(n-1): lzma.open refuses it
    _header(0x12, dict_size=0),       # below any encoder's dictionary (leading zero bytes)
    _header(0x12, size=1 << 38),      # a declared size lzma.open refuses
    _header(0x12, first=1),           # the range coder's first byte is always 0
    b"\0" * 600,                      # an HDF5 user block, a raw zero dump
    b'[{"a": 1}, {"b": 2}]',          # JSON text
], ids=["lc+lp", "pb", "dict-5MB", "dict-0", "size-2^38", "first-byte", "zeros", "json"])
def test_lzma_alone_header_rule_refuses_what_the_decoder_refuses(head):
    assert sniff(Span.of_bytes(head)) is not Kind.LZMA


def test_joblib_prefix_is_still_lzma():
    assert sniff(Span.of_bytes(b"\x5d\x00\x00\x00\x00" + b"\0" * 40)) is Kind.LZMA


def test_lzma_alone_stream_only_format_alone_reads_is_never_clean(scan_bytes):
    """A dictionary size no encoder writes (5,000,000): lzma.open refuses the stream, an explicit
    ``LZMADecompressor(FORMAT_ALONE)`` reads it. Not recognised: unknown bytes, never clean."""
    data = bytearray(_alone(SYSTEM, 3, 0, 2))
    data[1:5] = (5_000_000).to_bytes(4, "little")
    assert lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(bytes(data)) == SYSTEM
    report = scan_bytes(bytes(data))
    assert report.exit_code != 0


# -- 3. old-style (v7) tars: no "ustar" magic -----------------------------------------------------
def _v7_tar(members: dict[str, bytes]) -> bytes:
    """A tar as pre-POSIX tools write it: the ustar fields (magic, version, owner names, prefix)
    are NUL and the checksum is computed over that header."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    raw = bytearray(buf.getvalue())
    pos = 0
    while pos + 512 <= len(raw) and raw[pos:pos + 512].strip(b"\0"):
        header = raw[pos:pos + 512]
        header[257:500] = bytes(243)
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        raw[pos:pos + 512] = header
        size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        pos += 512 + (size + 511) // 512 * 512
    assert b"ustar" not in raw
    return bytes(raw)


def test_benign_v7_tar_is_clean(scan_bytes):
    data = _v7_tar({"weights.pkl": BENIGN, "notes.txt": b"hello\n"})
    assert sorted(tarfile.open(fileobj=io.BytesIO(data)).getnames()) == ["notes.txt", "weights.pkl"]
    report = scan_bytes(data, "archive.tar")
    assert report.exit_code == 0, report.findings  # was: SCAN-01 for the whole file, exit 2


def test_hostile_v7_tar_fails_on_its_member(scan_bytes):
    report = scan_bytes(_v7_tar({"weights.pkl": SYSTEM}), "archive.tar")
    assert report.exit_code == 1
    assert {(f.rule_id, f.trigger) for f in report.findings} == {("PK-I01", "os.system")}
    assert report.findings[0].location.members == ("weights.pkl",)


def test_unreadable_v7_tar_is_still_never_clean(scan_bytes):
    """A first header tarfile takes, then a member that runs past the end: ARC-05, and unknown bytes."""
    data = _v7_tar({"weights.pkl": BENIGN * 8})[:700]
    report = scan_bytes(data, "archive.tar")
    assert report.exit_code == 2 and {"ARC-05", "SCAN-01"} <= rule_ids(report)


# -- 4. dill: its reconstructors stay outside the allowlist (decision pinned) ---------------------
def test_dill_reconstructors_are_not_allowed(scan_bytes):
    """``dill._dill._create_array(f, args, state, npdict)`` calls ``f(*args)``, then the result's
    ``__setstate__(state)`` outside a BUILD (where the allocation check PK-A01 reads an array's
    state) and ``__dict__.update(npdict)``; ``_load_type(name)`` returns whatever dill's type table
    holds (FunctionType, CodeType, ...) and the pickle calls that result. Neither is proven
    data-only by the judge as it stands, so dill data at protocol <= 3 fails (docs/policy.md)."""
    dill = pytest.importorskip("dill")
    for obj in (np.arange(4.0), {1, 2}):
        report = scan_bytes(dill.dumps(obj, protocol=3))
        assert report.exit_code == 1
        assert any(f.trigger and f.trigger.startswith("dill._dill.") for f in report.findings)


def test_dill_functions_fail(scan_bytes):
    dill = pytest.importorskip("dill")
    for protocol in (2, 3, 4):
        report = scan_bytes(dill.dumps(lambda x: x + 1, protocol=protocol))
        assert report.exit_code == 1
        assert "PK-I01" in rule_ids(report)
