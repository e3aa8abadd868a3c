"""Verification reads every written tensor back from the written file (``pread`` into two reusable
buffers, ``memcmp``) and compares it with its source range: a wrong byte anywhere is caught,
whatever the offsets within a page and wherever the chunk boundaries fall; the writer's other
speed-ups (blocks reserved with fallocate, write-back started by the checker) change no byte."""
from __future__ import annotations

import errno
import functools
import os
import random
import threading
from pathlib import Path

import pytest

from tensorsafe.converter import kernel_io, writer
from tensorsafe.converter.kernel_io import FileRange
from tensorsafe.converter.run import convert
from tensorsafe.converter.verify import PAGE, ReadBack, check_tensor
from tensorsafe.converter.writer import OutTensor, verify_written, write_safetensors
from tensorsafe.errors import OutputError, ParseError
from tensorsafe.tensors import DTYPES

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "tiny-sd1.ckpt"


def _source(tmp_path: Path, nbytes: int = 5 * PAGE + 123) -> tuple[Path, bytes]:
    data = random.Random(7).randbytes(nbytes)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


def _copied(tmp_path: Path, src: Path, spans: list[tuple[int, int]]):
    """Tensors that are plain ranges of ``src`` (kernel-copied), written and verified."""
    fd = os.open(src, os.O_RDONLY)
    tensors = [OutTensor(f"t{i}", DTYPES["U8"], (n,), lambda: iter(()), (FileRange(fd, off, n),))
               for i, (off, n) in enumerate(spans)]
    out = tmp_path / "out.safetensors"
    written = write_safetensors(out, tensors, verify=True)
    return fd, out, written


