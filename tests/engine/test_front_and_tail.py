"""Every file's first bytes are what pickle.load reads; some loaders open a zip found at a file's end."""
from __future__ import annotations

import io
import struct
import tarfile
import zipfile

from tests.conftest import rule_ids

PROTOCOL0_PAYLOAD = b"cos\nsystem\n(S'true'\ntR."
"""os.system("true") in protocol 0: harmless, and what a loader would run."""


def _tar_named(name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    return out.getvalue()


def _gguf_front(rest: bytes) -> bytes:
    # 'G' (BINFLOAT) swallows the next 8 bytes: "GUF", the version, one byte of the tensor count
    return b"GGUF" + struct.pack("<I", 3) + b"\x00" + rest


def test_a_tar_whose_first_member_name_is_a_pickle_fails(scan_bytes):
    report = scan_bytes(_tar_named(PROTOCOL0_PAYLOAD.decode()), "weights.tar")
    assert report.exit_code == 1
    [finding] = [f for f in report.findings if f.rule_id == "PK-I01"]
    assert finding.location.members == ("<pickle at start>",)


def test_an_ordinary_tar_front_is_not_a_pickle(scan_bytes):
    report = scan_bytes(_tar_named("model/config.json"), "bundle.tar")
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_a_gguf_whose_header_bytes_are_also_a_pickle_fails(scan_bytes):
    report = scan_bytes(_gguf_front(PROTOCOL0_PAYLOAD + bytes(64)), "model.gguf")
    assert "PK-I01" in rule_ids(report) and report.exit_code == 1


def test_a_data_only_front_is_not_reported(scan_bytes):
    report = scan_bytes(_tar_named("(lp0\nI1\na."), "bundle.tar")
    assert report.exit_code == 0, [str(f) for f in report.findings]


def _zip_with_payload() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", PROTOCOL0_PAYLOAD)
    return out.getvalue()


def test_a_zip_appended_to_a_gguf_is_scanned_too(scan_bytes):
    gguf = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
    assert scan_bytes(gguf, "clean.gguf").exit_code == 0
    report = scan_bytes(gguf + _zip_with_payload(), "model.keras")
    assert "PK-I01" in rule_ids(report) and report.exit_code == 1


def test_a_zip_appended_to_a_npy_is_scanned_too(scan_bytes):
    import numpy as np

    out = io.BytesIO()
    np.save(out, np.arange(4, dtype=np.int32))
    assert scan_bytes(out.getvalue(), "a.npy").exit_code == 0
    report = scan_bytes(out.getvalue() + _zip_with_payload(), "a.npy")
    assert "PK-I01" in rule_ids(report)
