"""tensorsafe: make community model files safe to load.

Library API (the CLI is a thin layer over it)::

    import tensorsafe
    report = tensorsafe.scan("model.ckpt")
    if not report.clean:
        ...
    report = tensorsafe.validate("model.safetensors")   # the safetensors header rules (ST-*)
"""
from __future__ import annotations

__version__ = "0.1.0"

from tensorsafe.errors import (  # noqa: E402
    LimitExceeded, ParseError, PickleParseError, PolicyFileError, TensorsafeError, UnreadableFileError, UnsafeFileError,
    UsageError,
)
from tensorsafe.limits import ScanLimits  # noqa: E402
from tensorsafe.report import Finding, FileResult, Location, Report  # noqa: E402
from tensorsafe.scanner import scan, scan_file  # noqa: E402
from tensorsafe.header import HeaderLimits, validate, validate_file  # noqa: E402
from tensorsafe.load import load_state_dict  # noqa: E402

__all__ = [
    "__version__", "scan", "scan_file", "load_state_dict", "Report", "FileResult", "Finding", "Location", "ScanLimits",
    "validate", "validate_file", "HeaderLimits",
    "TensorsafeError", "UnreadableFileError", "ParseError", "PickleParseError", "LimitExceeded",
    "PolicyFileError", "UsageError", "UnsafeFileError",
]
