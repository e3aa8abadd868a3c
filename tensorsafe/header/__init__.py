"""The safetensors header validator (the rules: docs/safetensors.md).

Reads the 8-byte length and the JSON header (never the tensor data, unless a deep check is asked
for), reports the reference's first format error (ST-Fxx), our policy findings (ST-Pxx) and
advisories (ST-Axx).

    from tensorsafe.header import validate
    report = validate("model.safetensors")
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.header.limits import DEFAULT_LIMITS, HeaderLimits
from tensorsafe.header.model import Header, HeaderFormatError, TensorInfo

if TYPE_CHECKING:  # for type checkers and the API docs; at run time __getattr__ loads them on first use
    from tensorsafe.header.validator import HeaderCheck, check_source, read_checked_header, validate, validate_file

_VALIDATOR = ("HeaderCheck", "check_source", "read_checked_header", "validate", "validate_file")


def __getattr__(name: str):
    """The validator (and numpy with it) loads on first use: ``header.layout`` and ``header.limits`` are
    imported by the pickle scan path, which must not pay for it."""
    if name not in _VALIDATOR:
        raise AttributeError(f"module 'tensorsafe.header' has no attribute {name!r}")
    from tensorsafe.header import validator

    return getattr(validator, name)

__all__ = ["validate", "validate_file", "check_source", "read_checked_header", "HeaderCheck", "HeaderLimits",
           "DEFAULT_LIMITS", "Header", "HeaderFormatError", "TensorInfo"]
