"""tensorsafe: make community model files safe to load.

Library API (the CLI is a thin layer over it)::

    import tensorsafe
    report = tensorsafe.scan("model.ckpt")
    if not report.clean:
        ...
    report = tensorsafe.validate("model.safetensors")   # the safetensors header rules (ST-*)
    report = tensorsafe.scan(upload, policy=tensorsafe.load_policy("policy.toml"))  # else: the built-in policy
    result = tensorsafe.convert("model.ckpt", "model-diffusers")   # ConversionResult
    image = tensorsafe.render("model-diffusers", "a photo of a cat")  # PIL image (render extra)
"""
from __future__ import annotations

__version__ = "0.1.0"

from tensorsafe.errors import (  # noqa: E402
    LimitExceeded, ParseError, PickleParseError, PolicyFileError, TensorsafeError, UnreadableFileError, UnsafeFileError,
    UsageError,
)
from tensorsafe.limits import ScanLimits  # noqa: E402
from tensorsafe.report import Finding, FileResult, Location, PolicyInfo, Report  # noqa: E402
from tensorsafe.policy_file import PolicyConfig, load_policy, load_policy_file  # noqa: E402
from tensorsafe.scanner import scan, scan_file  # noqa: E402
from tensorsafe.batch import scan_many, validate_many  # noqa: E402
from tensorsafe.header import HeaderLimits, validate, validate_file  # noqa: E402
from tensorsafe.load import load_state_dict  # noqa: E402
import tensorsafe.convert  # noqa: E402  (callable: tensorsafe.convert(src, dst, ...))
from tensorsafe.pipeline import check_render, render  # noqa: E402  (torch is imported on first use)

__all__ = [
    "__version__", "scan", "scan_file", "load_state_dict", "convert", "render", "check_render", "Report", "FileResult", "Finding", "Location", "ScanLimits",
    "validate", "validate_file", "HeaderLimits", "scan_many", "validate_many",
    "load_policy", "load_policy_file", "PolicyConfig", "PolicyInfo",
    "TensorsafeError", "UnreadableFileError", "ParseError", "PickleParseError", "LimitExceeded",
    "PolicyFileError", "UsageError", "UnsafeFileError",
]
