"""The safetensors header rules (docs/safetensors.md) over the one header reader (:mod:`tensorsafe.readers.safetensors`).

Reads the 8-byte length and the JSON header (never the tensor data, unless a deep check is asked
for), reports the reference's first format error (ST-Fxx), our policy findings (ST-Pxx) and
advisories (ST-Axx)::

    from tensorsafe.safetensors import validate_file
    result = validate_file("model.safetensors")

(``tensorsafe.validate`` takes files, folders and ``hf://`` URLs.)
"""
from __future__ import annotations

from tensorsafe.limits import DEFAULT_LIMITS, HeaderLimits
from tensorsafe.readers.safetensors.model import Header, HeaderFormatError, TensorInfo
from tensorsafe.readers.safetensors.read import read_checked_header
from tensorsafe.safetensors.validator import HeaderCheck, check_source, validate_file

__all__ = ["validate_file", "check_source", "read_checked_header", "HeaderCheck", "HeaderLimits",
           "DEFAULT_LIMITS", "Header", "HeaderFormatError", "TensorInfo"]
