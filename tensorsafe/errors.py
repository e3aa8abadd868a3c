"""One exception hierarchy for tensorsafe: every error names the file and the place in it."""
from __future__ import annotations

from pathlib import Path


class TensorsafeError(Exception):
    """Base class. ``path`` is the file at fault, ``location`` the place inside it."""

    def __init__(self, message: str, *, path: str | Path | None = None, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.location = location

    def __str__(self) -> str:
        where = self.path or ""
        if self.location:
            where = f"{where} [{self.location}]" if where else f"[{self.location}]"
        return f"{where}: {self.message}" if where else self.message


class UnreadableFileError(TensorsafeError):
    """The file could not be opened or read (permissions, missing, I/O error)."""

    rule_id = "IO-01"


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


class UnsafeFileError(TensorsafeError):
    """A file failed its scan, so it is not read; ``report`` holds the findings."""

    def __init__(self, message: str, *, path: str | Path | None = None, report: object = None):
        super().__init__(message, path=path)
        self.report = report


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
