"""In-kernel byte moves for the writer, optional speed-ups that change no byte of the output.

- ``copy_file_range``: a tensor whose bytes are plain ranges of a source file (no dtype change, no
  transpose, a contiguous source) is copied by the kernel from page cache to page cache, with no
  pass through user space. Where the kernel or filesystem refuses (another filesystem, an old
  kernel, a platform without the call), the writer falls back to writing the bytes itself.
- ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: write-back of what has been written starts every
  few tens of MB, so the disk works while we copy and the closing ``fsync`` (which still makes
  the file durable) waits for the tail only. Advice: any refusal is ignored. When the output is
  verified, the checker thread starts it behind each checked tensor, off the copying thread.
- ``fallocate``: the output's blocks are reserved before the copy (see :func:`preallocate`).
"""
from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from typing import Callable

COPY_CALL_BYTES = 64 << 20     # at most this much per copy_file_range call (signals are seen between calls)
WRITEBACK_EVERY = 64 << 20     # start write-back each time this much more has been written

# Errors that mean "the kernel cannot copy between these files", not "the copy went wrong":
# on these the writer writes the bytes itself; any other error (ENOSPC, EIO, ...) is raised.
UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL,
                         errno.EPERM, errno.ETXTBSY, errno.EOVERFLOW})


@dataclass(frozen=True)
class FileRange:
    """``nbytes`` at ``offset`` of an open source file (what verification compares the output against)."""

    fd: int
    offset: int
    nbytes: int


class KernelCopy:
    """``copy_file_range`` while it works; after the first refusal the writer does the rest itself."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and hasattr(os, "copy_file_range")

    def copy(self, dst_fd: int, ranges: tuple[FileRange, ...], pos: int,
             wrote: Callable[[int], None] | None = None) -> bool:
        """Copy ``ranges`` back to back to ``pos`` of ``dst_fd``; False (nothing to undo: the
        caller rewrites the same bytes) when the kernel refuses."""
        if not self.enabled:
            return False
        for r in ranges:
            off, left = r.offset, r.nbytes
            while left:
                try:
                    n = os.copy_file_range(r.fd, dst_fd, min(left, COPY_CALL_BYTES), off, pos)
                except OSError as exc:
                    if exc.errno in UNSUPPORTED:
                        self.enabled = False
                        return False
                    raise
                if n <= 0:  # some filesystems answer 0 instead of an error
                    self.enabled = False
                    return False
                off, pos, left = off + n, pos + n, left - n
                if wrote is not None:
                    wrote(pos)
        return True


class Writeback:
    """Starts write-back of ``fd`` up to the end written so far, every ``every`` bytes."""

    def __init__(self, fd: int, every: int = WRITEBACK_EVERY):
        self.fd = fd
        self.every = every
        self.started = 0
        self._call = _sync_file_range()

    def wrote(self, end: int) -> None:
        if self._call is not None and end - self.started >= self.every:
            self._call(self.fd, self.started, end - self.started, 2)  # SYNC_FILE_RANGE_WRITE: start, don't wait
            self.started = end


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` through ctypes (Python's os module lacks it); None off Linux."""
    return _libc("sync_file_range", "c_int", "c_int64", "c_int64", "c_uint")


# Errors of fallocate(2) that mean the space is not there: raised, before any byte is copied.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def preallocate(fd: int, size: int, path: str | os.PathLike | None = None) -> None:
    """Reserve the blocks of a new ``size``-byte file up front (Linux ``fallocate(2)``, mode 0).

    The copy then writes into allocated extents instead of reserving space page by page (ext4's
    delayed allocation: 0.1 to 0.3 s of a 2 s SD1.5 conversion, measured), and a full disk shows here,
    before anything is copied. It is not glibc's ``posix_fallocate``, which writes zeros where the
    filesystem cannot allocate: a refusal other than "no space" is ignored. No byte of the file changes.
    """
    code = _fallocate(fd, size) if size > 0 else 0
    if code in NO_SPACE:
        raise OSError(code, os.strerror(code), None if path is None else os.fspath(path))


def _fallocate(fd: int, size: int) -> int:
    """``fallocate(fd, 0, 0, size)``: 0, or the errno of the refusal (ENOSYS where there is no such call)."""
    fn = _libc("fallocate64", "c_int", "c_int", "c_int64", "c_int64")
    if fn is None:
        return errno.ENOSYS
    if fn(fd, 0, 0, size) == 0:
        return 0
    import ctypes

    return ctypes.get_errno()


_LIBC: dict[str, Callable | None] = {}


def _libc(name: str, *argtypes: str) -> Callable | None:
    """A libc function through ctypes (argument types named as ctypes attributes), returning int and
    setting errno; None off Linux or where libc lacks it. Looked up once per process."""
    if name not in _LIBC:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = getattr(ctypes.CDLL(None, use_errno=True), name)
                fn.argtypes = [getattr(ctypes, t) for t in argtypes]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError, ImportError):
                fn = None
        _LIBC[name] = fn
    return _LIBC[name]


def pwrite_all(fd: int, data, pos: int) -> int:
    """Write all of ``data`` at ``pos`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return done
