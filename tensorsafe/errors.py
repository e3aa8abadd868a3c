"""One exception hierarchy for tensorsafe: every error names the file and the place in it."""
from __future__ import annotations

import errno
import re
from pathlib import Path

_OPTION = re.compile("\ue000([^\x1f]*)\x1f([^\x1f]*)\x1f([^\ue001]*)\ue001")
_FLAG = "\x01"


def option(name: str, value: object = True, *, cli: str | None = None) -> str:
    """An option named inside an error message, spelled for whoever reads it.

    A library caller reads ``overwrite=True``, ``model_type=FAMILY``, ``ema='no'`` (``value=None``:
    just the name); the command line reads ``--overwrite``, ``--model-type FAMILY``, ``--ema no``
    (:meth:`TensorsafeError.cli_message`). ``cli``: the option's name when it is not the parameter's
    with dashes (``max_memory_bytes`` is ``--max-memory``)."""
    cli = cli or "--" + name.replace("_", "-")
    shown = _FLAG if value is True else "" if value is None else str(value)
    return f"\ue000{name}\x1f{cli}\x1f{shown}\ue001"


def spell_options(text: str, *, cli: bool = False) -> str:
    """``text`` with each :func:`option` in it spelled for the command line or for a library caller."""
    def one(m: re.Match) -> str:
        name, flag, value = m.groups()
        if cli:
            return flag if value in ("", _FLAG) else f"{flag} {value}"
        if value == "":
            return name
        if value == _FLAG:
            return f"{name}=True"
        return f"{name}={value}" if value.isupper() else f"{name}={value!r}"  # FOLDER: a placeholder
    return _OPTION.sub(one, text)


class TensorsafeError(Exception):
    """Base class. ``path`` is the file at fault, ``location`` the place inside it.

    ``message`` names options the library way (``overwrite=True``); :meth:`cli_message` the command
    line's (``--overwrite``): see :func:`option`."""

    def __init__(self, message: str, *, path: str | Path | None = None, location: str | None = None):
        super().__init__(spell_options(message))
        self.message = message
        self.path = str(path) if path is not None else None
        self.location = location

    @property
    def message(self) -> str:
        return spell_options(self._message)

    @message.setter
    def message(self, text: str) -> None:
        self._message = text

    @property
    def raw_message(self) -> str:
        """The message with its options unspelled, to build a longer message from."""
        return self._message

    def _where(self) -> str:
        where = self.path or ""
        if self.location:
            where = f"{where} [{self.location}]" if where else f"[{self.location}]"
        return where

    def __str__(self) -> str:
        where = self._where()
        return f"{where}: {self.message}" if where else self.message

    def cli_message(self) -> str:
        """``str(self)`` with options spelled as the command line's flags."""
        text = spell_options(self._message, cli=True)
        where = self._where()
        return f"{where}: {text}" if where else text


class UnreadableFileError(TensorsafeError):
    """The file could not be opened or read (permissions, missing, I/O error)."""

    rule_id = "IO-01"


class MissingFileError(UnreadableFileError, FileNotFoundError):
    """The path names no file; also a ``FileNotFoundError``, so ``except FileNotFoundError`` code works."""

    def __init__(self, message: str, *, path: str | Path | None = None, location: str | None = None):
        super().__init__(message, path=path, location=location)
        self.errno = errno.ENOENT
        self.filename = self.path


class ParseError(TensorsafeError):
    """The bytes do not follow the format they claim (pickle, zip, npy, ...)."""


class PickleParseError(ParseError):
    """A pickle stream could not be walked to its end: invalid opcode, truncation, bad stack."""

    def __init__(self, message: str, *, offset: int, path: str | Path | None = None, location: str | None = None):
        super().__init__(message, path=path, location=location)
        self.offset = offset


class LimitExceeded(TensorsafeError):
    """A named safety limit was hit (``limit`` says which, ``value`` what it is set to)."""

    def __init__(self, limit: str, value: int | float, message: str, *, path: str | Path | None = None,
                 location: str | None = None):
        super().__init__(message, path=path, location=location)
        self.limit = limit
        self.value = value


class PolicyFileError(TensorsafeError):
    """A policy file (or ``[tool.tensorsafe]`` table) is malformed."""


class UsageError(TensorsafeError):
    """The caller asked for something that cannot be done (bad option, missing path)."""


class ContainmentError(TensorsafeError):
    """A folder names a file outside itself (absolute path, ``..``, a symlink that leads out), or a
    destination overlaps its source. ``path`` is the folder, ``location`` the entry at fault."""


class UnsafeFileError(TensorsafeError):
    """A file failed its scan, so it is not read; ``report`` holds the findings."""

    def __init__(self, message: str, *, path: str | Path | None = None, report: object = None):
        super().__init__(message, path=path)
        self.report = report

    @property
    def findings(self) -> list:
        """The report's findings that fail the policy or could not be judged (why the file was refused)."""
        found = getattr(self.report, "findings", None) or []
        return [f for f in found if getattr(getattr(f, "outcome", None), "value", None) in ("fail", "error")]


class UnsupportedModelError(TensorsafeError):
    """The checkpoint is a model family tensorsafe cannot convert yet (SD3, Flux, ControlNet, ...).

    ``evidence`` is the key (and shape) that identified it, so the message can be checked by hand.
    """

    def __init__(self, message: str, *, evidence: str | None = None, path: str | Path | None = None,
                 location: str | None = None):
        super().__init__(message, path=path, location=location)
        self.evidence = evidence


class OutputError(TensorsafeError):
    """The output could not be written (full disk, permissions); nothing was left half-written."""


class RenderError(TensorsafeError):
    """The reference pipeline ran but the picture is not usable (NaN or infinite values)."""
