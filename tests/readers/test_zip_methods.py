"""Zip members: every method a Python zip reader decodes is decoded and scanned, any other is
ARC-06 (unscanned); Zip64 records and data descriptors are read as zipfile reads them; overlapping
members are reported even when their payload is benign.

Payloads are harmless (``os.system("true")``) and are only ever pickled, never loaded."""
from __future__ import annotations

import io
import lzma
import struct
import sys
import zipfile
import zlib

import pytest
import zstandard

from tensorsafe.rules import Outcome
from tests import pickle_ops as op
from tests.conftest import rule_ids

SYSTEM = op.call_system()
BENIGN = op.proto(2) + op.unicode_("weights") + op.STOP
LOCAL = struct.Struct("<4s5H3I2H")
CENTRAL = struct.Struct("<4s6H3I5HII")
END = struct.Struct("<4s4HIIH")
ZIP64_END = struct.Struct("<4sQ2H2I4Q")
ZIP64_LOCATOR = struct.Struct("<4sIQI")


class Unseekable(io.RawIOBase):
    """A write-only stream without seek/tell: zipfile then writes data descriptors (flag bit 3)."""

    def __init__(self):
        super().__init__()
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.buf += b
        return len(b)


def _zipfile(payload: bytes, method: int = zipfile.ZIP_STORED, *, unseekable: bool = False,
             force_zip64: bool = False) -> bytes:
    out = Unseekable() if unseekable else io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=force_zip64) as member:
            member.write(payload)
    return bytes(out.buf) if unseekable else out.getvalue()


def _hand_zip(members: list[tuple[bytes, bytes, int, bytes]]) -> bytes:
    """(name, stored bytes, method, uncompressed bytes) per member, no data descriptors."""
    body, central = b"", b""
    for name, raw, method, plain in members:
        crc, size = zlib.crc32(plain), len(plain)
        central += CENTRAL.pack(b"PK\x01\x02", 63, 63, 0, method, 0, 0, crc, len(raw), size, len(name),
                                0, 0, 0, 0, 0, len(body)) + name
        body += LOCAL.pack(b"PK\x03\x04", 63, 0, method, 0, 0, crc, len(raw), size, len(name), 0) + name + raw
    return body + central + END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0)


def _fails_on_payload(report) -> bool:
    return report.exit_code == 1 and "PK-I01" in rule_ids(report)


# -- methods ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
                         ids=["stored", "deflate", "bzip2", "lzma"])
def test_every_zipfile_method_is_decoded(scan_bytes, method):
    assert _fails_on_payload(scan_bytes(_zipfile(SYSTEM, method)))
    benign = scan_bytes(_zipfile(BENIGN, method))
    assert benign.exit_code == 0, benign.findings


def test_lzma_member_framing_is_read_as_zipfile_reads_it(scan_bytes):
    """A zip LZMA member: LZMA SDK version (2 bytes), properties size, raw LZMA1 properties, stream;
    here with a 4 KiB dictionary and another SDK version than zipfile writes."""
    c = lzma.LZMACompressor(lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 4096}])
    alone = c.compress(SYSTEM) + c.flush()  # properties (5), size (8, unknown), stream
    raw = struct.pack("<BBH", 19, 0, 5) + alone[:5] + alone[13:]
    archive = _hand_zip([(b"data.pkl", raw, zipfile.ZIP_LZMA, SYSTEM)])
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.read("data.pkl") == SYSTEM
    assert _fails_on_payload(scan_bytes(archive))


def test_zstd_member_is_decoded_as_python_314_zipfile_decodes_it(scan_bytes):
    raw = zstandard.ZstdCompressor().compress(SYSTEM)
    report = scan_bytes(_hand_zip([(b"data.pkl", raw, 93, SYSTEM)]))
    assert _fails_on_payload(report)


