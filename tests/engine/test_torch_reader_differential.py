"""torch's zip reader against ours: where they could read the same bytes differently.

``torch.load`` reads a zip checkpoint through its own C++ reader (miniz, ``torch._C.PyTorchFileReader``),
not Python's ``zipfile``. That reader is the oracle here: it only reads records (it never unpickles),
so each test asks it which ``data.pkl`` torch would unpickle, then asks ``tensorsafe.scan``. A hostile
stream torch would unpickle while the scan says clean is the miss these tests exist to catch.
Archives are built byte by byte so that each test shows the trick it plays. Payloads are harmless
(``os.system("true")``) and are only ever dumped, never loaded.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.readers.blob import Span
from tensorsafe.readers.zip import member_span, open_zip
from tests.conftest import rule_ids


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


EVIL = pickle.dumps(_Payload(), protocol=2)
BENIGN = pickle.dumps({"a": 1}, protocol=2)
VERSION = ("archive/version", b"3\n")


# -- archives, byte by byte -------------------------------------------------------------------------
def _local(name: bytes, data: bytes, method: int = 0, flags: int = 0, sizes: tuple[int, int] | None = None,
           crc: int | None = None) -> bytes:
    csize, usize = sizes if sizes is not None else (len(data), len(data))
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, 0, 0,
                       zlib.crc32(data) if crc is None else crc, csize, usize, len(name), 0) + name + data


def _central(name: bytes, data: bytes, offset: int, method: int = 0, flags: int = 0, usize: int | None = None,
             crc: int | None = None) -> bytes:
    return struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 0, 20, 0, flags, method, 0, 0,
                       zlib.crc32(data) if crc is None else crc, len(data), len(data) if usize is None else usize,
                       len(name), 0, 0, 0, 0, 0, offset) + name


def _end(count: int, size: int, offset: int, comment: bytes = b"") -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, size, offset, len(comment)) + comment


def _zip64_end(count: int, size: int, offset: int) -> bytes:
    return struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)


def _locals(members: list[tuple[str, bytes]], base: int = 0) -> tuple[bytes, bytes]:
    """Local records and the central directory that points at them (offsets from ``base``)."""
    body = directory = b""
    for name, data in members:
        directory += _central(name.encode(), data, base + len(body))
        body += _local(name.encode(), data)
    return body, directory


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    body, directory = _locals(members)
    return body + directory + _end(len(members), len(directory), len(body))


def _second_directory_in_the_comment() -> bytes:
    """zipfile reads the directory right before the end record (shifting its offsets); miniz reads
    the one at the declared offset: inside the archive comment, pointing at a member in a gap."""
    benign, _ = _locals([VERSION, ("archive/data.pkl", BENIGN)])
    front = benign + _local(b"archive/data.pkl", EVIL)
    hidden = _central(b"archive/version", b"3\n", 0) + _central(b"archive/data.pkl", EVIL, len(benign))
    end_at = len(front) + len(hidden)  # the shown directory is as long as the hidden one
    declared = end_at + 22
    concat = end_at - len(hidden) - declared
    shown = (_central(b"archive/version", b"3\n", -concat)
             + _central(b"archive/data.pkl", BENIGN, len(_local(b"archive/version", b"3\n")) - concat))
    return front + shown + _end(2, len(hidden), declared, comment=hidden)


def _zip64_locator_pointing_elsewhere() -> bytes:
    """zipfile reads the zip64 end record right before the locator; miniz where the locator points."""
    benign, shown = _locals([VERSION, ("archive/data.pkl", BENIGN)])
    body = benign + _local(b"archive/data.pkl", EVIL)
    hidden_at = len(body)
    hidden = _central(b"archive/version", b"3\n", 0) + _central(b"archive/data.pkl", EVIL, len(benign))
    body += hidden
    pointed = len(body)
    body += _zip64_end(2, len(hidden), hidden_at)
    shown_at = len(body)
    body += shown + _zip64_end(2, len(shown), shown_at)
    body += struct.pack("<4sLQL", b"PK\x06\x07", 0, pointed, 1)
    return body + _end(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)


def _data_descriptor(method: int) -> bytes:
    """Sizes and CRC zero in the local header (flag bit 3), the real ones after the data."""
    data = EVIL if method == 0 else zlib.compress(EVIL)[2:-4]
    body = _local(b"archive/version", b"3\n")
    at = len(body)
    body += _local(b"archive/data.pkl", data, method, flags=8, sizes=(0, 0), crc=0)
    body += struct.pack("<4sIII", b"PK\x07\x08", zlib.crc32(EVIL), len(data), len(EVIL))
    directory = _central(b"archive/version", b"3\n", 0) + _central(b"archive/data.pkl", data, at, method, 8,
                                                                   usize=len(EVIL), crc=zlib.crc32(EVIL))
    return body + directory + _end(2, len(directory), len(body))


def _local_sizes_lie() -> bytes:
    body = _local(b"archive/version", b"3\n")
    at = len(body)
    body += _local(b"archive/data.pkl", EVIL, sizes=(3, 3))
    directory = _central(b"archive/version", b"3\n", 0) + _central(b"archive/data.pkl", EVIL, at)
    return body + directory + _end(2, len(directory), len(body))


def _duplicates(first: bytes, last: bytes) -> bytes:
    return _zip([VERSION, ("archive/data.pkl", first), ("archive/data.pkl", last)])


HOSTILE_TORCH_READS = {
    "second directory in the comment": _second_directory_in_the_comment,
    "zip64 locator pointing elsewhere": _zip64_locator_pointing_elsewhere,
    "record found case-insensitively": lambda: _zip([VERSION, ("archive/DATA.PKL", b"cos\nsystem\n(S'true'\ntR.")]),
    "duplicate name, payload last (torch reads the last)": lambda: _duplicates(BENIGN, EVIL),
    "absolute record names": lambda: _zip([("/version", b"3\n"), ("/data.pkl", EVIL)]),
    "data descriptor, stored": lambda: _data_descriptor(0),
    "data descriptor, deflated": lambda: _data_descriptor(8),
    "local header sizes disagree": _local_sizes_lie,
    "payload beside a nested data.pkl": lambda: _zip([VERSION, ("archive/x/data.pkl", BENIGN),
                                                      ("archive/data.pkl", EVIL)]),
}


# -- the oracle -------------------------------------------------------------------------------------
def _torch_reads(data: bytes) -> bytes | None:
    """The bytes torch.load would unpickle as data.pkl (``None``: torch refuses the archive). Reads
    records through torch's own zip reader; nothing is unpickled."""
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        return bytes(reader.get_record("data.pkl")) if reader.has_record("data.pkl") else None
    except RuntimeError:
        return None


