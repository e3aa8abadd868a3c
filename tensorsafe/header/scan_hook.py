"""``tensorsafe scan`` hands every safetensors span to the header checks (called from the scanner's
dispatch), so one command gates a whole model repository."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.blob import FileMap, Span
from tensorsafe.header.fastpath import clean_size
from tensorsafe.header.limits import HeaderLimits
from tensorsafe.header.polyglot import pickle_window_end
from tensorsafe.header.validator import check_source, limits_from_config, to_findings
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.scanner import FileScan


def scan_safetensors(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    """Record the header findings. A polyglot is also scanned as what else it is: the pickle at its
    front and the zip archive at its end (ST-P08), so their imports are judged too."""
    from tensorsafe.containers.dispatch import scan_trailing_zip

    fs.note_kind("safetensors")
    limits = _limits(fs.path)
    if depth == 0 and _is_the_whole_local_file(span) and clean_size(fs.path, limits) == span.end:
        return  # no finding, no pickle at the front, no zip at the end: nothing else to scan
    check = check_source(span, limits)
    fs.result.findings.extend(to_findings(fs.path, check.issues, location))
    if check.pickle_front and check.header is not None:
        end = min(span.end, span.start + pickle_window_end(check.header.length))
        trace = fs.walk(span.buf, span.start, end)
        fs.judge(trace, span, location.inside("<pickle at the start of the file>"), depth)
    if check.zip_tail:
        scan_trailing_zip(fs, span, location, depth)


def _is_the_whole_local_file(span: Span) -> bool:
    """The span is the file at ``fs.path`` itself (the clean-file fast path reads it by its path)."""
    return type(span.buf) is FileMap and span.start == 0 and span.end == len(span.buf)


def _limits(path: str) -> HeaderLimits:
    from tensorsafe.policy_file import config_for_path

    config = config_for_path(path)
    return limits_from_config(config.limits, config.source)