@pytest.mark.parametrize("chunk", [PAGE, 3 * PAGE, None])
def test_a_flipped_byte_in_the_written_file_is_caught_anywhere(tmp_path, chunk):
    src, data = _source(tmp_path)
    spans = [(1, 2 * PAGE + 5), (3 * PAGE - 7, PAGE + 40), (17, 9)]  # odd offsets, chunk-crossing lengths
    fd, out, written = _copied(tmp_path, src, spans)
    try:
        verify_written(out, written, chunk)  # as written: verified
        clean = out.read_bytes()
        for w in written:
            for at in {w.begin, w.begin + w.nbytes // 2, w.begin + w.nbytes - 1, w.begin + PAGE % w.nbytes}:
                raw = bytearray(clean)
                raw[at] ^= 0x10
                out.write_bytes(bytes(raw))
                with pytest.raises(ParseError, match=f"verification failed for tensor '{w.name}'"):
                    verify_written(out, written, chunk)
        out.write_bytes(clean)
        verify_written(out, written, chunk)
    finally:
        os.close(fd)


def test_a_changed_source_is_caught(tmp_path):
    """The comparison is against the source file's bytes, not against a copy taken while writing."""
    src, data = _source(tmp_path)
    fd, out, written = _copied(tmp_path, src, [(100, 3 * PAGE)])
    try:
        with open(src, "r+b") as fh:
            fh.seek(100 + PAGE)
            fh.write(bytes([data[100 + PAGE] ^ 1]))
        with pytest.raises(ParseError, match="verification failed for tensor 't0'"):
            verify_written(out, written)
    finally:
        os.close(fd)


def test_a_source_range_past_its_end_fails(tmp_path):
    src, data = _source(tmp_path)
    fd = os.open(src, os.O_RDONLY)
    try:
        w = writer.Written("t", 8, len(data), None, (FileRange(fd, 1, len(data)),))  # one byte past the end
        out = tmp_path / "x.bin"
        out.write_bytes(bytes(8) + data[1:] + b"\0")
        with open(out, "rb") as fh, pytest.raises(ParseError, match="the bytes on disk differ"):
            check_tensor(fh.fileno(), w, out, ReadBack(PAGE))
    finally:
        os.close(fd)


def test_readback_equal_matches_python_slices(tmp_path):
    rng = random.Random(3)
    a = rng.randbytes(4 * PAGE + 99)
    b = bytearray(a[::-1])
    pa, pb = tmp_path / "a", tmp_path / "b"
    pa.write_bytes(a)
    rb = ReadBack(PAGE)
    fa = os.open(pa, os.O_RDONLY)
    try:
        for _ in range(60):
            n = rng.randrange(0, 2 * PAGE + 50)
            oa, ob = rng.randrange(0, len(a) - n + 1), rng.randrange(0, len(a) - n + 1)
            b[ob:ob + n] = a[oa:oa + n] if rng.random() < 0.6 else rng.randbytes(n)
            pb.write_bytes(bytes(b))
            fb = os.open(pb, os.O_RDONLY)
            try:
                assert rb.equal(fa, oa, fb, ob, n) == (a[oa:oa + n] == bytes(b[ob:ob + n]))
                assert not rb.equal(fa, len(a) - n + 1, fb, ob, n) or n == 0  # runs past the end of a
            finally:
                os.close(fb)
    finally:
        os.close(fa)


def test_a_flipped_byte_on_the_written_path_is_caught_across_chunks(tmp_path):
    """Bytes the writer produced itself are checked against the CRC-32 of what was sent, read back in chunks."""
    data = random.Random(5).randbytes(3 * PAGE + 11)
    out = tmp_path / "x.safetensors"
    written = write_safetensors(out, [OutTensor("a", DTYPES["U8"], (len(data),), lambda: iter([memoryview(data)]))],
                                verify=True)
    verify_written(out, written, PAGE)
    raw = bytearray(out.read_bytes())
    raw[written[0].begin + 2 * PAGE + 3] ^= 0x80
    out.write_bytes(bytes(raw))
    with pytest.raises(ParseError, match="verification failed for tensor 'a'"):
        verify_written(out, written, PAGE)


def test_blocks_are_reserved_before_the_copy(tmp_path):
    path = tmp_path / "f"
    with open(path, "wb") as fh:
        fh.truncate(1 << 20)
        code = kernel_io._fallocate(fh.fileno(), 1 << 20)
        if code in kernel_io.UNSUPPORTED:
            pytest.skip(f"this filesystem or platform cannot reserve blocks (code {code})")
        assert code == 0
        assert os.fstat(fh.fileno()).st_blocks * 512 >= 1 << 20
    assert path.read_bytes() == bytes(1 << 20)  # reserving changes no byte


def test_no_space_shows_before_anything_is_copied(tmp_path, monkeypatch):
    copies = []
    monkeypatch.setattr(kernel_io, "_fallocate", lambda fd, size: errno.ENOSPC)
    monkeypatch.setattr(os, "copy_file_range", lambda *a: copies.append(a) or 0)
    dst = tmp_path / "out"
    with pytest.raises(OutputError, match="No space left on device"):
        convert(FIXTURE, dst)
    assert not copies and not dst.exists() and not [p for p in tmp_path.iterdir() if ".tensorsafe-" in p.name]


def test_a_refused_reservation_changes_nothing(tmp_path, monkeypatch):
    convert(FIXTURE, tmp_path / "a")
    monkeypatch.setattr(kernel_io, "_fallocate", lambda fd, size: errno.EOPNOTSUPP)
    convert(FIXTURE, tmp_path / "b")
    files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_write_back_is_started_by_the_checker_behind_checked_tensors(tmp_path, monkeypatch):
    calls = []
    real = kernel_io._sync_file_range()
    if real is None:
        pytest.skip("no sync_file_range on this platform")

    def record(fd, offset, nbytes, flags):
        calls.append((threading.current_thread() is threading.main_thread(), offset, nbytes))
        return real(fd, offset, nbytes, flags)

    monkeypatch.setattr(kernel_io, "_sync_file_range", lambda: record)
    monkeypatch.setattr(writer, "Writeback", functools.partial(kernel_io.Writeback, every=1))
    src, data = _source(tmp_path)
    fd, out, written = _copied(tmp_path, src, [(0, PAGE), (PAGE, 2 * PAGE), (5, 77)])
    os.close(fd)
    assert calls and not any(on_main for on_main, _, _ in calls)
    ends = [offset + n for _, offset, n in calls]
    assert ends == sorted(ends) and ends[-1] == max(w.begin + w.nbytes for w in written)
