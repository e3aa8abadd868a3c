"""tensorsafe/readers/zip_directory.py against the reader it replaces: CPython's ``zipfile``.

The reference is ``zipfile.ZipFile`` over the same bytes, read through the same span reader the
scanner used before (``Span.reader``): where it reads a directory, ours must find the same
entries (name, offsets, sizes, CRC, method, flags) and the same start; where it raises, ours
must raise with the same message. Archives are written by ``zipfile`` itself (stored, deflated,
zip64, comments, extra fields, bytes in front), then mutated near their end records.
"""
from __future__ import annotations

import io
import struct
import warnings
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorsafe.readers.blob import Span
from tensorsafe.readers.zip import MAX_CENTRAL_DIRECTORY_BYTES, open_zip
from tensorsafe.readers.sniff import may_hold_zip_at_end
from tensorsafe.readers.zip_directory import ZipDirectoryError, find_end_record, read_directory
from tensorsafe.errors import LimitExceeded, ParseError

PROPS = dict(derandomize=True, database=None, deadline=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = ["data.pkl", "archive/data.pkl", "archive/data/0", "é/ü.bin", "x" * 40, "a\\b", "version"]


def reference(data: bytes, max_read: int = MAX_CENTRAL_DIRECTORY_BYTES):
    try:
        zf = zipfile.ZipFile(Span.of_bytes(data).reader(max_read=max_read))
    except LimitExceeded:
        return ("limit",)
    except (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError) as exc:
        return ("error", str(exc))
    return ("ok", zf.start_dir, [(i.filename, i.header_offset, i.compress_size, i.file_size, i.CRC,
                                  i.compress_type, i.flag_bits) for i in zf.infolist()])


def ours(data: bytes, max_read: int = MAX_CENTRAL_DIRECTORY_BYTES):
    try:
        d = read_directory(Span.of_bytes(data), max_read)
    except LimitExceeded:
        return ("limit",)
    except ZipDirectoryError as exc:
        return ("error", exc.message)
    return ("ok", d.start_dir, [(e.name, e.header_offset, e.compress_size, e.file_size, e.crc, e.method, e.flags)
                                for e in d.entries])


@st.composite
def archives(draw) -> bytes:
    prefix = draw(st.sampled_from([b"", b"", b"\x80\x02K\x01.", b"junk" * 30]))
    out = io.BytesIO()
    out.write(prefix)
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are allowed on purpose
        with zipfile.ZipFile(out, "a" if prefix else "w", method) as zf:
            for name in draw(st.lists(st.sampled_from(NAMES), max_size=6)):
                info = zipfile.ZipInfo(name)
                info.compress_type = method
                if draw(st.booleans()):
                    info.extra = struct.pack("<HH", 0xCAFE, 2) + b"zz"
                body = draw(st.binary(max_size=40))
                if draw(st.integers(0, 3)) == 0:
                    with zf.open(info, "w", force_zip64=True) as fh:
                        fh.write(body)
                else:
                    zf.writestr(info, body)
            zf.comment = draw(st.sampled_from([b"", b"", b"a comment", b"PK\x05\x06" + b"x" * 18, b"y" * 300]))
    data = out.getvalue()
    if draw(st.booleans()):
        data = with_zip64_end_records(data, saturate=draw(st.booleans()))
    return data


def with_zip64_end_records(data: bytes, saturate: bool = False) -> bytes:
    """The archive with a zip64 end record and locator before its end record, as torch writes it;
    ``saturate``: the classic fields say 0xFFFF... (only the zip64 record holds the values)."""
    at = data.rfind(b"PK\x05\x06")
    sig, disk, disk_cd, n_disk, n, cd_size, cd_offset, comment_len = struct.unpack_from("<4s4H2LH", data, at)
    z64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n_disk, n, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    if saturate:
        n_disk = n = 0xFFFF
        cd_size = cd_offset = 0xFFFFFFFF
    end = struct.pack("<4s4H2LH", sig, disk, disk_cd, n_disk, n, cd_size, cd_offset, comment_len)
    return data[:at] + z64 + locator + end + data[at + 22:]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(archives()))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        kind = draw(st.sampled_from(["byte", "byte", "byte", "cut", "insert", "saturate"]))
        if kind == "byte":  # near the end: the directory and the end records
            lo = max(0, len(data) - draw(st.sampled_from([22, 42, 98, 200, len(data)])))
            data[draw(st.integers(lo, len(data) - 1))] = draw(st.sampled_from([0, 1, 6, 7, 0x50, 0xFF]))
        elif kind == "cut":
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=24))
        else:
            at = draw(st.integers(0, len(data) - 1))
            width = draw(st.sampled_from([2, 4, 8]))
            data[at:at + width] = b"\xff" * width
    return bytes(data)


