"""Payloads hidden in containers: zip tricks, nesting, compression, legacy torch, numpy, joblib."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
import torch

import tensorsafe
from tests import pickle_ops as op
from tests.conftest import rule_ids

SYSTEM = op.call_system()


def _torch_zip(state=None) -> bytes:
    buf = io.BytesIO()
    torch.save(state if state is not None else {"w": torch.ones(3), "b": torch.zeros(2)}, buf)
    return buf.getvalue()


def _rewrite_zip(data: bytes, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None,
                 compression: int = zipfile.ZIP_STORED) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            body = (replace or {}).get(info.filename, src.read(info.filename))
            dst.writestr(info.filename, body)
        for name, body in (add or {}).items():
            dst.writestr(name, body)
    return out.getvalue()


def _data_pkl(data: bytes) -> str:
    return next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith("data.pkl"))


def _scan(tmp_path, data: bytes, name: str = "model.ckpt", **kw) -> tensorsafe.Report:
    path = tmp_path / name
    path.write_bytes(data)
    return tensorsafe.scan(path, **kw)


# -- PyTorch zip ------------------------------------------------------------------------------------
def test_malicious_data_pkl(tmp_path):
    data = _torch_zip()
    report = _scan(tmp_path, _rewrite_zip(data, replace={_data_pkl(data): SYSTEM}))
    assert report.exit_code == 1 and "PK-I01" in rule_ids(report)
    f = next(f for f in report.findings if f.rule_id == "PK-I01")
    assert f.location.members[0].endswith("data.pkl") and f.location.offset == 2


def test_extra_pickle_member_besides_data_pkl(tmp_path):
    data = _rewrite_zip(_torch_zip(), add={"archive/extra/notes.bin": SYSTEM})
    assert "PK-I01" in rule_ids(_scan(tmp_path, data))


def test_unreferenced_storage_member_holding_a_pickle(tmp_path):
    data = _rewrite_zip(_torch_zip(), add={"archive/data/999": SYSTEM})
    assert "PK-I01" in rule_ids(_scan(tmp_path, data))


def test_referenced_storage_data_is_not_read(tmp_path):
    """Tensor bytes that look like a pickle are not unpickled by torch, so not judged as one."""
    state = {"w": torch.frombuffer(bytearray(SYSTEM + b"\0" * (64 - len(SYSTEM))), dtype=torch.uint8)}
    report = _scan(tmp_path, _torch_zip(state))
    assert report.verdict == "clean" and report.files[0].pickles == 1


def test_deflated_data_pkl(tmp_path):
    data = _torch_zip()
    report = _scan(tmp_path, _rewrite_zip(data, replace={_data_pkl(data): SYSTEM}, compression=zipfile.ZIP_DEFLATED))
    assert "PK-I01" in rule_ids(report)


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_zip_methods(tmp_path, compression):
    data = _rewrite_zip(_torch_zip(), add={"archive/x.pkl": SYSTEM}, compression=compression)
    assert "PK-I01" in rule_ids(_scan(tmp_path, data))


def test_payload_after_stop_inside_data_pkl(tmp_path):
    data = _torch_zip()
    name = _data_pkl(data)
    original = zipfile.ZipFile(io.BytesIO(data)).read(name)
    report = _scan(tmp_path, _rewrite_zip(data, replace={name: original + SYSTEM}))
    assert "PK-I01" in rule_ids(report) and "PK-S04" in rule_ids(report)


# -- zip tricks -------------------------------------------------------------------------------------
def _zip_with(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, body in members:
            z.writestr(name, body)
    return out.getvalue()


def test_local_header_name_differs_from_central_directory(tmp_path):
    data = bytearray(_zip_with([("good.pkl", SYSTEM)]))
    local = data.index(b"good.pkl")  # first occurrence: the local header
    data[local:local + 8] = b"evil.pkl"
    report = _scan(tmp_path, bytes(data))
    assert {"ZIP-01", "PK-I01"} <= rule_ids(report) and report.exit_code == 1


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_bad_crc_member_is_still_scanned(tmp_path, compression):
    """Python's zipfile refuses a bad CRC; torch does not check it: the member must be scanned."""
    data = bytearray(_zip_with_method([("a.pkl", SYSTEM)], compression))
    central = data.rindex(b"PK\x01\x02")
    data[central + 16:central + 20] = b"\x01\x02\x03\x04"
    data[14:18] = b"\x01\x02\x03\x04"
    report = _scan(tmp_path, bytes(data))
    assert {"ZIP-02", "PK-I01"} <= rule_ids(report)


def _zip_with_method(members, compression):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, body in members:
            z.writestr(name, body)
    return out.getvalue()


