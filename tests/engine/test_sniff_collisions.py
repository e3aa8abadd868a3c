"""Safetensors whose 8-byte header length spells another format's magic: the scan decides by bytes,
and each loader by its own API, so a file that is valid safetensors is judged as safetensors (and as
the other format too, when that reading yields anything)."""
from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import pytest

import tensorsafe
from tensorsafe.pickles.values import BytesRef
from tensorsafe.readers.blob import Span
from tensorsafe.readers.safetensors.layout import MAX_HEADER_BYTES
from tensorsafe.readers.sniff import (BZ2_MAGIC, LEADING_MAGICS, LZMA_ALONE_MAGIC, UNOPENED_FORMATS, Kind, sniff)
from tensorsafe.safetensors.polyglot import pickle_front
from tests.conftest import rule_ids

PAYLOAD_PICKLE = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02."
"""os.system("true"): harmless, and what a loader would run."""
MAGICS = [m for group in LEADING_MAGICS.values() for m, _ in group] + [m for m, _ in UNOPENED_FORMATS] + [
    LZMA_ALONE_MAGIC, b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x50\x2a\x4d\x18"]
"""Every magic sniff tells a kind by (bz2 with its block-size digit, a skippable LZ4/zstd frame)."""


def _smallest_length(magic: bytes) -> int:
    """The smallest header length whose little-endian bytes start with ``magic``."""
    spelled = magic + b"1" if magic == BZ2_MAGIC else magic  # sniff wants bz2's block-size digit too
    return int.from_bytes(spelled, "little") if len(spelled) <= 8 else 1 << 64


def _torch_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", PAYLOAD_PICKLE)
    return out.getvalue()


def _safetensors(length: int, *, lead: int = 0, tail: bytes = b"", tensor_bytes: int = 16) -> bytes:
    """A valid file whose header text is exactly ``length`` bytes (``lead`` spaces before the ``{``,
    spaces after the ``}``), one U8 tensor holding ``tensor_bytes`` zero bytes then ``tail``."""
    data = bytes(tensor_bytes) + tail
    text = b" " * lead + json.dumps({"t": {"dtype": "U8", "shape": [len(data)],
                                           "data_offsets": [0, len(data)]}}).encode()
    assert len(text) <= length
    return struct.pack("<Q", length) + text + b" " * (length - len(text)) + data


POSSIBLE = [m for m in MAGICS if _smallest_length(m) <= MAX_HEADER_BYTES]


def test_the_magics_a_header_length_can_spell():
    # the ones the format leaves room for: gzip, a zip's local header, unix compress, lzma-alone, zlib
    assert sorted(POSSIBLE) == sorted([b"PK\x03\x04", b"\x1f\x8b", b"\x1f\x9d", b"\x1f\xa0", LZMA_ALONE_MAGIC,
                                       b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"])


@pytest.mark.parametrize("magic", [m for m in POSSIBLE if m != b"PK\x03\x04"], ids=lambda m: m.hex())
def test_safetensors_whose_length_spells_a_magic_is_safetensors(scan_bytes, magic):
    length = _smallest_length(magic)
    data = _safetensors(length)
    assert data.startswith(magic)
    report = scan_bytes(data, "weights.bin")
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert report.files[0].kind == "safetensors"
    assert rule_ids(report) <= {"ST-A01"}
    assert sniff(Span.of_bytes(data)) is Kind.SAFETENSORS  # the loader and the converter read it as that too


def test_a_gzip_length_safetensors_file_loads(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(_safetensors(_smallest_length(b"\x1f\x8b")))
    assert list(tensorsafe.load_state_dict(path, framework="numpy")) == ["t"]


@pytest.mark.parametrize("magic", [m for m in POSSIBLE if m != b"PK\x03\x04"], ids=lambda m: m.hex())
def test_a_zip_in_the_last_tensor_is_judged_whatever_the_length_spells(scan_bytes, magic):
    report = scan_bytes(_safetensors(_smallest_length(magic), tail=_torch_zip()), "weights.bin")
    assert report.exit_code == 1
    assert {"ST-P08", "PK-I01"} <= rule_ids(report)
    # the file's own gzip reading yields nothing, so no loader gets anything from it (the bytes before
    # the zip are scanned on their own, as a zip reader's view of them)
    assert not [f for f in report.findings if f.rule_id == "ARC-02" and not f.location.members]


def test_a_67_mb_header_whose_length_spells_a_zip_local_header(scan_bytes):
    length = _smallest_length(b"PK\x03\x04")
    assert length == 67_324_752
    clean = scan_bytes(_safetensors(length), "weights.bin")
    assert clean.exit_code == 0 and clean.files[0].kind == "safetensors", [str(f) for f in clean.findings]
    hostile = scan_bytes(_safetensors(length, tail=_torch_zip()), "weights.bin")
    assert hostile.exit_code == 1 and hostile.files[0].kind == "safetensors"
    assert {"ST-P08", "PK-I01"} <= rule_ids(hostile)


def _spread(total: int, count: int, allowed: list[int]) -> list[int]:
    """``count`` values from ``allowed`` (a sorted run of integers, maybe with holes) that sum to ``total``."""
    out = [allowed[0]] * count
    left = total - sum(out)
    for i in range(count):
        for value in reversed(allowed):
            if value - out[i] <= left:
                left -= value - out[i]
                out[i] = value
                break
    assert left == 0 and sum(out) == total
    return out


def _stored_block_lengths(total: int, count: int = 20) -> list[int]:
    """Lengths of ``count`` non-final stored deflate blocks that cover ``total`` bytes (5 header bytes
    each), each length's two bytes ASCII (no quote, no backslash) and their complements a valid
    two-byte UTF-8 sequence: the block headers are JSON string text."""
    lows, highs = list(range(0x23, 0x3E)), [b for b in range(0x40, 0x7F) if b != 0x5C]
    payload = total - 5 * count
    low_sum = next(s for s in range(lows[0] * count, lows[-1] * count + 1) if (payload - s) % 256 == 0)
    return [h << 8 | lo for h, lo in zip(_spread((payload - low_sum) // 256, count, highs),
                                         _spread(low_sum, count, lows))]


def _gzip_polyglot() -> bytes:
    """Valid safetensors that is also a gzip member: the length 0x00088B1F is ``1F 8B 08 00`` then a
    zero mtime; the header's ``{"`` is XFL and OS; stored deflate blocks run through a tensor name
    and the rest of the header, and the final one, in the tensor data, holds a torch zip."""
    length = 0x00088B1F
    archive = _torch_zip()
    final = b"\x01" + struct.pack("<HH", len(archive), len(archive) ^ 0xFFFF) + archive
    tensor_len = len(final) + 8
    suffix = json.dumps({"t": {"dtype": "U8", "shape": [tensor_len], "data_offsets": [0, tensor_len]}})[1:]
    suffix_bytes = ("\":" + suffix.split(":", 1)[1]).encode()  # the closing quote of the name, then its entry
    blocks = _stored_block_lengths(length - 2)
    chain, payloads = bytearray(), bytearray()
    for n in blocks:
        chain += b"0" + struct.pack("<HH", n, n ^ 0xFFFF)
        start = len(chain)
        chain += b"a" * n
        payloads += chain[start:]
    text = b'{"' + bytes(chain)
    assert len(text) == length
    assert text.endswith(b"a" * len(suffix_bytes))  # the last block's payload holds the end of the header
    text = text[:-len(suffix_bytes)] + suffix_bytes
    payloads = payloads[:-len(suffix_bytes)] + suffix_bytes + archive
    trailer = struct.pack("<II", zlib.crc32(payloads), len(payloads) & 0xFFFFFFFF)
    data = struct.pack("<Q", length) + text + final + trailer
    assert data.startswith(b"\x1f\x8b\x08\x00\x00\x00\x00\x00")
    assert zlib.decompress(data, 31) == bytes(payloads)
    json.loads(text)
    return data


def test_safetensors_that_is_also_gzip_is_scanned_both_ways(scan_bytes):
    report = scan_bytes(_gzip_polyglot(), "weights.bin")
    assert report.files[0].kind == "safetensors"
    assert report.exit_code == 1
    inside_gzip = [f for f in report.findings if f.rule_id == "PK-I01" and "<gzip>" in f.location.members]
    assert inside_gzip, [str(f) for f in report.findings]


def test_a_header_led_by_600_whitespace_bytes_is_safetensors(scan_bytes):
    data = _safetensors(700, lead=600)
    assert sniff(Span.of_bytes(data)) is Kind.SAFETENSORS
    report = scan_bytes(data, "weights.bin")  # not named .safetensors: the bytes decide
    assert report.exit_code == 0 and report.files[0].kind == "safetensors", [str(f) for f in report.findings]
    hostile = scan_bytes(_safetensors(700, lead=600, tail=_torch_zip()), "weights.bin")
    assert hostile.exit_code == 1 and {"ST-P08", "PK-I01"} <= rule_ids(hostile)


def test_whitespace_that_is_no_header_stays_unknown():
    data = struct.pack("<Q", 700) + b" " * 600 + b"not json" + bytes(200)
    assert sniff(Span.of_bytes(data)) is not Kind.SAFETENSORS


def test_a_persid_line_through_megabytes_of_tensor_data_stays_in_the_buffer():
    # 'P' then the rest of the length and the header: the line runs on through 3 MB of zeros
    data = _safetensors(0x0350, tensor_bytes=3 << 20)
    assert data[0:1] == b"P"
    front = pickle_front(Span.of_bytes(data))
    assert front is not None and front.issue is None
    [ref] = front.trace.persistent
    assert isinstance(ref.pid, BytesRef) and ref.pid.length == len(data) - 2  # readline drops the last byte


def test_a_long_persid_line_still_reaches_what_follows_it():
    line = b"x" * (2 << 20)
    front = pickle_front(Span.of_bytes(b"P" + line + b"\n0" + PAYLOAD_PICKLE[2:]))
    assert front is not None and front.acts


def test_a_long_persid_line_that_is_not_ascii_fails_as_before():
    line = b"x" * (2 << 20) + b"\xff"
    front = pickle_front(Span.of_bytes(b"P" + line + b"\n0" + PAYLOAD_PICKLE[2:]))
    assert front is not None and not front.acts
    assert "ASCII" in str(front.trace.error)


def test_a_short_persid_is_still_a_string():
    front = pickle_front(Span.of_bytes(b"Pabc\n0" + PAYLOAD_PICKLE[2:]))
    assert front is not None and front.acts and front.trace.persistent[0].pid == "abc"


@pytest.mark.parametrize("op", [b"I", b"L", b"F", b"g", b"p"], ids=lambda op: op.decode())
def test_numeric_lines_through_megabytes_of_zeros_read_as_c_strings(op):
    # a header length of 0x??28 (writers pad to 8) starts with MARK, then a numeric line opcode
    # whose line runs on through the zero tensor data: C's loaders parse it up to the first NUL
    length = int.from_bytes(b"(" + op, "little")
    data = _safetensors(length, tensor_bytes=3 << 20)
    assert data[:2] == b"(" + op
    front = pickle_front(Span.of_bytes(data))
    assert front is not None and front.issue is None


def test_a_numeric_line_cut_by_a_nul_still_reaches_what_follows_it():
    front = pickle_front(Span.of_bytes(b")I12\0" + b"x" * (2 << 20) + b"\n00" + PAYLOAD_PICKLE[2:]))
    assert front is not None and front.acts
