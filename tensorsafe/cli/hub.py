"""The CLI's side of ``hf://`` paths: an argument type that takes a local path or a Hub URL, and the
scan/validate/inspect/convert helpers the commands call (so each command stays a thin layer).

Only this module's top is loaded on a local run: each helper imports the Hub client when it is
called, which happens only when an ``hf://`` path was given."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tensorsafe.cli.arguments import check_path
from tensorsafe.hub.urls import HUB_SCHEME, is_hub_url
from tensorsafe.report import Report


def path_or_hub(*, exists: bool = False, dir_okay: bool = True) -> Callable[[str], Path | str]:
    """An argument type: a local path (checked as :func:`tensorsafe.cli.arguments.path` checks it),
    or an ``hf://`` URL, kept as text, when no local path of that name exists."""

    def checked(text: str) -> Path | str:
        if text.startswith(HUB_SCHEME) and is_hub_url(text):
            return text
        check_path(text, exists=exists, file_okay=True, dir_okay=dir_okay)
        return Path(text)

    return checked


def split_paths(given: list) -> tuple[list, list[str]]:
    """(local paths, hf:// URLs) of the command line's paths."""
    if not any(is_hub_url(p) for p in given):
        return list(given), []
    from tensorsafe.hub.client import split_paths as split

    return split(given)


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
    if isinstance(src, str) and is_hub_url(src):
        from tensorsafe.hub.scan import local_copy  # the Hub client: only for an hf:// source

        return local_copy(src)
    return Path(src)


def inspect_remote_safetensors(url: str):
    """(Inspection, bytes read) of a Hub safetensors file, from its header alone."""
    from tensorsafe.safetensors.inspect import Inspection
    from tensorsafe.hub.scan import remote_header

    header, bytes_read = remote_header(url)
    return Inspection(url, header.file_size, header.length, header.tensor_infos(), header.metadata), bytes_read
