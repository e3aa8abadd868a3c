"""Argument types the commands share: numbers in a range and paths checked as argparse reads them.

Each type raises :class:`argparse.ArgumentTypeError`, which argparse turns into the command's usage
line and one ``error:`` line, exit code 2 (bad usage), before any work starts.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

Number = int | float


def _range_text(low: Number | None, high: Number | None, low_open: bool = False) -> str:
    """``x>=0``, ``0.0<x<=1.0``: the range a value is outside of."""
    if high is None:
        return f"x{'>' if low_open else '>='}{low}"
    if low is None:
        return f"x<={high}"
    return f"{low}{'<' if low_open else '<='}x<={high}"


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer type for ``add_argument(type=...)``, limited to ``low <= x <= high``."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in the range {_range_text(low, high)}")
        return value

    return integer


def float_range(low: float | None = None, high: float | None = None, *,
                low_open: bool = False) -> Callable[[str], float]:
    """A float type limited to ``low <= x <= high`` (``low < x`` with ``low_open``)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid float") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:  # NaN is in no range
            raise argparse.ArgumentTypeError(f"{value} is not in the range {_range_text(low, high, low_open)}")
        return value

    return number


def path(*, exists: bool = False, file_okay: bool = True, dir_okay: bool = True,
         as_text: bool = False) -> Callable[[str], Path | str]:
    """A path type: ``exists`` requires it to be there (and readable); a path that is there must be a
    file unless ``dir_okay``, a folder unless ``file_okay``. The value is a :class:`~pathlib.Path`,
    or with ``as_text`` the text as given (for messages that repeat it as the user wrote it)."""

    def checked(text: str) -> Path | str:
        check_path(text, exists=exists, file_okay=file_okay, dir_okay=dir_okay)
        return text if as_text else Path(text)

    return checked


INPUT_FILE = path(exists=True, dir_okay=False, as_text=True)
"""A file the command reads (as the user wrote it)."""
INPUT_FOLDER = path(exists=True, file_okay=False, as_text=True)
"""A folder the command reads (as the user wrote it)."""


def check_path(text: str, *, exists: bool, file_okay: bool, dir_okay: bool) -> None:
    """Raise :class:`argparse.ArgumentTypeError` when ``text`` breaks the rules of :func:`path`."""
    kind = "File" if file_okay and not dir_okay else "Directory" if dir_okay and not file_okay else "Path"
    if not os.path.exists(text):
        if exists:
            raise argparse.ArgumentTypeError(f"{kind} {text!r} does not exist")
        return
    if not file_okay and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{kind} {text!r} is a file")
    if not dir_okay and os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{kind} {text!r} is a directory")
    if exists and not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{kind} {text!r} is not readable")


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (the value may be empty, the key may not)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return name, value


def add_jobs_option(parser: argparse.ArgumentParser) -> None:
    """``-j/--jobs``, as scan and validate take it."""
    parser.add_argument("-j", "--jobs", type=int_range(0), default=1, metavar="N",
                        help="Files to process at once, in separate processes (0: one per CPU). The report is the "
                             "same, in the same order. [default: %(default)s; x>=0]")
