"""The in-kernel copy path (copy_file_range) and the user-space path write the same bytes, and
verification catches a wrong byte on either path, leaving the destination as it was."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tensorsafe.converter import writer
from tensorsafe.converter.run import convert
from tensorsafe.converter.writer import OutTensor, verify_written, write_safetensors
from tensorsafe.errors import OutputError, ParseError
from tensorsafe.tensors import DTYPES

REAL_COPY = os.copy_file_range


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixtures_dir=Path(__file__).resolve().parents[2] / "fixtures" / "models"):
    """tiny-sd1.ckpt (a torch zip) -> folder -> single file, with the kernel copy allowed."""
    root = tmp_path_factory.mktemp("kernel")
    calls = []
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "copy_file_range", lambda *a: calls.append(a[2]) or REAL_COPY(*a))
    try:
        convert(fixtures_dir / "tiny-sd1.ckpt", root / "folder")
        convert(root / "folder", root / "back.safetensors")
    finally:
        mp.undo()
    return fixtures_dir / "tiny-sd1.ckpt", root, calls


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refuse(code: int, after: int = 0):
    """A copy_file_range that works ``after`` times, then fails with ``code``."""
    state = {"n": 0}

    def fake(*a):
        state["n"] += 1
        if state["n"] > after:
            raise OSError(code, os.strerror(code))
        return REAL_COPY(*a)
    return fake


def test_kernel_copy_is_used(converted):
    _, _, calls = converted
    assert calls and sum(calls) > 1_000_000  # most tensor bytes of both directions went through the kernel


@pytest.mark.parametrize("code,after", [(errno.EXDEV, 0), (errno.ENOSYS, 0), (errno.EXDEV, 5), (errno.EINVAL, 2)])
def test_fallback_writes_the_same_bytes(tmp_path, converted, monkeypatch, code, after):
    ckpt, root, _ = converted
    monkeypatch.setattr(os, "copy_file_range", _refuse(code, after))
    convert(ckpt, tmp_path / "folder")
    convert(tmp_path / "folder", tmp_path / "back.safetensors")
    assert _files(tmp_path / "folder") == _files(root / "folder")
    assert (tmp_path / "back.safetensors").read_bytes() == (root / "back.safetensors").read_bytes()


def test_zero_byte_copy_falls_back(tmp_path, converted, monkeypatch):
    ckpt, root, _ = converted
    monkeypatch.setattr(os, "copy_file_range", lambda *a: 0)
    convert(ckpt, tmp_path / "folder")
    assert _files(tmp_path / "folder") == _files(root / "folder")


def _old_destination(tmp_path: Path) -> Path:
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    return dst


def _untouched(tmp_path: Path, dst: Path) -> None:
    assert sorted(p.name for p in dst.iterdir()) == ["old.txt"] and (dst / "old.txt").read_text() == "old"
    assert not [p.name for p in tmp_path.iterdir() if ".tensorsafe-" in p.name]


def test_a_wrong_byte_from_the_kernel_copy_is_caught(tmp_path, converted, monkeypatch):
    ckpt = converted[0]
    flipped = []

    def corrupting(src_fd, dst_fd, count, offset_src, offset_dst):
        n = REAL_COPY(src_fd, dst_fd, count, offset_src, offset_dst)
        if not flipped and n > 100:
            byte = os.pread(src_fd, 1, offset_src + n // 2)[0]
            os.pwrite(dst_fd, bytes([byte ^ 0x01]), offset_dst + n // 2)  # one bit of the copy flipped
            flipped.append(offset_dst + n // 2)
        return n

    monkeypatch.setattr(os, "copy_file_range", corrupting)
    dst = _old_destination(tmp_path)
    with pytest.raises(ParseError, match="verification failed for tensor"):
        convert(ckpt, dst, overwrite=True)
    assert flipped
    _untouched(tmp_path, dst)


def test_a_wrong_byte_on_the_written_path_is_caught(tmp_path, converted, monkeypatch):
    ckpt = converted[0]
    monkeypatch.setattr(os, "copy_file_range", _refuse(errno.ENOSYS))
    real = writer.pwrite_all
    flipped = []

    def corrupting(fd, data, pos):
        data = bytes(memoryview(data).cast("B"))
        if pos and not flipped and len(data) > 100:
            data = data[:50] + bytes([data[50] ^ 0x01]) + data[51:]
            flipped.append(pos)
        return real(fd, data, pos)

    monkeypatch.setattr(writer, "pwrite_all", corrupting)
    dst = _old_destination(tmp_path)
    with pytest.raises(ParseError, match="verification failed for tensor"):
        convert(ckpt, dst, overwrite=True)
    assert flipped
    _untouched(tmp_path, dst)


def test_a_failing_kernel_copy_is_a_clean_error(tmp_path, converted, monkeypatch):
    ckpt = converted[0]
    monkeypatch.setattr(os, "copy_file_range", _refuse(errno.ENOSPC, after=3))
    dst = _old_destination(tmp_path)
    with pytest.raises(OutputError, match="No space left on device"):
        convert(ckpt, dst, overwrite=True)
    _untouched(tmp_path, dst)


def _pieces(data: bytes):
    return lambda: iter([memoryview(data)])


def test_a_changed_header_is_caught(tmp_path):
    path = tmp_path / "x.safetensors"
    written = write_safetensors(path, [OutTensor("a", DTYPES["F32"], (2, 3), _pieces(bytes(range(24)))),
                                       OutTensor("b", DTYPES["F16"], (5,), _pieces(bytes(10)))])
    verify_written(path, written)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"[2,3]")
    raw[at + 1:at + 4] = b"3,2"  # same length, the header still parses: only the shape is wrong
    path.write_bytes(bytes(raw))
    with pytest.raises(ParseError, match="header entry of tensor 'a' does not match"):
        verify_written(path, written)
    path.write_bytes(bytes(raw[:-1]))
    with pytest.raises(ParseError, match="verification failed"):
        verify_written(path, written)
