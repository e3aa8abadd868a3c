"""Nothing lost: output is staged beside the destination and renamed into place when complete.

An existing destination is replaced only with ``overwrite``; on any failure (an error, Ctrl-C, a
full disk) the staged output is removed and the source and any old destination stay as they were.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

from tensorsafe.errors import UsageError

STAGING_MARK = ".tensorsafe-tmp-"


@contextlib.contextmanager
def staged(dst: str | os.PathLike, *, overwrite: bool, folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it becomes ``dst``."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst} already exists; pass --overwrite to replace it", path=dst)
    if dst.exists() and dst.is_dir() != folder:
        raise UsageError(f"{dst} exists and is {'a file' if folder else 'a folder'}; remove it first", path=dst)
    if not dst.parent.is_dir():
        raise UsageError(f"the folder {dst.parent} does not exist", path=dst)
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
    old = dst.parent / f".{dst.name}.tensorsafe-old-{os.getpid()}"
    _remove(old)
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    _remove(old)


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
