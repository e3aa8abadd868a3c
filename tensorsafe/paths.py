"""Containment: every file a conversion or a render reads from a folder stays inside that folder.

A model folder is untrusted input. Names it gives (shard index entries, component names, config
and tokenizer files) and the symlinks it holds could otherwise point anywhere on the user's disk,
and a conversion would copy that file into its output. :class:`Contained` resolves each name and
refuses one that is absolute, carries a drive letter, climbs out with ``..``, or passes a symlink
(at any level) whose target is outside, unless symlinks are explicitly allowed; then it records
which names came through one, so the summary can say so.

huggingface_hub's own cache layout (``snapshots/REV/...`` files linking to ``../../blobs/HASH``)
is recognised and its links accepted: the cache, not the folder, made them.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from tensorsafe.errors import ContainmentError, option

HUB_CACHE_PREFIXES = ("models--", "datasets--", "spaces--")


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _hub_blobs(root: str) -> str | None:
    """The ``blobs`` folder of the huggingface_hub cache repository ``root`` is a snapshot of, if it is one."""
    parts = Path(root).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith(HUB_CACHE_PREFIXES):
            blobs = os.path.join(*parts[:i], "blobs")
            if os.path.isdir(blobs) and not os.path.islink(blobs):
                return blobs
            return None
    return None


class Contained:
    """A folder whose names are resolved only inside it.

    ``allow_symlinks`` accepts symlinks whose targets are outside (weights kept in a shared
    cache); :attr:`followed` lists, relative to the folder, every name that came through one.
    """

    def __init__(self, root: str | os.PathLike, *, allow_symlinks: bool = False):
        self.given = Path(root)
        self.root = os.path.realpath(root)
        self.allow_symlinks = allow_symlinks
        self.followed: list[str] = []
        self._blobs = _hub_blobs(self.root)

    def _refuse(self, entry: str, why: str) -> ContainmentError:
        return ContainmentError(f"refusing {entry!r}: {why}; a model folder may only name files inside itself",
                                path=self.given, location=entry)

    def resolve(self, name: str | os.PathLike, *, under: str | os.PathLike = "") -> Path:
        """The real path of ``name``, relative to ``under`` (a folder inside this one, itself
        relative to it; default the folder itself).

        Raises :class:`ContainmentError` unless it stays inside; a name that does not exist is
        resolved as far as it goes (the caller's ``is_file`` then says no).
        """
        text, under = os.fspath(name), os.fspath(under)
        if "\x00" in text or not text:
            raise self._refuse(os.path.join(under, text), "not a file name")
        if PurePosixPath(text).is_absolute() or PureWindowsPath(text).anchor:
            raise self._refuse(text, "an absolute path")
        lexical = os.path.normpath(os.path.join(self.root, under, text))
        entry = os.path.join(under, text) if under else text
        if not _inside(lexical, self.root):
            raise self._refuse(entry, "'..' leads out of the folder")
        real = os.path.realpath(lexical if ".." not in PurePosixPath(entry).parts
                                else os.path.join(self.root, under, text))
        if _inside(real, self.root):
            return Path(real)
        if self._blobs is not None and os.path.dirname(real) == self._blobs:
            return Path(real)
        if self.allow_symlinks:
            if entry not in self.followed:
                self.followed.append(entry)
            return Path(real)
        raise self._refuse(entry, f"a symlink leads out of the folder (to {real}); pass "
                                  f"{option('allow_symlinks')} to follow it")

    def check_opened(self, fd: int, path: str | os.PathLike) -> None:
        """Check that the open ``fd`` is the file at ``path`` (a path :meth:`resolve` returned), so
        a symlink swapped in between resolving and opening is refused, not read."""
        real = os.fspath(path)
        proc = f"/proc/self/fd/{fd}"
        try:
            opened, there = os.fstat(fd), os.lstat(real)
            moved = os.path.islink(proc) and os.readlink(proc) != real
        except OSError:
            moved = True
        if moved or (opened.st_dev, opened.st_ino) != (there.st_dev, there.st_ino):
            raise self._refuse(os.path.relpath(real, self.root), "it changed (a symlink?) while being opened")


def contained(root: str | os.PathLike | Contained, *, allow_symlinks: bool = False) -> Contained:
    """``root`` as a :class:`Contained` folder (an existing one is passed through)."""
    return root if isinstance(root, Contained) else Contained(root, allow_symlinks=allow_symlinks)


def require_separate(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Refuse a destination that is the source, lies inside it, or contains it, before anything is written."""
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    if _inside(real_dst, real_src):
        where = "is the source" if real_dst == real_src else "lies inside the source folder"
        raise ContainmentError(f"the destination {dst} {where}; write it somewhere else", path=os.fspath(src))
    if _inside(real_src, real_dst):
        raise ContainmentError(f"the source lies inside the destination {dst}; write it somewhere else", path=os.fspath(src))