@settings(max_examples=150, **PROPS)
@given(archives())
def test_same_directory_as_zipfile(data):
    assert ours(data) == reference(data)


@settings(max_examples=400, **PROPS)
@given(mutated())
def test_same_directory_or_same_error_as_zipfile_on_damaged_archives(data):
    assert ours(data) == reference(data)


def _one_member(name: bytes = b"data.pkl", flags: int = 0, version: int = 20, extra: bytes = b"") -> bytes:
    """A one-member stored archive written by hand, so names and fields can be anything."""
    body = b"\x80\x02K\x01."
    crc = __import__("zlib").crc32(body)
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0, crc, len(body), len(body), len(name), 0)
    central = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, version, 0, flags, 0, 0, 0, crc, len(body),
                          len(body), len(name), len(extra), 0, 0, 0, 0, 0) + name + extra
    start = len(local) + len(name) + len(body)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), start, 0)
    return local + name + body + central + end


@pytest.mark.parametrize("data", [
    _one_member(b"data.pkl\x00.txt"),                      # zipfile cuts names at NUL
    _one_member("é.pkl".encode(), flags=0x800),            # UTF-8 name
    _one_member(b"\x82\xff.pkl"),                           # cp437 name
    _one_member(b"\xff.pkl", flags=0x800),                  # not UTF-8: an error
    _one_member(version=64),                                # needs a newer reader: an error
    _one_member(extra=struct.pack("<HH", 1, 8)),            # zip64 field with nothing saturated
    _one_member(extra=struct.pack("<HH", 1, 16) + b"x"),    # extra field longer than its space
    _one_member(extra=struct.pack("<HHQ", 1, 8, 7)),
    b"", b"PK\x05\x06", b"PK\x05\x06" + b"\0" * 18,        # too short, or an empty archive
    b"\0" * 40 + struct.pack("<4sLQL", b"PK\x06\x07", 1, 0, 1) + b"PK\x05\x06" + b"\0" * 18,  # multi-disk
], ids=["nul-name", "utf8", "cp437", "bad-utf8", "version", "zip64-unsaturated", "bad-extra", "zip64-extra",
        "empty-file", "short-eocd", "empty-archive", "multi-disk"])
def test_hand_built_archives(data):
    assert ours(data) == reference(data)


@pytest.mark.parametrize("saturate", [False, True])
def test_zip64_end_records(saturate):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02K\x01.")
        zf.writestr("archive/data/0", bytes(8))
    data = with_zip64_end_records(b"front" + out.getvalue(), saturate)  # bytes in front: offsets shift
    assert ours(data)[0] == "ok" and ours(data)[1] > 0
    assert ours(data) == reference(data)


def test_zip64_sizes_in_extra_fields():
    """Every size and offset saturated in the classic fields: only the zip64 records hold them."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(3):
            with zf.open(f"archive/data/{i}", "w", force_zip64=True) as fh:
                fh.write(bytes(10 * i))
    data = out.getvalue()
    assert ours(data)[0] == "ok" and ours(data) == reference(data)


def test_central_directory_larger_than_the_read_limit():
    data = _one_member()
    assert ours(data, max_read=10) == reference(data, max_read=10) == ("limit",)


def test_open_zip_reports_unreadable_directories_as_parse_errors():
    with pytest.raises(ParseError, match="cannot read the zip central directory: Bad magic number"):
        open_zip(Span.of_bytes(_one_member().replace(b"PK\x01\x02", b"PK\x01\x03")))


def _zipfile_end_offset(data: bytes) -> int | str | None:
    """Where ``zipfile`` finds the end record; ``"found"`` when it finds one and then refuses the archive
    (a multi-disk zip64 locator: ``zipfile.is_zipfile`` itself raises there)."""
    try:
        record = zipfile._EndRecData(io.BytesIO(data))
    except zipfile.BadZipFile:
        return "found"
    return None if record is None else record[zipfile._ECD_LOCATION]


@settings(max_examples=300, **PROPS)
@given(data=st.one_of(mutated(), archives(), st.binary(max_size=200).map(lambda b: b + b"PK\x05\x06" + bytes(18))))
def test_the_end_record_is_where_zipfile_finds_it(data):
    """The one end-record search (every "is there a zip at the end" question asks it) agrees with zipfile."""
    ours, theirs = find_end_record(Span.of_bytes(data)), _zipfile_end_offset(data)
    assert ours == theirs or (theirs == "found" and ours is not None)
    assert may_hold_zip_at_end(Span.of_bytes(data)) == (theirs is not None)


def test_an_end_record_cut_short_is_no_zip_for_zipfile_either():
    data = _one_member() + b"junk" + b"PK\x05\x06" + bytes(10)
    assert find_end_record(Span.of_bytes(data)) is None and not zipfile.is_zipfile(io.BytesIO(data))
