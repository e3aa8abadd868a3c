"""The safetensors header validator (spec: ../shared/specs/safetensors-header.md).

Reads the 8-byte length and the JSON header (never the tensor data, unless a deep check is asked
for), reports the reference's first format error (ST-Fxx), our policy findings (ST-Pxx) and
advisories (ST-Axx).

    from tensorsafe.header import validate
    report = validate("model.safetensors")
"""
from __future__ import annotations

from tensorsafe.header.limits import DEFAULT_LIMITS, HeaderLimits
from tensorsafe.header.model import Header, HeaderFormatError, TensorInfo
from tensorsafe.header.validator import HeaderCheck, check_source, read_checked_header, validate, validate_file

__all__ = ["validate", "validate_file", "check_source", "read_checked_header", "HeaderCheck", "HeaderLimits",
           "DEFAULT_LIMITS", "Header", "HeaderFormatError", "TensorInfo"]
