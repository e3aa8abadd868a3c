"""Conversion faults end cleanly: a source that changes mid-conversion, runs killed before, replacing
a destination, and numpy warnings on hostile shapes."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tensorsafe.converter import output
from tensorsafe.converter.output import recover, staged
from tensorsafe.converter.run import convert
from tensorsafe.converter.source_io import FileBytes, SourceChangedError, pread_exact

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "models" / "tiny-sd1.ckpt"
CLI = "import sys; from tensorsafe.cli.main import main; main(sys.argv[1:])"
# The CLI, saying on stdout when it has opened the source (so a truncation is known to come after)
CLI_OPENED = """
import sys
from tensorsafe.converter import source_io
from tensorsafe.cli.main import main
opened = source_io.Watched.open_fd.__func__
def open_fd(cls, path, fd):
    w = opened(cls, path, fd)
    print("opened", flush=True)
    return w
source_io.Watched.open_fd = classmethod(open_fd)
main(sys.argv[1:])
"""


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tensorsafe-" in p.name)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=timeout)


# -- a source that changes under the converter -----------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict[str, str]]:
    """What each variant converts to when the source is left alone."""
    base = tmp_path_factory.mktemp("reference")
    out = {}
    for variant, extra in (("copy", []), ("cast", ["--dtype", "fp32"])):
        assert _cli("convert", "-q", *extra, str(FIXTURE), str(base / variant)).returncode == 0
        out[variant] = _digests(base / variant)
    return out


@pytest.mark.slow
def test_truncating_the_source_mid_conversion_is_an_error_never_a_signal(tmp_path, reference):
    rng = random.Random(1234)
    outcomes = []
    deadline = time.monotonic() + 40
    for run in range(20):
        if time.monotonic() > deadline and run >= 8:
            break
        variant = "cast" if run % 2 else "copy"
        work = tmp_path / f"run{run}"
        work.mkdir()
        src, dst = work / "model.ckpt", work / "out"
        shutil.copyfile(FIXTURE, src)
        size = src.stat().st_size
        proc = subprocess.Popen([sys.executable, "-c", CLI_OPENED, "convert", "-q",
                                 *(["--dtype", "fp32"] if variant == "cast" else []), str(src), str(dst)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "opened"
        time.sleep(rng.uniform(0, 0.7))
        started = time.monotonic()
        os.truncate(src, rng.randrange(0, size))  # waits while the converter holds its read lease
        held = time.monotonic() - started
        _, err = proc.communicate(timeout=120)
        assert proc.returncode >= 0, f"run {run}: killed by signal {-proc.returncode}: {err}"
        assert proc.returncode in (0, 2), (run, proc.returncode, err)
        assert _leftovers(work) == [], f"run {run} left {_leftovers(work)}"
        if proc.returncode == 0:
            assert _digests(dst) == reference[variant], f"run {run}: the output differs from a clean conversion"
        else:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "source changed while converting" in lines[0] and str(src) in lines[0], err
            assert not dst.exists()
        assert held < 30, "the converter held its lease too long after the break"
        outcomes.append(proc.returncode)
    assert 2 in outcomes, "no run was caught mid-conversion: the delays are too long for this machine"


CLI_WRITING_NO_LEASE = """
import sys
from tensorsafe.converter import execute, source_io, writer
from tensorsafe.cli.main import main
source_io._LEASES.take = lambda w: None  # as for a file the user does not own: no lease
real = writer.write_safetensors
def write(*a, **k):
    print("writing", flush=True)
    return real(*a, **k)
