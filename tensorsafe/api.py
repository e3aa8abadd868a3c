"""The library verbs ``scan`` and ``validate`` over paths: the one place that tells a local path from
an ``hf://`` URL. Everything below (the scan engine, the header rules) reads local files and byte
buffers only; the Hub client sits beside them and is asked only here."""
from __future__ import annotations

import os
from typing import Iterable, Mapping

from tensorsafe.engine.scanner import scan_file
from tensorsafe.hub.urls import is_hub_url
from tensorsafe.limits import ScanLimits
from tensorsafe.listing import iter_files
from tensorsafe.pickles.policy import Policy
from tensorsafe.policy_file import PolicyConfig, describe, resolve_policy
from tensorsafe.report import Report
from tensorsafe.limits import DEFAULT_LIMITS, HeaderLimits

PathArg = str | os.PathLike
PathsArg = PathArg | Iterable[PathArg]


def _as_list(paths: PathsArg) -> list[PathArg]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def scan(paths: PathsArg, policy: Policy | PolicyConfig | None = None, limits: ScanLimits | None = None, *,
         explain: bool = False, allow_empty: bool = False) -> Report:
    """Scan files and folders; the library form of ``tensorsafe scan``.

    Without ``policy``, the built-in policy: no policy is ever read from a file near the scanned
    paths (:func:`tensorsafe.load_policy` loads one to pass). ``report.policy`` names the policy and
    what it loosened. ``allow_empty``: a path that yields no files is not an error.
    ``hf://OWNER/REPO[@REV][/PATH]`` URLs are scanned on the Hub by range requests
    (:func:`tensorsafe.hub.scan.scan_hub` has the options).
    """
    resolved = resolve_policy(policy)
    report = Report(policy=describe(resolved, allow_empty=allow_empty))
    for given in _as_list(paths):
        if is_hub_url(given):
            from tensorsafe.hub.scan import scan_hub  # HTTP range reads load only for a URL

            report.files += scan_hub(given, resolved, limits, explain=explain).files
            continue
        for path in iter_files([given], allow_empty=allow_empty):
            report.files.append(scan_file(path, resolved, limits or ScanLimits(), explain=explain))
    return report


def validate(paths: PathsArg, limits: HeaderLimits | None = None, *, deep: bool = False,
             overrides: Mapping[str, int] | None = None) -> Report:
    """Validate safetensors files; the library form of ``tensorsafe validate``.

    Files named explicitly are validated whatever they hold; in folders, files named
    ``*.safetensors`` and files that start like one (an 8-byte length and ``{``) are. Without
    ``limits``, the default limits (never a policy file near the validated files);
    ``overrides`` (limit name -> value) apply on top. ``hf://`` URLs are read from the Hub (the
    header bytes only, by range requests).
    """
    from tensorsafe.safetensors.validator import iter_candidates, validate_file  # numpy: not for a pickle scan

    if overrides:
        DEFAULT_LIMITS.updated(overrides)  # refuse unknown names before any file is read
    report = Report()
    for given in _as_list(paths):
        if is_hub_url(given):
            from tensorsafe.hub.scan import validate_hub

            report.files += validate_hub(given, limits, deep=deep).files
            continue
        for path in iter_candidates([given]):
            report.files.append(validate_file(path, limits, deep=deep, overrides=overrides))
    return report


__all__ = ["scan", "validate"]
