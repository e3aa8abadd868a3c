"""Run ``tensorsafe`` in this process, as a test sees it: the exit code and what it printed.

``invoke(["scan", path])`` runs :func:`tensorsafe.cli.main.main` with stdin, stdout and stderr swapped
for in-memory streams (UTF-8, not a terminal) and returns an :class:`InvokeResult`: ``exit_code``,
``output`` (stdout and stderr interleaved, in the order written), ``stdout``, ``stderr`` and
``exception`` (the SystemExit of a non-zero exit, or any other exception the command raised, which
then counts as exit code 1), the same fields click's ``CliRunner`` gave.
"""
from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tensorsafe.cli.main import main


@dataclass
class InvokeResult:
    exit_code: int
    output: str
    stdout: str
    stderr: str
    exception: BaseException | None

    def __repr__(self) -> str:
        return f"<InvokeResult exit_code={self.exit_code} exception={self.exception!r}>"


class _Copying(io.BytesIO):
    """A stream's bytes, also copied into the interleaved output."""

    def __init__(self, both: io.BytesIO):
        super().__init__()
        self.both = both

    def write(self, data) -> int:  # type: ignore[override]
        self.both.write(data)
        return super().write(data)


class _Text(io.TextIOWrapper):
    """A text stream over a buffer it does not close; it reads as no terminal and has no file descriptor."""

    def close(self) -> None:
        pass


def invoke(args: Sequence[str], input: str | bytes | None = None, env: Mapping[str, str | None] | None = None,
           catch_exceptions: bool = True) -> InvokeResult:
    """``tensorsafe ARGS`` in this process; ``env``: variables set (None: removed) while it runs."""
    both = io.BytesIO()
    out, err = _Copying(both), _Copying(both)
    data = input.encode("utf-8") if isinstance(input, str) else input or b""
    streams = (_Text(io.BytesIO(data), encoding="utf-8"),
               _Text(out, encoding="utf-8", write_through=True),
               _Text(err, encoding="utf-8", errors="backslashreplace", write_through=True))
    exception: BaseException | None = None
    with _environment(env or {}), _swapped(*streams):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if exc.code is not None else 0
            if code != 0:
                exception = exc
            if not isinstance(code, int):
                sys.stdout.write(str(code))
                sys.stdout.write("\n")
                code = 1
            exit_code = code
        except Exception as exc:
            if not catch_exceptions:
                raise
            exception, exit_code = exc, 1
        else:
            exit_code = 0
    return InvokeResult(exit_code, _decode(both), _decode(out), _decode(err), exception)


def _decode(stream: io.BytesIO) -> str:
    return stream.getvalue().decode("utf-8", "replace").replace("\r\n", "\n")


@contextmanager
def _swapped(stdin: io.TextIOWrapper, stdout: io.TextIOWrapper, stderr: io.TextIOWrapper) -> Iterator[None]:
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdin, sys.stdout, sys.stderr = saved


@contextmanager
def _environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
