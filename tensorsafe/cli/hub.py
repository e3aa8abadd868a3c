"""The CLI's side of ``hf://`` paths: an argument type that takes a local path or a Hub URL, and the
scan/validate/inspect/convert helpers the commands call (so cli.py stays a thin layer)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from tensorsafe.report import Report


class PathOrHub(click.Path):
    """A local path (checked like ``click.Path``) or an ``hf://`` URL (kept as text)."""

    def convert(self, value, param, ctx):
        from tensorsafe.hub.client import is_hub_url

        if isinstance(value, str) and value.startswith("hf://") and not os.path.exists(value):
            return value
        if isinstance(value, os.PathLike) and is_hub_url(value):
            return os.fspath(value)
        return super().convert(value, param, ctx)


def scan_remote(urls: list[str], policy, limits, *, explain: bool, deep: bool, verdicts: bool,
                max_bytes: int) -> Report:
    from tensorsafe.hub.scan import scan_hub

    report = Report()
    for url in urls:
        report.extend(scan_hub(url, policy, limits, explain=explain, deep=deep, verdicts=verdicts,
                               max_bytes=max_bytes))
    return report


def validate_remote(urls: list[str], limits, *, deep: bool, overrides) -> Report:
    from tensorsafe.limits import DEFAULT_LIMITS
    from tensorsafe.hub.scan import validate_hub

    if overrides:
        limits = (limits or DEFAULT_LIMITS).updated(overrides)
    report = Report()
    for url in urls:
        report.extend(validate_hub(url, limits, deep=deep))
    return report


def local_source(src: str | Path) -> Path:
    """A ``convert`` or ``inspect`` source: a Hub file or folder is downloaded into huggingface_hub's
    cache first (a diffusers folder as a folder); a local path is returned as is."""
    from tensorsafe.hub.client import is_hub_url
    from tensorsafe.hub.scan import local_copy

    if isinstance(src, str) and is_hub_url(src):
        return local_copy(src)
    return Path(src)


def inspect_remote_safetensors(url: str):
    """(Inspection, bytes read) of a Hub safetensors file, from its header alone."""
    from tensorsafe.safetensors.inspect import Inspection
    from tensorsafe.hub.scan import remote_header

    header, bytes_read = remote_header(url)
    return Inspection(url, header.file_size, header.length, header.tensor_infos(), header.metadata), bytes_read