execute.write_safetensors = write
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_without_a_lease_the_data_path_still_never_faults(tmp_path, reference):
    """Truncation while tensors are copied or cast, with no lease to hold the truncation back: the
    bytes are read with pread (a short read) or copied by the kernel (a short copy), never mapped."""
    rng = random.Random(99)
    for run in range(8):
        variant = "cast" if run % 2 else "copy"
        work = tmp_path / f"run{run}"
        work.mkdir()
        src, dst = work / "model.ckpt", work / "out"
        shutil.copyfile(FIXTURE, src)
        proc = subprocess.Popen([sys.executable, "-c", CLI_WRITING_NO_LEASE, "convert", "-q",
                                 *(["--dtype", "fp32"] if variant == "cast" else []), str(src), str(dst)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(rng.uniform(0, 0.05))
        os.truncate(src, rng.randrange(0, 4 << 20))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 2), (run, proc.returncode, err)
        assert _leftovers(work) == []
        if proc.returncode == 2:
            assert "source changed while converting" in err and err.count("\n") == 1, err
        else:
            assert _digests(dst) == reference[variant]


def test_a_source_replaced_before_commit_is_reported(tmp_path, monkeypatch):
    """No lease (another user's file, a filesystem without leases): the identity check still sees it."""
    src = tmp_path / "model.ckpt"
    shutil.copyfile(FIXTURE, src)
    from tensorsafe.converter import execute

    real = execute.write_weights

    def replace_source_then_write(*args, **kwargs):
        tmp = tmp_path / "other"
        shutil.copyfile(FIXTURE, tmp)
        os.replace(tmp, src)  # a new inode under the same name: no lease break on the open file
        return real(*args, **kwargs)

    monkeypatch.setattr("tensorsafe.converter.run.write_weights", replace_source_then_write)
    with pytest.raises(SourceChangedError, match="source changed while converting"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_pread_of_a_shrunk_file_is_a_source_change(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(100))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_exact(fd, 10, 20) == bytes(20)
        os.truncate(path, 15)
        with pytest.raises(SourceChangedError, match="ends before byte 30"):
            FileBytes(fd, str(path)).read(10, 20)
    finally:
        os.close(fd)


def test_strided_and_transposed_sources_read_with_pread_match_the_buffer_path(tmp_path, monkeypatch):
    import numpy as np

    from tensorsafe.converter import chunks
    from tensorsafe.tensors import DTYPES, StorageRef, TensorRef

    data = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"x" * 12 + data.tobytes())
    ref = TensorRef(DTYPES["F32"], (10, 6), (1, 10), 0, StorageRef("s", 12, data.nbytes))  # data.T
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = path.read_bytes()
        want = data.T.tobytes()
        for whole in (1 << 30, 0):  # read whole, and a block of rows at a time
            monkeypatch.setattr(chunks, "WHOLE_READ_BYTES", whole)
            monkeypatch.setattr(chunks, "CHUNK_BYTES", 48)
            got = b"".join(bytes(p) for p in chunks.row_chunks(ref, FileBytes(fd, str(path))))
            assert got == want == b"".join(bytes(p) for p in chunks.row_chunks(ref, buf))
            plain = TensorRef(DTYPES["F32"], (6, 10), (10, 1), 0, StorageRef("s", 12, data.nbytes))
            got = b"".join(bytes(p) for p in chunks.transpose_chunks(plain, FileBytes(fd, str(path))))
            assert got == want
    finally:
        os.close(fd)


# -- stale staging entries -------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    dead = tmp_path / f".out.tensorsafe-tmp-{_dead_pid()}"
    dead.mkdir()
    (dead / "unet").mkdir()
    live = tmp_path / f".out.tensorsafe-tmp-{os.getppid()}"  # pytest's parent: alive, not us
    live.mkdir()
    other = tmp_path / f".other.tensorsafe-tmp-{_dead_pid()}"  # another destination's: not ours to judge
    other.mkdir()
    result = _cli("convert", "-q", str(FIXTURE), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert not dead.exists() and live.is_dir() and other.is_dir()


def test_a_reused_pid_does_not_protect_an_older_staging_entry(tmp_path):
    entry = tmp_path / f".out.tensorsafe-tmp-{os.getppid()}"
    entry.mkdir()
    assert recover(tmp_path / "out") == []  # alive and started before the entry: kept
    started = output._process_start(os.getppid())
    assert started is not None
    real = output._process_start
    try:
        output._process_start = lambda pid: time.time() + 60  # as if the PID now belongs to a newer process
        assert recover(tmp_path / "out") == [entry] and not entry.exists()
    finally:
        output._process_start = real


# -- replacing a destination -----------------------------------------------------------------------
def _old_destination(tmp_path: Path) -> Path:
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "OLD").write_text("old copy")
    return dst


def _fill(tmp: Path) -> None:
    (tmp / "NEW").write_text("new copy")


def test_overwrite_uses_an_atomic_exchange_on_linux(tmp_path, monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux only")
    dst = _old_destination(tmp_path)
    calls = []
    real = output.exchange
    monkeypatch.setattr(output, "exchange", lambda a, b: (calls.append((a, b)), real(a, b)))
    replaced = []
    monkeypatch.setattr(output.os, "replace", lambda *a: replaced.append(a))
    with staged(dst, overwrite=True, folder=True) as tmp:
        _fill(tmp)
    assert len(calls) == 1 and calls[0][1] == dst and replaced == []
    assert sorted(p.name for p in dst.iterdir()) == ["NEW"] and _leftovers(tmp_path) == []


def test_overwrite_falls_back_to_two_renames_without_renameat2(tmp_path, monkeypatch):
    dst = _old_destination(tmp_path)

    def unavailable(a, b):
        raise OSError(errno.ENOSYS, "no renameat2")

    monkeypatch.setattr(output, "exchange", unavailable)
    with staged(dst, overwrite=True, folder=True) as tmp:
        _fill(tmp)
    assert sorted(p.name for p in dst.iterdir()) == ["NEW"] and _leftovers(tmp_path) == []


KILLED_BETWEEN_RENAMES = """
import errno, os, sys
from tensorsafe.converter import output
def unavailable(a, b):
    raise OSError(errno.ENOSYS, "no renameat2")
output.exchange = unavailable
real, calls = os.replace, []
def replace(a, b):
    calls.append(a)
    if len(calls) == 2:
        os._exit(137)  # killed between the two renames: no handler runs
    real(a, b)
output.os.replace = replace
with output.staged(sys.argv[1], overwrite=True, folder=True) as tmp:
    (tmp / "NEW").write_text("new copy")
"""


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    dst = _old_destination(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(dst)], capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    assert not dst.exists()
    left = _leftovers(tmp_path)
    assert len(left) == 2 and any(".tensorsafe-old-" in n for n in left), left
    with pytest.raises(Exception, match="already exists"):  # the next run puts the old copy back first
        with staged(dst, overwrite=False, folder=True):
            pass
    assert (dst / "OLD").read_text() == "old copy" and _leftovers(tmp_path) == []


def test_overwrite_end_to_end_keeps_nothing_aside(tmp_path):
    dst = tmp_path / "out"
    assert _cli("convert", "-q", str(FIXTURE), str(dst)).returncode == 0
    (dst / "stale-file").write_text("from the old output")
    result = _cli("convert", "-q", "--overwrite", str(FIXTURE), str(dst))
    assert result.returncode == 0, result.stderr
    assert not (dst / "stale-file").exists() and (dst / "unet").is_dir() and _leftovers(tmp_path) == []


# -- numpy overflow warnings -----------------------------------------------------------------------
def _overflowing_safetensors(path: Path, small: int = 3000) -> Path:
    """Many tensors (the header's column path) and one whose shape's product overflows even a float64."""
    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(small)}
    header["z"] = {"dtype": "F32", "shape": [2**63 - 1] * 20, "data_offsets": [4 * small, 4 * small + 4]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4 * small + 4))
    return path


@pytest.mark.parametrize("command", [["validate"], ["inspect"], ["convert"]])
def test_shapes_whose_product_overflows_print_no_numpy_warning(tmp_path, command):
    src = _overflowing_safetensors(tmp_path / "big.safetensors")
    args = [*command, str(src)] + ([str(tmp_path / "out")] if command == ["convert"] else [])
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", CLI, *args],
                            capture_output=True, text=True, timeout=120)
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "overflow computing buffer size" in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr


def test_leases_are_released_before_the_output_is_committed(tmp_path, monkeypatch):
    """Found in CI: a truncation that broke the lease during the commit reported "source changed"
    for an output that was complete and already in place (exit 2 with the folder there)."""
    from tensorsafe.converter import source_io

    held_at_commit = []
    real_commit = output._commit

    def commit(tmp, dst):
        held_at_commit.append(len(source_io._LEASES.held))
        real_commit(tmp, dst)

    monkeypatch.setattr(output, "_commit", commit)
    src = tmp_path / "model.ckpt"
    shutil.copyfile(FIXTURE, src)
    convert(src, tmp_path / "out")
    assert held_at_commit == [0]