def _our_members(data: bytes) -> list[bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = open_zip(Span.of_bytes(data))
        return [member_span(view, m)[0].read(0, m.size) for m in view.members]


def _scan(tmp_path, data: bytes, name: str = "model.pt") -> tensorsafe.Report:
    path = tmp_path / name
    path.write_bytes(data)
    return tensorsafe.scan(path)


@pytest.mark.parametrize("build", HOSTILE_TORCH_READS.values(), ids=HOSTILE_TORCH_READS.keys())
def test_what_torch_unpickles_is_a_member_we_read_and_judge(tmp_path, build):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build()
    unpickled = _torch_reads(data)
    assert unpickled is not None and b"system" in unpickled, "the oracle must read the payload"
    assert unpickled in _our_members(data)
    report = _scan(tmp_path, data)
    assert report.verdict != "clean" and "PK-I01" in rule_ids(report)


@pytest.mark.parametrize("build", [_second_directory_in_the_comment, _zip64_locator_pointing_elsewhere])
def test_bug_a_directory_only_torch_reads_is_read_and_reported(tmp_path, build):
    """zipfile (and so the scan, before) saw only the benign directory: the file was "clean". (A declared
    offset before zipfile's directory always leaves bytes in front of its first member: ZIP-05.)"""
    data = build()
    assert zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl") == BENIGN
    assert _torch_reads(data) == EVIL
    report = _scan(tmp_path, data)
    assert {"ZIP-08", "PK-I01"} <= rule_ids(report) and report.exit_code == 1
    assert any("torch's zip reader reads the central directory" in f.message for f in report.findings)


def test_bug_a_storage_named_like_data_pkl_in_other_case_is_scanned(tmp_path):
    """Our main pickle (top level) names its storage ``data.PKL``; a torch whose reader takes the folder
    from the first record (``data/``) finds ``data/data.pkl`` case-insensitively: that storage. It was
    skipped as tensor bytes. (torch 2.13 refuses the layout: not every record is under ``data/``.)"""
    saved = io.BytesIO()
    torch.save({"w": torch.ones(2)}, saved)
    main = zipfile.ZipFile(saved).read("archive/data.pkl")
    renamed = main.replace(b"X\x01\x00\x00\x000", b"X\x08\x00\x00\x00data.PKL")
    assert renamed != main
    report = _scan(tmp_path, _zip([("data/version", b"3\n"), ("data.pkl", renamed), ("data/data.PKL", EVIL)]))
    assert "PK-I01" in rule_ids(report)


@pytest.mark.parametrize("members", [
    [VERSION, ("archive/data.pkl", BENIGN), ("other/data.pkl", EVIL)],
    [VERSION, ("archive\\data.pkl", EVIL)],
    [VERSION, ("archive/../data.pkl", EVIL)],
], ids=["second top-level folder", "backslash", "dot-dot"])
def test_records_torch_refuses_or_cannot_name_are_judged_anyway(tmp_path, members):
    data = _zip(members)
    assert _torch_reads(data) != EVIL
    assert "PK-I01" in rule_ids(_scan(tmp_path, data))


def test_concatenated_archives(tmp_path):
    """torch's reader takes the last end record's offsets unshifted (it refuses this file); the first
    archive is bytes in front of the second for zipfile: both are read."""
    first = _zip([VERSION, ("archive/data.pkl", EVIL)])
    data = first + _zip([VERSION, ("archive/data.pkl", BENIGN)])
    assert _torch_reads(data) is None
    assert {"ZIP-05", "PK-I01"} <= rule_ids(_scan(tmp_path, data))


def test_a_short_end_record_signature_at_the_end_is_refused(tmp_path):
    """miniz skips a ``PK\\5\\6`` with no whole record after it and reads the archive; zipfile finds
    no archive. The scan refuses (an error, never clean) rather than reading it the third way."""
    data = _zip([VERSION, ("archive/data.pkl", EVIL)]) + b"PK\x05\x06" + b"\0" * 10
    assert _torch_reads(data) == EVIL
    report = _scan(tmp_path, data)
    assert report.verdict != "clean" and "ZIP-07" in rule_ids(report)


def test_torchscript_constants_pkl(tmp_path):
    """A ``constants.pkl`` record sends torch.load to torch.jit.load, which unpickles it."""
    saved = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), saved, _extra_files={"meta.txt": "x"})
    src = zipfile.ZipFile(saved)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, EVIL if name.endswith("/constants.pkl") else src.read(name))
    records = torch._C.PyTorchFileReader(io.BytesIO(out.getvalue())).get_all_records()
    assert "constants.pkl" in records and "extra/meta.txt" in records
    report = _scan(tmp_path, out.getvalue())
    assert "ZIP-09" in rule_ids(report)
    assert any(f.rule_id == "PK-I01" and f.location.members[-1].endswith("constants.pkl") for f in report.findings)