def test_bad_crc(tmp_path):
    data = bytearray(_zip_with([("a.pkl", SYSTEM)]))
    central = data.rindex(b"PK\x01\x02")
    data[central + 16:central + 20] = b"\x00\x00\x00\x00"
    local_crc = 14
    data[local_crc:local_crc + 4] = b"\x00\x00\x00\x00"
    report = _scan(tmp_path, bytes(data))
    assert {"ZIP-02", "PK-I01"} <= rule_ids(report)


def test_encrypted_flag(tmp_path):
    data = bytearray(_zip_with([("a.pkl", SYSTEM)]))
    data[6] |= 1
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 1
    report = _scan(tmp_path, bytes(data))
    assert "ZIP-03" in rule_ids(report) and report.exit_code == 1
    assert "PK-I01" in rule_ids(report), "torch ignores the flag and reads the member: so must we"


def test_duplicate_member_names(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _zip_with([("archive/data.pkl", op.proto(2) + op.EMPTY_DICT + op.STOP), ("archive/data.pkl", SYSTEM)])
    report = _scan(tmp_path, data)
    assert {"ZIP-04", "PK-I01"} <= rule_ids(report)


def test_pickle_prepended_to_a_zip(tmp_path):
    """torch.load reads a file that does not start with PK as a legacy pickle: the front runs."""
    report = _scan(tmp_path, SYSTEM + _torch_zip())
    assert {"ZIP-05", "PK-I01"} <= rule_ids(report)
    f = next(f for f in report.findings if f.rule_id == "PK-I01")
    assert f.location.members == ("<data before zip>",)


def test_zip_bomb_member_is_not_clean(tmp_path):
    bomb = _zip_with([("bomb.pkl", b"\0" * 0)])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", op.proto(2) + op.EMPTY_LIST + b"K\x01a" * 1000 + op.STOP)
        z.writestr("bomb.bin", b"\0" * (20 << 20))
    del bomb
    report = _scan(tmp_path, out.getvalue(), limits=tensorsafe.ScanLimits(max_decompressed_bytes=1 << 20))
    assert report.exit_code == 2 and "ARC-03" in rule_ids(report)


def test_overlapping_members(tmp_path):
    data = bytearray(_zip_with([("a.pkl", SYSTEM), ("b.pkl", SYSTEM)]))
    second_central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, second_central + 42, 0)  # b.pkl's local header offset -> a.pkl's
    report = _scan(tmp_path, bytes(data))
    assert report.exit_code != 0
    assert rule_ids(report) & {"ZIP-06", "ZIP-01"}


def test_corrupt_central_directory_is_an_error(tmp_path):
    data = bytearray(_torch_zip())
    central = data.index(b"PK\x01\x02")
    data[central:central + 4] = b"XXXX"
    report = _scan(tmp_path, bytes(data))
    assert report.exit_code == 2 and "ZIP-07" in rule_ids(report)


def test_classic_and_zip64_end_records_disagree(tmp_path):
    """torch writes both; a reader that ignores zip64 would follow the classic offset elsewhere."""
    data = bytearray(_torch_zip())
    eocd = data.rindex(b"PK\x05\x06")
    struct.pack_into("<I", data, eocd + 16, 5)
    report = _scan(tmp_path, bytes(data))
    assert report.exit_code == 1 and "ZIP-08" in rule_ids(report)


# -- nesting, compression ----------------------------------------------------------------------------
def test_zip_in_zip_in_tar_in_gzip(tmp_path):
    inner = _zip_with([("payload/evil.pkl", SYSTEM)])
    outer = _zip_with([("nested/inner.zip", inner)])
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        info = tarfile.TarInfo("bundle/outer.zip")
        info.size = len(outer)
        tar.addfile(info, io.BytesIO(outer))
    report = _scan(tmp_path, gzip.compress(tar_buf.getvalue()), name="release.tgz")
    f = next(f for f in report.findings if f.rule_id == "PK-I01")
    assert f.location.members == ("<gzip>", "bundle/outer.zip", "nested/inner.zip", "payload/evil.pkl")


def test_nesting_deeper_than_the_limit_is_an_error(tmp_path):
    data = SYSTEM
    for _ in range(4):
        data = gzip.compress(data)
    report = _scan(tmp_path, data, limits=tensorsafe.ScanLimits(max_depth=2))
    assert report.exit_code == 2 and "ARC-01" in rule_ids(report)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress, zlib.compress,
                                      lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)],
                         ids=["gzip", "bz2", "xz", "zlib", "lzma"])
def test_compressed_pickles(tmp_path, compress):
    assert "PK-I01" in rule_ids(_scan(tmp_path, compress(SYSTEM), name="x.dat"))


