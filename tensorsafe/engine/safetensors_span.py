"""``tensorsafe scan`` hands every safetensors span to the header checks (called from the scanner's
dispatch), so one command gates a whole model repository."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.limits import HeaderLimits
from tensorsafe.safetensors.polyglot import FRONT_LOCATION, WalkBounds
from tensorsafe.safetensors.validator import check_source, to_findings
from tensorsafe.engine.zip_scan import scan_trailing_zip
from tensorsafe.policy_file import header_limits_of
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan


def scan_safetensors(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    """Record the header findings. A polyglot is also scanned as what else it is: the pickle at its
    front (walked by the header check to its real end, ST-P08 or ST-A04), the zip archive at its
    end, the tar archive at its start and the HDF5 file inside (ST-P08), so their imports and
    configs are judged too."""
    fs.note_kind("safetensors")
    limits = _limits(fs)
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
    if check.tar_front:
        from tensorsafe.engine.tar_scan import scan_tar  # tarfile loads only for a tar

        scan_tar(fs, span, location, depth)
    if check.hdf5:
        from tensorsafe.engine.hdf5 import scan_hdf5  # h5py loads only for an HDF5 file

        scan_hdf5(fs, span, location, depth)


def _limits(fs: "FileScan") -> HeaderLimits:
    """The scan's policy's [limits] table: never a policy file found near the scanned file."""
    return header_limits_of(fs.policy)
