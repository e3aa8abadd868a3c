"""``tensorsafe scan`` hands every safetensors span to the header checks (called from the scanner's
dispatch), so one command gates a whole model repository."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.blob import FileMap, Span
from tensorsafe.header.fastpath import clean_size
from tensorsafe.header.limits import HeaderLimits
from tensorsafe.header.polyglot import FRONT_LOCATION, WalkBounds
from tensorsafe.header.validator import check_source, to_findings
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.scanner import FileScan


def scan_safetensors(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    """Record the header findings. A polyglot is also scanned as what else it is: the pickle at its
    front (walked by the header check to its real end, ST-P08 or ST-A04) and the zip archive at its
    end (ST-P08), so their imports are judged too."""
    from tensorsafe.containers.dispatch import scan_trailing_zip

    fs.note_kind("safetensors")
    limits = _limits(fs)
    if depth == 0 and _is_the_whole_local_file(span) and clean_size(fs.path, limits) == span.end:
        return  # no finding, no pickle at the front, no zip at the end: nothing else to scan
    bounds = WalkBounds(fs.limits.max_opcodes, fs.limits.max_memo_entries, fs.deadline)
    check = check_source(span, limits, walk=bounds)
    fs.result.findings.extend(to_findings(fs.path, check.issues, location))
    front = check.front
    if front is not None and front.issue is not None:
        stopped = front.trace.stopped  # a front that acts and then fails: its parse error is no news
        fs.judge(front.trace, span, location.inside(FRONT_LOCATION), depth, structure=stopped)
        fs.result.pickles += not stopped
    if check.zip_tail:
        scan_trailing_zip(fs, span, location, depth)


def _is_the_whole_local_file(span: Span) -> bool:
    """The span is the file at ``fs.path`` itself (the clean-file fast path reads it by its path)."""
    return type(span.buf) is FileMap and span.start == 0 and span.end == len(span.buf)


def _limits(fs: "FileScan") -> HeaderLimits:
    """The scan's policy's [limits] table: never a policy file found near the scanned file."""
    from tensorsafe.policy_file import header_limits_of

    return header_limits_of(fs.policy)