# -- normal files keep their verdicts -------------------------------------------------------------------
def _plain_zip(comment: bytes = b"", front: bytes = b"") -> bytes:
    out = io.BytesIO()
    out.write(front)
    with zipfile.ZipFile(out, "a" if front else "w") as z:
        z.writestr("archive/data.pkl", BENIGN)
        z.comment = comment
    return out.getvalue()


def test_real_writers_read_one_directory(tmp_path):
    """torch.save (zip64 records), numpy.savez, zipfile with a comment: torch and zipfile read the same
    directory, so there is no second one to report."""
    saved = io.BytesIO()
    torch.save({"w": torch.ones(3), "b": torch.zeros(2)}, saved)
    arrays = io.BytesIO()
    np.savez(arrays, a=np.arange(4))
    for data, name in [(saved.getvalue(), "a.pt"), (arrays.getvalue(), "a.npz"),
                       (_plain_zip(comment=b"a comment"), "a.zip")]:
        report = _scan(tmp_path, data, name)
        assert report.verdict == "clean", (name, rule_ids(report))
    assert _torch_reads(saved.getvalue()) is not None


def test_bytes_in_front_of_an_archive_add_no_second_directory(tmp_path):
    """zipfile shifts the offsets; miniz finds no directory at the declared one: only ZIP-05."""
    data = _plain_zip(front=b"#!/bin/sh\n" * 8)
    assert "ZIP-08" not in rule_ids(_scan(tmp_path, data))