def test_corrupt_gzip_is_an_error_and_its_partial_output_is_scanned(tmp_path):
    """Readers that stop at the end of the input still unpickle what decompressed before it."""
    report = _scan(tmp_path, gzip.compress(SYSTEM)[:-12], name="x.gz")
    assert {"ARC-02", "PK-I01"} <= rule_ids(report) and report.exit_code == 1
    report = _scan(tmp_path, gzip.compress(bytes(range(256)) * 64)[:-100], name="y.gz")
    assert report.exit_code == 2 and "ARC-02" in rule_ids(report)


def test_tar_path_traversal_and_links(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/evil.pkl")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"N.\n"[:3]))
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    report = _scan(tmp_path, buf.getvalue(), name="a.tar")
    assert "ARC-04" in rule_ids(report) and report.exit_code == 1


# -- legacy torch ------------------------------------------------------------------------------------
def _legacy(state=None) -> bytes:
    buf = io.BytesIO()
    torch.save(state if state is not None else {"w": torch.ones(3), "h": torch.ones(2, dtype=torch.float16)}, buf,
               _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _legacy_pickles(data: bytes) -> list[tuple[int, int]]:
    from tensorsafe.pickles.walker import walk

    spans, pos = [], 0
    for _ in range(5):
        t = walk(data, pos)
        spans.append((pos, t.end))
        pos = t.end
    return spans


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4], ids=["magic", "protocol", "sys_info", "main", "keys"])
def test_legacy_payload_in_any_of_the_five_pickles(tmp_path, index):
    data = _legacy()
    start, end = _legacy_pickles(data)[index]
    original = data[start:end]
    # keep the original value: run the payload, drop its result, then the original opcodes
    patched = SYSTEM[:-1] + op.POP + original[2:]
    report = _scan(tmp_path, data[:start] + patched + data[end:], name="legacy.pt")
    assert "PK-I01" in rule_ids(report)


def test_legacy_data_appended_after_storages(tmp_path):
    report = _scan(tmp_path, _legacy() + SYSTEM, name="legacy.pt")
    assert {"TORCH-01", "PK-I01"} <= rule_ids(report)


def test_legacy_truncated_storage_is_an_error(tmp_path):
    report = _scan(tmp_path, _legacy()[:-3], name="legacy.pt")
    assert report.exit_code == 2 and "TORCH-02" in rule_ids(report)


def _legacy_tar(pickle_member: bytes) -> bytes:
    """The pre-1.0 torch.save layout: a tar of sys_info, pickle, storages, tensors."""
    storage_record = op.proto(2) + op.unicode_("0") + op.unicode_("cpu") + op.global_("torch", "FloatStorage") + b"\x87" + op.STOP
    storages = (op.proto(2) + b"K\x01" + op.STOP + storage_record + struct.pack("<q", 2) + b"\0" * 8
                + op.proto(2) + op.EMPTY_LIST + op.STOP)
    tensors = op.proto(2) + b"K\x00" + op.STOP
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in [("sys_info", op.proto(2) + op.EMPTY_DICT + op.STOP), ("pickle", pickle_member),
                           ("storages", storages), ("tensors", tensors)]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_legacy_tar_format(tmp_path):
    clean = _scan(tmp_path, _legacy_tar(op.proto(2) + op.EMPTY_DICT + op.STOP), name="old.pt")
    assert clean.verdict == "clean" and clean.files[0].kind == "pytorch-tar"
    evil = _scan(tmp_path, _legacy_tar(SYSTEM), name="old2.pt")
    assert "PK-I01" in rule_ids(evil)


# -- numpy and joblib -------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_npy_object_array(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.array([1, _Payload()], dtype=object), allow_pickle=True)
    report = tensorsafe.scan(path)
    assert {"NPY-01", "PK-I01"} <= rule_ids(report)


def test_npy_record_dtype_with_object_field(tmp_path):
    path = tmp_path / "a.npy"
    arr = np.zeros(2, dtype=[("a", "i4"), ("b", "O")])
    arr["b"][0] = _Payload()
    np.save(path, arr, allow_pickle=True)
    assert "PK-I01" in rule_ids(tensorsafe.scan(path))


def test_npz_member(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, ok=np.ones(3), bad=np.array([_Payload()], dtype=object))
    report = tensorsafe.scan(path)
    assert "PK-I01" in rule_ids(report)
    assert any(f.location.members and f.location.members[0] == "bad.npy" for f in report.findings)


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("lzma", 3)])
def test_joblib_payload_inside_object_array(tmp_path, compress):
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "model.joblib"
    joblib.dump({"w": np.arange(100.0), "objs": np.array([1, _Payload()], dtype=object), "after": _Payload()},
                path, compress=compress)
    report = tensorsafe.scan(path)
    triggers = [f for f in report.findings if f.rule_id == "PK-I01"]
    assert len(triggers) >= 2, [str(f) for f in report.findings]
