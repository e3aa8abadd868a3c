"""Compression a loader decodes, we decode: LZ4 and zstd frames, every compressed joblib file,
archives we do not open (ARC-06), multi-member gzip in linear time under the scan deadline.

Payloads are harmless (``os.system("true")``) and are only ever pickled, never loaded."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import struct
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import joblib
import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.readers.blob import Span
from tensorsafe.readers.decompress import decompress
from tensorsafe.errors import LimitExceeded
from tests import pickle_ops as op
from tests.conftest import rule_ids
from tests.pickle_oracle import run_stream

SYSTEM = op.call_system()
BENIGN = op.proto(2) + op.unicode_("weights") + op.STOP
SKIPPABLE = struct.pack("<II", 0x184D2A50, 4) + b"skip"
PROPS = dict(derandomize=True, database=None, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TMP = tempfile.TemporaryDirectory(prefix="tensorsafe-compression-")


class Shell:
    """Pickles as ``os.system("true")`` (harmless); only ever dumped, never loaded."""

    def __reduce__(self):
        return (os.system, ("true",))


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _fails(report: tensorsafe.Report) -> bool:
    return report.exit_code == 1 and "PK-I01" in rule_ids(report)


# -- LZ4 and zstd -------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [lz4.frame.compress, _zstd], ids=["lz4", "zstd"])
def test_lz4_and_zstd_frames_are_decoded_and_scanned(scan_bytes, compress):
    report = scan_bytes(compress(SYSTEM))
    assert _fails(report)
    assert report.files[0].kind.endswith(":pickle")


@pytest.mark.parametrize("compress", [lz4.frame.compress, _zstd], ids=["lz4", "zstd"])
def test_payload_in_a_later_frame_is_found(scan_bytes, compress):
    assert _fails(scan_bytes(compress(BENIGN) + compress(SYSTEM)))


@pytest.mark.parametrize("compress", [lz4.frame.compress, _zstd], ids=["lz4", "zstd"])
def test_skippable_frames_are_skipped_as_their_tools_skip_them(scan_bytes, compress):
    assert _fails(scan_bytes(SKIPPABLE + compress(SYSTEM)))
    assert _fails(scan_bytes(compress(BENIGN) + SKIPPABLE + compress(SYSTEM)))


@pytest.mark.parametrize("compress", [lz4.frame.compress, _zstd], ids=["lz4", "zstd"])
def test_benign_frames_are_clean(scan_bytes, compress):
    report = scan_bytes(compress(BENIGN))
    assert report.exit_code == 0, report.findings


@pytest.mark.parametrize("compress", [lz4.frame.compress, _zstd], ids=["lz4", "zstd"])
def test_truncated_frames_are_never_clean(scan_bytes, compress):
    data = compress(BENIGN * 50)
    report = scan_bytes(data[:-3])
    assert report.exit_code == 2 and "ARC-02" in rule_ids(report)


@pytest.mark.parametrize("compress", [lz4.frame.compress, _zstd], ids=["lz4", "zstd"])
def test_decompression_bound_applies(scan_bytes, compress):
    report = scan_bytes(compress(b"\0" * (2 << 20)), limits=tensorsafe.ScanLimits(max_decompressed_bytes=1 << 20))
    assert report.exit_code == 2 and "ARC-03" in rule_ids(report)


def test_zstd_bomb_is_bounded_per_call():
    """One compressed frame of 64 MiB of zeros against a 1 MiB limit: stops near the limit."""
    bomb = _zstd(b"\0" * (64 << 20))
    with pytest.raises(LimitExceeded) as exc:
        decompress(Span.of_bytes(bomb), "zstd", 1 << 20, multi_stream=True)
    assert exc.value.limit == "MAX_DECOMPRESSED_BYTES"


@pytest.mark.parametrize("module, method, compress", [
    ("lz4.frame", "lz4", lz4.frame.compress), ("zstandard", "zstd", _zstd)])
def test_missing_decoder_is_unscanned_never_clean(scan_bytes, monkeypatch, module, method, compress):
    monkeypatch.setitem(sys.modules, module, None)
    report = scan_bytes(compress(SYSTEM))
    assert report.exit_code == 2
    assert rule_ids(report) == {"ARC-06"}
    assert "not installed" in report.findings[0].message


# -- joblib ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["zlib", "gzip", "bz2", "lzma", "xz", "lz4"])
def test_every_compressed_joblib_file_is_decoded_as_joblib_decodes_it(tmp_path, method):
    path = tmp_path / f"model.joblib.{method}"
    joblib.dump(Shell(), path, compress=(method, 3))
    report = tensorsafe.scan(path)
    assert _fails(report)
    assert report.files[0].kind == f"{method}:pickle"


def test_joblib_lzma_with_a_small_dictionary(scan_bytes):
    """joblib's lzma prefix is ``5d 00``: a 4 KiB dictionary makes the header ``5d 00 10 00 00``."""
    c = lzma.LZMACompressor(lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 4096}])
    data = c.compress(SYSTEM) + c.flush()
    assert data[:3] == b"\x5d\x00\x10"
    assert _fails(scan_bytes(data))


