"""tensorsafe: make community model files safe to load.

Library API (the CLI is a thin layer over it)::

    import tensorsafe
    report = tensorsafe.scan("model.ckpt")
    if not report.clean:
        ...
    report = tensorsafe.validate("model.safetensors")   # the safetensors header rules (ST-*)
    report = tensorsafe.scan(upload, policy=tensorsafe.load_policy("policy.toml"))  # else: the built-in policy
    result = tensorsafe.convert("model.ckpt", "model-diffusers")   # ConversionResult
    result = tensorsafe.convert("model.ckpt", "model.safetensors")  # any pickle checkpoint -> its tensors as safetensors
    image = tensorsafe.render("model-diffusers", "a photo of a cat")  # PIL image (render extra)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.version import __version__

from tensorsafe.errors import (  # noqa: E402
    ContainmentError, LimitExceeded, MissingFileError, OutputError, ParseError, PickleParseError, PolicyFileError,
    RenderError, TensorsafeError, UnreadableFileError, UnsafeFileError, UnsupportedModelError, UsageError,
)
if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from tensorsafe.converter.run import convert  # noqa: F401
    from tensorsafe.converter.identify import Identification, identify, identify_tensors  # noqa: F401
    from tensorsafe.batch import scan_many, validate_many  # noqa: F401
    from tensorsafe.api import scan, validate  # noqa: F401
    from tensorsafe.limits import HeaderLimits  # noqa: F401
    from tensorsafe.safetensors.validator import validate_file  # noqa: F401
    from tensorsafe.limits import ScanLimits  # noqa: F401
    from tensorsafe.load import load_state_dict  # noqa: F401
    from tensorsafe.pipeline import check_render, render  # noqa: F401
    from tensorsafe.policy_file import PolicyConfig, load_policy, load_policy_file  # noqa: F401
    from tensorsafe.report import FileResult, Finding, Location, PolicyInfo, Report  # noqa: F401
    from tensorsafe.engine.scanner import scan_file  # noqa: F401

# The verbs load on first use (PEP 562), so a CLI call or ``import tensorsafe.errors`` does not pay
# for numpy, the converter or the pipeline: name -> module that defines it.
_LAZY = {
    "ScanLimits": "tensorsafe.limits",
    "Finding": "tensorsafe.report", "FileResult": "tensorsafe.report", "Location": "tensorsafe.report",
    "PolicyInfo": "tensorsafe.report", "Report": "tensorsafe.report",
    "PolicyConfig": "tensorsafe.policy_file", "load_policy": "tensorsafe.policy_file",
    "load_policy_file": "tensorsafe.policy_file",
    "scan": "tensorsafe.api", "scan_file": "tensorsafe.engine.scanner",
    "scan_many": "tensorsafe.batch", "validate_many": "tensorsafe.batch",
    "HeaderLimits": "tensorsafe.limits", "validate": "tensorsafe.api", "validate_file": "tensorsafe.safetensors.validator",
    "load_state_dict": "tensorsafe.load",
    "convert": "tensorsafe.converter.run",
    "identify": "tensorsafe.converter.identify", "identify_tensors": "tensorsafe.converter.identify",
    "Identification": "tensorsafe.converter.identify",
    "check_render": "tensorsafe.pipeline", "render": "tensorsafe.pipeline",  # torch is imported on first use
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tensorsafe' has no attribute {name!r}")
    import importlib

    mod = importlib.import_module(module)
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__", "scan", "scan_file", "load_state_dict", "convert", "render", "check_render", "Report", "FileResult", "Finding", "Location", "ScanLimits",
    "validate", "validate_file", "HeaderLimits", "scan_many", "validate_many",
    "identify", "identify_tensors", "Identification",
    "load_policy", "load_policy_file", "PolicyConfig", "PolicyInfo",
    "TensorsafeError", "UnreadableFileError", "MissingFileError", "ParseError", "PickleParseError", "LimitExceeded",
    "PolicyFileError", "UsageError", "UnsafeFileError", "ContainmentError", "UnsupportedModelError", "OutputError",
    "RenderError",
]
