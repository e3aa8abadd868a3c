"""Source bytes read with ``pread``, and the check that a source did not change under the converter.

A memory-mapped file that shrinks while it is read kills the reader with SIGBUS, which Python
cannot catch or resume from. So tensor bytes are never read through the source's mapping: they
are read with ``pread`` (a short read is an error) or copied by the kernel (``copy_file_range``
answers short). Each source file's identity (device, inode, size, modification and change times)
is taken when it is opened and compared before the output is committed and whenever a read or a
check fails, so a source that changes is reported as exactly that.

The scan of a source still walks its memory map. To keep that safe too, the converter (on Linux,
from the main thread, on a file the user owns and nobody has open for writing) holds a read lease
(``F_SETLEASE``) on each source while converting: a process that then truncates or opens the file
for writing is held by the kernel until the lease is released, and this process gets ``SIGIO``,
which raises :class:`SourceChangedError` at once; the maps are closed, the lease with them, and the
writer goes on. Where no lease can be had, the ``pread`` data path and the identity checks remain.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from tensorsafe.errors import TensorsafeError, UnreadableFileError

if TYPE_CHECKING:
    from tensorsafe.converter.sources import Located

MESSAGE = "source changed while converting; nothing was written"


class SourceChangedError(UnreadableFileError):
    """A source file was truncated, rewritten or replaced while it was being converted."""

    def __init__(self, path: str | os.PathLike, detail: str | None = None):
        super().__init__(MESSAGE + (f" ({detail})" if detail else ""), path=path)


@dataclass(frozen=True)
class Snapshot:
    """What identifies a file's content without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Snapshot":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(eq=False)
class Watched:
    """An open source file, its snapshot taken when it was opened, and its read lease if it has one."""

    path: str
    fd: int
    snapshot: Snapshot
    leased: bool = False
    broken: bool = field(default=False)
    """Set when another process started to truncate or write the file (its lease break)."""

    @classmethod
    def open_fd(cls, path: str | os.PathLike, fd: int) -> "Watched":
        watched = cls(os.fspath(path), fd, Snapshot.of(os.fstat(fd)))
        _LEASES.take(watched)
        return watched

    def release(self) -> None:
        """Give the lease back (before the descriptor is closed, which would release it as well)."""
        _LEASES.release(self)

    def change(self) -> str | None:
        """Why the file is no longer the one opened, or None."""
        if self.broken:
            return "another process truncated or wrote it"
        try:
            now = Snapshot.of(os.fstat(self.fd))
        except OSError as exc:
            return f"cannot stat it: {exc.strerror or exc}"
        before = self.snapshot
        if now.size != before.size:
            return f"its size went from {before.size:,} to {now.size:,} bytes"
        if (now.mtime_ns, now.ctime_ns) != (before.mtime_ns, before.ctime_ns):
            return "it was modified"
        try:
            named = Snapshot.of(os.stat(self.path))
        except OSError:
            return "it was removed or renamed"
        if (named.dev, named.ino) != (before.dev, before.ino):
            return "it was replaced by another file"
        return None

    def require_unchanged(self) -> None:
        why = self.change()
        if why is not None:
            raise SourceChangedError(self.path, why)


def first_change(watched: Iterable[Watched | None]) -> SourceChangedError | None:
    """The error for the first source in ``watched`` that changed, or None."""
    seen: set[int] = set()
    for w in watched:
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        why = w.change()
        if why is not None:
            return SourceChangedError(w.path, why)
    return None


@dataclass(frozen=True)
class FileBytes:
    """A source file's bytes, read with :func:`pread_exact` (what the converter streams tensors from)."""

    fd: int
    path: str

    def read(self, offset: int, nbytes: int) -> bytearray:
        return pread_exact(self.fd, offset, nbytes, self.path)


def pread_exact(fd: int, offset: int, nbytes: int, path: str | os.PathLike | None = None) -> bytearray:
    """``nbytes`` at ``offset`` of ``fd``; a file that ends first changed under us (its size was checked
    against every tensor's offsets when it was opened)."""
    out = bytearray(nbytes)
    view = memoryview(out)
    done = 0
    while done < nbytes:
        try:
            got = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise UnreadableFileError(f"cannot read bytes {offset + done:,}-{offset + nbytes - 1:,}: "
                                      f"{exc.strerror or exc}", path=path) from exc
        if got <= 0:
            raise SourceChangedError(path or f"fd {fd}", f"it ends before byte {offset + nbytes:,}")
        done += got
    return out


F_RDLCK, F_UNLCK = 0, 2


class _Leases:
    """The read leases held while :func:`leases_held` is active (only the main thread can take SIGIO)."""

    def __init__(self) -> None:
        self.active = False
        self.held: dict[int, Watched] = {}

    def take(self, w: Watched) -> None:
        if not self.active:
            return
        import fcntl

        try:
            fcntl.fcntl(w.fd, fcntl.F_SETLEASE, F_RDLCK)
        except OSError:  # not the owner, open for writing elsewhere, a filesystem without leases
            return
        w.leased = True
        self.held[w.fd] = w

    def release(self, w: Watched) -> None:
        if self.held.get(w.fd) is not w:
            return
        del self.held[w.fd]
        w.leased = False
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.fcntl(w.fd, fcntl.F_SETLEASE, F_UNLCK)

    def on_sigio(self, signum: int, frame: object) -> None:
        import fcntl

        for w in list(self.held.values()):
            if w.broken:
                continue
            try:
                pending = fcntl.fcntl(w.fd, fcntl.F_GETLEASE) != F_RDLCK
            except OSError:
                pending = True
            if pending:
                w.broken = True
                raise SourceChangedError(w.path, "another process started to truncate or write it")


_LEASES = _Leases()


def release_leases() -> None:
    """Every source was read and found unchanged: a change from now on alters nothing written, so
    the leases go before the output is committed (a lease break during the commit would report a
    change for an output that is complete and already in place)."""
    for w in list(_LEASES.held.values()):
        _LEASES.release(w)


@contextlib.contextmanager
def leases_held() -> Iterator[None]:
    """While active, sources opened with :meth:`Watched.open_fd` are leased (Linux, main thread only)."""
    if _LEASES.active or not sys.platform.startswith("linux") \
            or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGIO, _LEASES.on_sigio)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_quiet_if_broken, previous_hook)
    _LEASES.active = True
    try:
        yield
    finally:
        _LEASES.active = False
        for w in list(_LEASES.held.values()):
            _LEASES.release(w)
        signal.signal(signal.SIGIO, previous)
        sys.unraisablehook = previous_hook


def _quiet_if_broken(previous: Callable[[sys.UnraisableHookArgs], object], unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` while leases are held. A lease break's signal can land where Python cannot
    raise (a weakref callback, a ``__del__``): the ``SourceChangedError`` is then printed as "Exception
    ignored" and dropped. It is not lost: ``on_sigio`` marked the source broken first, and the check
    before the output is committed reports it. So it is not printed; anything else is."""
    if isinstance(unraisable.exc_value, SourceChangedError):
        return
    previous(unraisable)


@contextlib.contextmanager
def sources_unchanged(sources: Mapping[str, Located]) -> Iterator[None]:
    """The output is committed only if no source file changed while it was written; a failure while
    writing (a short read, a verification that differs) is reported as the change that caused it."""
    try:
        yield
    except (TensorsafeError, OSError) as exc:
        changed = first_change(s.watch for s in sources.values())
        if changed is not None:
            raise changed from exc
        raise
    changed = first_change(s.watch for s in sources.values())
    if changed is not None:
        raise changed
    release_leases()