@pytest.mark.parametrize("space", [b"", b" "])
def test_joblib_zfile_is_decoded(scan_bytes, space):
    """joblib < 0.9.3 "Z-files" (``numpy_pickle_compat.read_zfile``), which joblib.load still reads."""
    data = b"ZF" + hex(len(SYSTEM)).encode().ljust(18) + space + zlib.compress(SYSTEM)
    report = scan_bytes(data)
    assert _fails(report)
    assert report.files[0].kind == "joblib-zfile:pickle"


# -- archives we do not open ------------------------------------------------------------------------
@pytest.mark.parametrize("magic, name", [
    (b"7z\xbc\xaf\x27\x1c", "7z archive"), (b"Rar!\x1a\x07\x00", "rar archive"),
    (b"Rar!\x1a\x07\x01\x00", "rar archive"), (b"LZIP", "lzip stream"), (b"MSCF\0\0\0\0", "cab archive"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop stream"), (b"\x1f\x9d", "unix compress (.Z) stream")])
def test_archives_we_do_not_open_are_unscanned(scan_bytes, magic, name):
    report = scan_bytes(magic + b"\0" * 8 + SYSTEM)
    assert report.exit_code == 2
    assert rule_ids(report) == {"ARC-06"}
    assert report.findings[0].message.startswith(f"{name}: tensorsafe does not open it")


def test_real_7z_archive_is_unscanned(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    path = tmp_path / "model.7z"
    with py7zr.SevenZipFile(path, "w") as archive:
        archive.writestr(SYSTEM, "model.pkl")
    report = tensorsafe.scan(path)
    assert report.exit_code == 2 and "ARC-06" in rule_ids(report)


def test_unopened_archive_inside_a_zip_is_unscanned(tmp_path):
    import zipfile

    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("weights.7z", b"7z\xbc\xaf\x27\x1c" + b"\0" * 32)
    report = tensorsafe.scan(path)
    assert report.exit_code == 2 and "ARC-06" in rule_ids(report)


# -- tar members read the way tarfile.extractfile reads them ---------------------------------------
def _tar(info: tarfile.TarInfo, stored: bytes, header: bytes | None = None) -> bytes:
    head = header if header is not None else info.tobuf(tarfile.GNU_FORMAT)
    pad = b"\0" * (-len(stored) % 512)
    return head + stored + pad + b"\0" * 1024


def test_tar_member_of_unknown_type_is_scanned(scan_bytes):
    import tarfile

    info = tarfile.TarInfo("payload.pkl")
    info.type, info.size = b"Z", len(SYSTEM)
    data = _tar(info, SYSTEM)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # what a loader reads
        assert tar.extractfile("payload.pkl").read() == SYSTEM
    assert _fails(scan_bytes(data))


def test_sparse_tar_member_is_rebuilt_with_its_holes(scan_bytes):
    """The loader reads ``X`` + four zero bytes (an empty string) from a hole, then the payload; the
    stored bytes alone read as a string of absurd length."""
    import tarfile

    content = op.proto(2) + b"X\0\0\0\0" + b"0" + SYSTEM[2:]
    chunks = [(0, 3), (7, len(content) - 7)]
    stored = content[:3] + content[7:]
    info = tarfile.TarInfo("payload.pkl")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, len(stored)
    head = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    for i, (offset, size) in enumerate(chunks):
        head[386 + 24 * i:386 + 24 * i + 24] = b"%011o\0%011o\0" % (offset, size)
    head[483:495] = b"%011o\0" % len(content)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    data = _tar(info, stored, bytes(head))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("payload.pkl").read() == content
    assert _fails(scan_bytes(data))


# -- gzip members: linear time, and the scan deadline --------------------------------------------
EMPTY_GZIP = gzip.compress(b"", mtime=0)


def test_many_empty_gzip_members_scan_in_linear_time(scan_bytes):
    data = EMPTY_GZIP * 100_000 + gzip.compress(SYSTEM, mtime=0)
    started = time.monotonic()
    report = scan_bytes(data)
    assert time.monotonic() - started < 15  # quadratic: past 60 s
    assert _fails(report)


def test_gzip_padding_between_members_is_skipped_as_gzip_does(scan_bytes):
    data = gzip.compress(BENIGN) + b"\0" * 5000 + gzip.compress(SYSTEM) + b"\0" * 7
    assert gzip.decompress(data).endswith(SYSTEM)
    assert _fails(scan_bytes(data))


def test_decompression_checks_the_deadline():
    with pytest.raises(LimitExceeded) as exc:
        decompress(Span.of_bytes(EMPTY_GZIP * 1000), "gzip", multi_stream=True, deadline=time.monotonic() - 1)
    assert exc.value.limit == "MAX_SCAN_SECONDS"


def test_timeout_stops_a_long_decompression_with_io_02(scan_bytes):
    """10^6 members take many seconds to decode; the deadline stops the decoder itself, not the
    scan of its output afterwards."""
    started = time.monotonic()
    report = scan_bytes(EMPTY_GZIP * 1_000_000, limits=tensorsafe.ScanLimits(timeout_seconds=0.5))
    elapsed = time.monotonic() - started
    assert report.exit_code == 2
    assert "IO-02" in rule_ids(report)
    assert [f.rule_id for f in report.findings].count("IO-02") == 1
    assert elapsed < 6


def test_zip_member_decompression_checks_the_deadline(monkeypatch):
    import zipfile

    from tensorsafe.readers import zip as zip_module
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.pkl", BENIGN)
    view = zip_module.open_zip(Span.of_bytes(buf.getvalue()))
    with pytest.raises(LimitExceeded) as exc:
        zip_module.member_span(view, view.members[0], deadline=time.monotonic() - 1)
    assert exc.value.limit == "MAX_SCAN_SECONDS"


# -- properties: hostile bytes are never clean and never crash ------------------------------------
MAGICS = {
    "lz4": b"\x04\x22\x4d\x18", "zstd": b"\x28\xb5\x2f\xfd", "gzip": b"\x1f\x8b", "bz2": b"BZh9",
    "xz": b"\xfd7zXZ\x00", "zlib": b"\x78\x9c", "7z": b"7z\xbc\xaf\x27\x1c", "rar": b"Rar!\x1a\x07\x00",
}
COMPRESSORS = {
    "lz4": lz4.frame.compress, "zstd": _zstd, "gzip": gzip.compress, "bz2": bz2.compress,
    "xz": lzma.compress, "zlib": zlib.compress,
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
}


def _scan_file(data: bytes) -> tensorsafe.Report:
    path = Path(_TMP.name) / "sample.bin"
    path.write_bytes(data)
    return tensorsafe.scan(path, limits=tensorsafe.ScanLimits(timeout_seconds=10, max_decompressed_bytes=16 << 20))


def _reference_decode(method: str, data: bytes) -> tuple[bytes, bool]:
    """What the method's own reader decodes (as far as it gets) and whether it read all of it."""
    try:
        if method == "lz4":
            return lz4.frame.decompress(data), True
        if method == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
            out = reader.read(16 << 20)
            return out, False  # zstandard's reader does not report truncation: never "complete"
        if method == "gzip":
            return gzip.decompress(data), True
        if method == "bz2":
            return bz2.decompress(data), True
        if method in ("xz", "lzma"):
            return lzma.decompress(data), True
        if method == "zlib":
            return zlib.decompress(data), True
    except Exception:
        pass
    return b"", False


def _assert_sound(method: str, data: bytes) -> None:
    report = _scan_file(data)
    internal = [f for f in report.findings if f.rule_id == "ARC-05" and "internal error" in f.message]
    assert not internal, internal
    if report.exit_code != 0:
        return
    decoded, complete = _reference_decode(method, data)
    assert complete, f"clean, but the {method} reader cannot read it all: {data!r}"
    stream = run_stream(decoded, 0, mode="c")
    assert not stream.imports and not stream.unresolved, f"clean, but a loader imports {stream.imports}"


@settings(max_examples=60, **PROPS)
@given(method=st.sampled_from(sorted(MAGICS)), tail=st.binary(max_size=64))
def test_random_bytes_behind_a_magic_are_never_clean(method, tail):
    data = MAGICS[method] + tail
    report = _scan_file(data)
    internal = [f for f in report.findings if f.rule_id == "ARC-05" and "internal error" in f.message]
    assert not internal, internal
    if method != "zlib":  # the one weak magic: bytes that are not zlib are read as what they are
        assert report.exit_code != 0, (data, report.findings)
    else:
        _assert_sound(method, data)


@settings(max_examples=80, **PROPS)
@given(method=st.sampled_from(sorted(COMPRESSORS)), cut=st.floats(0, 1), flips=st.lists(
    st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3))
def test_truncated_or_corrupted_compressed_payload_is_never_clean(method, cut, flips):
    data = bytearray(COMPRESSORS[method](SYSTEM))
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    data = bytes(data[:max(1, int(cut * len(data)))]) if cut < 1 else bytes(data)
    _assert_sound(method, data)