def test_zstd_member_without_the_decoder_is_unscanned(scan_bytes, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    raw = zstandard.ZstdCompressor().compress(SYSTEM)
    report = scan_bytes(_hand_zip([(b"data.pkl", raw, 93, SYSTEM)]))
    assert report.exit_code == 2
    assert "ARC-06" in rule_ids(report) and "PK-I01" not in rule_ids(report)


@pytest.mark.parametrize("method", [9, 6, 98, 77], ids=["deflate64", "implode", "ppmd", "unknown"])
def test_other_methods_are_unscanned_never_clean_or_skipped(scan_bytes, method):
    report = scan_bytes(_hand_zip([(b"data.pkl", zlib.compress(SYSTEM)[2:-4], method, SYSTEM)]))
    assert report.exit_code == 2
    assert "ARC-06" in rule_ids(report)
    finding = next(f for f in report.findings if f.rule_id == "ARC-06")
    assert f"compression method {method}" in finding.message


# -- zip64 and data descriptors -----------------------------------------------------------------------
def _zip64_end_records(data: bytes) -> bytes:
    """The same archive with a zip64 end record and locator, the classic end record saturated."""
    at = data.rindex(b"PK\x05\x06")
    _, _, _, n, total, cd_size, cd_offset, _ = END.unpack_from(data, at)
    z64 = ZIP64_END.pack(b"PK\x06\x06", ZIP64_END.size - 12, 45, 45, 0, 0, n, total, cd_size, cd_offset)
    locator = ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, at, 1)
    end = END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:at] + z64 + locator + end


def _drop_descriptor_signature(data: bytes) -> bytes:
    """One member written with a data descriptor, its optional ``PK\\x07\\x08`` signature removed."""
    at = data.index(b"PK\x07\x08")
    data = data[:at] + data[at + 4:]
    end = data.rindex(b"PK\x05\x06")
    fields = list(END.unpack_from(data, end))
    fields[6] -= 4
    return data[:end] + END.pack(*fields) + data[end + END.size:]


VARIANTS = {
    "zip64-extra": lambda p: _zipfile(p, zipfile.ZIP_DEFLATED, force_zip64=True),
    "zip64-end-records": lambda p: _zip64_end_records(_zipfile(p, zipfile.ZIP_DEFLATED)),
    "zip64-everything": lambda p: _zip64_end_records(_zipfile(p, zipfile.ZIP_DEFLATED, force_zip64=True)),
    "descriptor": lambda p: _zipfile(p, zipfile.ZIP_DEFLATED, unseekable=True),
    "descriptor-stored": lambda p: _zipfile(p, zipfile.ZIP_STORED, unseekable=True),
    "descriptor-zip64": lambda p: _zipfile(p, zipfile.ZIP_DEFLATED, unseekable=True, force_zip64=True),
    "descriptor-no-signature": lambda p: _drop_descriptor_signature(_zipfile(p, zipfile.ZIP_DEFLATED,
                                                                               unseekable=True)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_zip64_and_data_descriptors_hide_nothing(scan_bytes, variant):
    data = VARIANTS[variant](SYSTEM)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the reader a loader uses can read it
        assert zf.read("archive/data.pkl") == SYSTEM
    assert _fails_on_payload(scan_bytes(data))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_zip64_and_data_descriptors_are_not_anomalies(scan_bytes, variant):
    report = scan_bytes(VARIANTS[variant](BENIGN))
    assert report.exit_code == 0, report.findings


# -- overlap ----------------------------------------------------------------------------------------
def test_overlapping_members_with_a_benign_payload_still_fail(scan_bytes):
    """Member A's data holds member B's whole record; both payloads are benign. Only the overlap
    check can fail this file."""
    record_b = LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(BENIGN), len(BENIGN), len(BENIGN), 5, 0) \
        + b"b.pkl" + BENIGN
    data_a = BENIGN + record_b
    header_a = LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data_a), len(data_a), len(data_a), 5, 0) + b"a.pkl"
    offset_b = len(header_a) + len(BENIGN)
    central = b""
    for name, data, offset in ((b"a.pkl", data_a, 0), (b"b.pkl", BENIGN, offset_b)):
        central += CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data), 5,
                                0, 0, 0, 0, 0, offset) + name
    body = header_a + data_a
    archive = body + central + END.pack(b"PK\x05\x06", 0, 0, 2, 2, len(central), len(body), 0)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.read("b.pkl") == BENIGN
    report = scan_bytes(archive)
    assert "ZIP-06" in rule_ids(report)
    assert report.exit_code == 1
    assert {f.rule_id for f in report.findings if f.outcome is Outcome.FAIL} == {"ZIP-06"}
