"""The files under the paths a user gives, in a stable order; problems are yielded, never dropped."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

SKIPPED_DIRECTORIES = frozenset({".git", ".hg", ".svn", "__pycache__"})


def iter_files(paths: Iterable[str | os.PathLike], *, allow_empty: bool = False) -> Iterator[Path]:
    """Every file under ``paths`` (folders recursively, VCS folders skipped), in a stable order.

    Problems are yielded, not dropped, so that :func:`scan_file` reports them (SCAN-04): a folder
    that cannot be listed, a symlink to a folder met on the walk (not followed), and a given path
    that holds no file at all (unless ``allow_empty``)."""
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            yield path
            continue
        found = False
        for item in _walk_folder(path):
            found = True
            yield item
        if not found and not allow_empty:
            yield path


def _walk_folder(folder: Path) -> Iterator[Path]:
    unlisted: list[Path] = []
    for root, dirs, files in os.walk(folder, onerror=lambda exc: unlisted.append(Path(exc.filename))):
        yield from unlisted
        unlisted.clear()
        kept = []
        for d in sorted(d for d in dirs if d not in SKIPPED_DIRECTORIES):
            if os.path.islink(os.path.join(root, d)):
                yield Path(root) / d
            else:
                kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            yield Path(root) / name
    yield from unlisted
