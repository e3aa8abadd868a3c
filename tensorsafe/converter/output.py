"""Nothing lost: output is staged beside the destination and renamed into place when complete.

An existing destination is replaced only with ``overwrite``; on any failure (an error, Ctrl-C, a
full disk) the staged output is removed and the source and any old destination stay as they were.

A folder destination is replaced by an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``): the
new folder takes the destination's name and the old one the staging name, in one step, and the old
one is then removed. Where the platform or filesystem has no exchange, two renames: the old folder
to ``.NAME.tensorsafe-old-PID``, the new one to ``NAME``. A process killed (``kill -9``) can leave:

- before the exchange or first rename: ``.NAME.tensorsafe-tmp-PID`` (partial new output); ``NAME`` intact;
- after the exchange: ``.NAME.tensorsafe-tmp-PID`` (the old copy, partly removed); ``NAME`` complete and new;
- between the two renames: no ``NAME``, the old copy in ``.NAME.tensorsafe-old-PID``, the new output in
  ``.NAME.tensorsafe-tmp-PID``;
- after them: ``.NAME.tensorsafe-old-PID`` (the old copy, partly removed); ``NAME`` complete and new.

The next run for the same destination finds these once process PID is gone (see :func:`recover`):
it removes the ``tmp`` entries, renames an ``old`` copy back to ``NAME`` when ``NAME`` is missing,
and removes it otherwise. A single file is replaced by one rename (``os.replace``), which is atomic.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterator

from tensorsafe.converter.kernel_io import _libc
from tensorsafe.errors import UsageError, option

STAGING_MARK = ".tensorsafe-tmp-"
OLD_MARK = ".tensorsafe-old-"
AT_FDCWD = -100
RENAME_EXCHANGE = 2
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
CLOCK_SLACK_S = 2.0


@contextlib.contextmanager
def staged(dst: str | os.PathLike, *, overwrite: bool, folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it becomes ``dst``."""
    dst = Path(dst)
    if dst.parent.is_dir():
        recover(dst)  # before the checks: a run killed between its two renames set the old copy aside
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst} already exists; pass {option('overwrite')} to replace it", path=dst)
    if dst.exists() and dst.is_dir() != folder:
        raise UsageError(f"{dst} exists and is {'a file' if folder else 'a folder'}; remove it first", path=dst)
    if not dst.parent.is_dir():  # as cp does: a typo in a path must not create a tree of folders
        what = "is not a folder" if dst.parent.exists() else "does not exist"
        raise UsageError(f"the parent folder {dst.parent} {what}; parent folders are not created, make it first",
                         path=dst)
    tmp = dst.parent / f".{dst.name}{STAGING_MARK}{os.getpid()}"
    _remove(tmp)
    if folder:
        tmp.mkdir()
    try:
        with _signals_raise():
            yield tmp
            _commit(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, dst: Path) -> None:
    if not tmp.is_dir() or not dst.exists():
        os.replace(tmp, dst)
        return
    try:
        exchange(tmp, dst)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    else:
        _remove(tmp)  # now the old copy
        return
    old = dst.parent / f".{dst.name}{OLD_MARK}{os.getpid()}"
    _remove(old)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    _remove(old)


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); OSError with ENOSYS
    where the platform has no such call, EINVAL where the filesystem refuses it."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "no renameat2 on this platform")
    old, new = os.fsencode(a), os.fsencode(b)
    fn = _libc("renameat2", "c_int", "c_char_p", "c_int", "c_char_p", "c_uint")
    if fn is not None:
        code = fn(AT_FDCWD, old, AT_FDCWD, new, RENAME_EXCHANGE)
    else:  # glibc before 2.28 has no wrapper
        number = SYS_RENAMEAT2.get(platform.machine())
        syscall = _libc("syscall", "c_long", "c_int", "c_char_p", "c_int", "c_char_p", "c_uint")
        if number is None or syscall is None:
            raise OSError(errno.ENOSYS, "no renameat2 on this platform")
        code = syscall(number, AT_FDCWD, old, AT_FDCWD, new, RENAME_EXCHANGE)
    if code != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def recover(dst: Path) -> list[Path]:
    """Clean up after runs for ``dst`` that were killed: their staging entries are removed and an old
    copy set aside between two renames is renamed back to ``dst`` when ``dst`` is missing (removed
    otherwise). Only entries whose process is gone are touched; returns what was handled."""
    pattern = re.compile(re.escape(f".{dst.name}") + r"\.tensorsafe-(tmp|old)-(\d+)")
    try:
        entries = sorted(dst.parent.iterdir())
    except OSError:
        return []
    handled = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or int(m.group(2)) == os.getpid() or not _owner_gone(int(m.group(2)), entry):
            continue
        if m.group(1) == "old" and not dst.exists() and not dst.is_symlink():
            os.replace(entry, dst)
        else:
            _remove(entry)
        handled.append(entry)
    return handled


def _owner_gone(pid: int, entry: Path) -> bool:
    """The process that made ``entry`` is gone: no process ``pid``, or one started after ``entry``
    was last changed (the PID was reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        pass
    started = _process_start(pid)
    try:
        changed = entry.lstat().st_ctime
    except OSError:
        return False
    return started is not None and changed < started - CLOCK_SLACK_S


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise like Ctrl-C does, so staged output is cleaned up on a kill."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not the main thread
                pass
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
