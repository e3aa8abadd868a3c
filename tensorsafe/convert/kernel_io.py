"""In-kernel byte moves for the writer, both optional speed-ups that change no byte of the output.

- ``copy_file_range``: a tensor whose bytes are plain ranges of a source file (no dtype change, no
  transpose, a contiguous source) is copied by the kernel from page cache to page cache, with no
  pass through user space. Where the kernel or filesystem refuses (another filesystem, an old
  kernel, a platform without the call), the writer falls back to writing the bytes itself.
- ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: write-back of what has been written starts every
  few tens of MB, so the disk works while we copy and the closing ``fsync`` (which still makes
  the file durable) waits for the tail only. Advice: any refusal is ignored.
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
    """``nbytes`` at ``offset`` of an open source file; ``buf`` is the same file memory-mapped
    (what verification compares the output against)."""

    fd: int
    offset: int
    nbytes: int
    buf: object


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


_SYNC_FILE_RANGE: list = []


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` through ctypes (Python's os module lacks it); None off Linux."""
    if not _SYNC_FILE_RANGE:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError, ImportError):
                fn = None
        _SYNC_FILE_RANGE.append(fn)
    return _SYNC_FILE_RANGE[0]


def pwrite_all(fd: int, data, pos: int) -> int:
    """Write all of ``data`` at ``pos`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return done