# -- the legacy tar layout (torch < 0.1.10): Python's tarfile picks the member ----------------------------
def _tar(members: list[tuple[str, bytes | str, bytes]]) -> bytes:
    """``(name, body or link target, type)`` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body, kind in members:
            info = tarfile.TarInfo(name)
            if kind != tarfile.REGTYPE:
                info.type, info.linkname, body = kind, str(body), b""
            assert isinstance(body, bytes)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


EMPTY = b"\x80\x02}."
STORAGES = b"\x80\x02K\x00." + b"\x80\x02]."
TENSORS = b"\x80\x02K\x00."
REG = tarfile.REGTYPE


@pytest.mark.parametrize("members", [
    [("sys_info", EMPTY, REG), ("pickle", EMPTY, REG), ("storages", STORAGES, REG), ("tensors", TENSORS, REG),
     ("pickle", EVIL, REG)],
    [("sys_info", EMPTY, REG), ("x", EVIL, REG), ("storages", STORAGES, REG), ("tensors", TENSORS, REG),
     ("pickle", "x", tarfile.SYMTYPE)],
    [("sys_info", EMPTY, REG), ("x", EVIL, REG), ("storages", STORAGES, REG), ("tensors", TENSORS, REG),
     ("pickle", "x", tarfile.LNKTYPE)],
    [("sys_info", EMPTY, REG), ("pickle", EMPTY, REG), ("storages", b"\x80\x02K\x00." + EVIL, REG),
     ("tensors", TENSORS, REG)],
    [("sys_info", EMPTY, REG), ("pickle", EMPTY, REG), ("storages", STORAGES, REG), ("tensors", EVIL, REG)],
], ids=["duplicate pickle, payload last", "symlink", "hard link", "storage views", "tensors"])
def test_legacy_tar_member_tarfile_resolves(tmp_path, members):
    data = _tar(members)
    tar = tarfile.open(fileobj=io.BytesIO(data))
    read = {name: tar.extractfile(name).read() for name in ("pickle", "storages", "tensors")}  # type: ignore[union-attr]
    assert any(b"system" in body for body in read.values()), "tarfile must hand torch the payload"
    report = _scan(tmp_path, data, "old.pt")
    assert report.verdict != "clean" and "PK-I01" in rule_ids(report)


def test_legacy_tar_clean(tmp_path):
    data = _tar([("sys_info", EMPTY, REG), ("pickle", EMPTY, REG), ("storages", STORAGES, REG),
                 ("tensors", TENSORS, REG)])
    report = _scan(tmp_path, data, "old.pt")
    assert report.verdict == "clean" and report.files[0].kind == "pytorch-tar"


# -- a legacy pickle stream that is also a tar: torch.load tries tarfile first ----------------------------
def _legacy_pickles(numel: int) -> list[bytes]:
    """The five pickles of a legacy (non-zip) torch.save of one uint8 tensor of ``numel`` elements."""
    from tensorsafe.pickles.walker import walk

    saved = io.BytesIO()
    torch.save({"w": torch.zeros(numel, dtype=torch.uint8)}, saved, _use_new_zipfile_serialization=False)
    data, pickles, pos = saved.getvalue(), [], 0
    for _ in range(5):
        end = walk(data, pos).end
        pickles.append(data[pos:end])
        pos = end
    assert len(data) == pos + 8 + numel
    return pickles


def _legacy_stream_that_is_a_tar() -> bytes:
    """Five valid legacy pickles, their storage running to the end of the file; the first 512 bytes are
    also a tar header (no ``ustar`` magic: tarfile checks only the checksum), its number fields hidden in
    a bytes literal that the sys_info pickle pops. The storage's bytes are the tar's other members."""
    tail = _tar([("storages", EVIL, REG), ("tensors", TENSORS, REG), ("pickle", EMPTY, REG)])
    numel = 5000
    for _ in range(4):  # the storage size is written inside the pickles: settle it
        magic, protocol, _, main, keys = _legacy_pickles(numel)
        head = magic + protocol + b"\x80\x02B"
        literal_end = 520
        after = b"0}." + main + keys + struct.pack("<q", numel)
        storage_at = literal_end + len(after)
        second_header = -(-storage_at // 512) * 512
        if second_header + len(tail) - storage_at == numel:
            break
        numel = second_header + len(tail) - storage_at
    block = bytearray(512)
    block[:len(head) + 4] = head + struct.pack("<I", literal_end - len(head) - 4)
    for at, value in [(100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                      (124, b"%011o\0" % (second_header - 512)), (136, b"00000000000\0"), (156, b"0")]:
        block[at:at + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    data = bytes(block) + b"\0" * (literal_end - 512) + after
    return data + b"\0" * (second_header - len(data)) + tail


def test_bug_a_legacy_stream_that_tarfile_reads_is_scanned_as_a_tar_too(tmp_path):
    """torch.load(path) opens a non-zip file with ``tarfile.open`` first and, when that succeeds,
    unpickles the ``storages`` member; the scan judged the file as the (benign) legacy stream only."""
    data = _legacy_stream_that_is_a_tar()
    tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:", format=tarfile.PAX_FORMAT)  # torch's call
    assert tar.extractfile("storages").read() == EVIL  # type: ignore[union-attr]
    report = _scan(tmp_path, data, "legacy.pt")
    assert report.verdict != "clean" and "PK-I01" in rule_ids(report)
    assert any(f.rule_id == "PK-I01" and f.location.members[-1] == "storages" for f in report.findings)


def test_an_ordinary_legacy_stream_is_not_read_as_a_tar(tmp_path):
    saved = io.BytesIO()
    torch.save({"w": torch.ones(3)}, saved, _use_new_zipfile_serialization=False)
    report = _scan(tmp_path, saved.getvalue(), "legacy.pt")
    assert report.verdict == "clean" and "tar" not in report.files[0].kind


# -- end records pointing anywhere: whatever torch unpickles, the scan judges ------------------------------
@st.composite
def _end_record_games(draw) -> bytes:
    """A benign archive, a hostile member and a hostile directory (in a gap, in the comment), and end
    records (classic, zip64 and a decoy zip64, the locator) whose offsets point at any of them. The
    benign directory's offsets are written for zipfile's shift, so that zipfile reads it cleanly."""
    front = draw(st.sampled_from([b"", b"#!junk\n" * 3]))
    members = [VERSION, ("archive/data.pkl", BENIGN)]
    body = front + _locals(members, len(front))[0]
    evil_at = len(body)
    body += _local(b"archive/data.pkl", EVIL)
    hidden = _central(b"archive/version", b"3\n", len(front)) + _central(b"archive/data.pkl", EVIL, evil_at)
    in_gap = draw(st.booleans())
    places = [len(front), evil_at]
    if in_gap:
        places.append(len(body))
        body += hidden
    zip64 = draw(st.booleans())
    decoy_at = len(body)
    if zip64:
        body += _zip64_end(2, len(hidden), draw(st.sampled_from(places)))
    shown_at = len(body)
    shown_size = len(_locals(members)[1])
    end_at = shown_at + shown_size + (_ZIP64_TAIL if zip64 else 0)
    places += [shown_at, end_at + 22]  # the directory zipfile reads, the comment
    offset = draw(st.sampled_from(places + [draw(st.integers(0, end_at))]))
    concat = shown_at - offset  # zipfile: the directory ends where the end records start
    assume(concat <= len(front))
    body += _locals(members, len(front) - concat)[1]
    if zip64:
        real_at = len(body)
        body += _zip64_end(2, shown_size, offset)
        body += struct.pack("<4sLQL", b"PK\x06\x07", 0, draw(st.sampled_from([decoy_at, real_at])), 1)
        offset = draw(st.sampled_from([0xFFFFFFFF, offset, draw(st.sampled_from(places))]))
    comment = draw(st.sampled_from([b"", b"note"])) if in_gap else hidden
    return body + _end(2, shown_size, offset, comment)


_ZIP64_TAIL = 56 + 20


@settings(derandomize=True, database=None, deadline=None, max_examples=150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=_end_record_games())
def test_whatever_torch_unpickles_under_end_record_games_is_judged(tmp_path, data):
    unpickled = _torch_reads(data)
    if unpickled != EVIL:
        return
    report = _scan(tmp_path, data)
    assert report.verdict != "clean"
    if data.startswith(b"PK\x03\x04"):  # torch.load's zip path: the payload is found, or the zip refused
        assert rule_ids(report) & {"PK-I01", "ZIP-07"}
