"""The header validator: every rule of docs/safetensors.md over one byte source.

Order: the format rules in the reference's order (stop at the first error, then report the format
errors the reference lets through), else the policy rules, the polyglot checks, the advisories,
and, when asked, the deep check.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from tensorsafe.errors import UnreadableFileError
from tensorsafe.listing import iter_files
from tensorsafe.readers.blob import MappedFile
from tensorsafe.readers.format_name import explain_format_error
from tensorsafe.safetensors import advisories
from tensorsafe.safetensors import policy_rules
from tensorsafe.safetensors import polyglot
from tensorsafe.safetensors.deep import DeepResult, deep_check, deep_issues
from tensorsafe.readers.safetensors.layout import LENGTH_BYTES, ByteSource, FileSource
from tensorsafe.limits import DEFAULT_LIMITS, HeaderLimits
from tensorsafe.readers.safetensors.model import Header, HeaderFormatError, Issue
from tensorsafe.readers.safetensors.read import read_checked_header
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tensorsafe.report import FileResult, Finding, Location

MAX_FINDINGS_PER_RULE = 20
"""More findings of one rule in one file are folded into a count."""
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass
class HeaderCheck:
    """What the checks found in one file: ``header`` is ``None`` when a format rule failed."""

    issues: list[Issue] = field(default_factory=list)
    header: Header | None = None
    deep: DeepResult | None = None
    front: polyglot.PickleFront | None = None
    """The front walked as a pickle (``None``: its first bytes refute one)."""
    zip_tail: bool = False
    tar_front: bool = False
    """``tarfile`` opens the file: ``scan`` reads it as a tar too."""
    hdf5: bool = False
    """h5py opens the file (a superblock after a user block): ``scan`` reads it as HDF5 too."""


def check_source(src: ByteSource, limits: HeaderLimits = DEFAULT_LIMITS, *, deep: bool = False,
                 walk: polyglot.WalkBounds | None = None) -> HeaderCheck:
    """Run every rule over ``src``; bad content never raises (it becomes issues).

    ``walk``: the limits and deadline of the pickle walk of the front (a scan passes its own)."""
    try:
        header = read_checked_header(src)
    except HeaderFormatError as exc:
        first = exc.issue()
        check = HeaderCheck([first, *(d for d in exc.differentials if (d.rule_id, d.trigger) != (first.rule_id,
                                                                                               first.trigger))])
        if exc.rule_id not in LENGTH_RULES:
            _guarded(check, lambda: _acting_polyglots(check, src, walk))
        return check
    if header.differentials:
        check = HeaderCheck(list(header.differentials), header)
        _guarded(check, lambda: _acting_polyglots(check, src, walk))
        return check
    check = HeaderCheck(header=header)

    def run() -> None:
        _policy_and_advisories(check, src, header, limits, walk)
        if deep:
            check.deep = deep_check(src, header)
            check.issues += deep_issues(check.deep)

    _guarded(check, run)
    return check


LENGTH_RULES = frozenset({"ST-F01", "ST-F02", "ST-F03"})
"""Format errors before any header byte is read: the file does not even mean to be safetensors."""


def _guarded(check: HeaderCheck, run: Callable[[], None]) -> None:
    """``run()``; a bug in a check must not pass a file: fail closed (ST-E01), keep what was found."""
    try:
        run()
    except (UnreadableFileError, EOFError):
        raise
    except Exception as exc:
        check.issues.append(Issue("ST-E01", f"a header check failed: {type(exc).__name__}: {exc}", None,
                                  type(exc).__name__))


def _acting_polyglots(check: HeaderCheck, src: ByteSource, walk: polyglot.WalkBounds | None) -> None:
    """For a header that fails a format rule (refused by safetensors, or read differently by other
    readers): a zip reader still opens the zip at the end (one appended after the last tensor is
    ST-F18), tarfile and h5py theirs, and ``pickle.load`` still runs the front. Those that act are
    reported (ST-P08) and judged by ``scan``, as for a valid header; a data-only front (ST-A04) is
    no news here."""
    check.issues += [i for i in _polyglots(check, src, walk) if i.rule_id == "ST-P08"]
    if check.front is not None and not check.front.acts:
        check.front = None


def _polyglots(check: HeaderCheck, src: ByteSource, walk: polyglot.WalkBounds | None) -> list[Issue]:
    """ST-P08 / ST-A04: the zip at the end, the tar and the pickle at the front, an HDF5 superblock
    inside (recorded on ``check`` for ``scan``)."""
    zip_issue = polyglot.zip_at_end(src)
    tar_issue = polyglot.tar_at_start(src)
    hdf5_issue = polyglot.hdf5_inside(src)
    check.front = polyglot.pickle_front(src, walk)
    pickle_issue = check.front.issue if check.front is not None else None
    check.zip_tail, check.tar_front, check.hdf5 = zip_issue is not None, tar_issue is not None, hdf5_issue is not None
    return [i for i in (zip_issue, tar_issue, hdf5_issue, pickle_issue) if i is not None]


def _policy_and_advisories(check: HeaderCheck, src: ByteSource, header: Header, limits: HeaderLimits,
                           walk: polyglot.WalkBounds | None) -> None:
    issues = check.issues
    issues += policy_rules.check_header_size(header, limits)
    issues += policy_rules.check_tensors(header, limits)
    issues += policy_rules.check_metadata(header, limits)
    issues += policy_rules.check_structure(header, limits)
    issues += _polyglots(check, src, walk)
    issues += advisories.check_padding(header)
    issues += advisories.check_alignment(header)
    issues += advisories.check_loader_support(header)


def to_findings(path: str, issues: Iterable[Issue], location: Location = Location()) -> list[Finding]:
    """Issues as findings; past :data:`MAX_FINDINGS_PER_RULE` of one rule, one finding counts the rest."""
    if not issues:
        return []
    findings, counts = [], {}
    for issue in issues:
        n = counts[issue.rule_id] = counts.get(issue.rule_id, 0) + 1
        if n <= MAX_FINDINGS_PER_RULE:
            findings.append(Finding(path, issue.rule_id, issue.message, location.at(issue.offset), issue.trigger))
    for rule_id, n in counts.items():
        if n > MAX_FINDINGS_PER_RULE:
            findings.append(Finding(path, rule_id, f"... and {n - MAX_FINDINGS_PER_RULE:,} more {rule_id} findings",
                                    location))
    return findings


def validate_file(path: str | os.PathLike, limits: HeaderLimits | None = None, *, deep: bool = False,
                  overrides: Mapping[str, int] | None = None) -> FileResult:
    """Validate one file as safetensors, whatever its name; never raises for bad content.

    ``limits``: ``None`` for the defaults (a policy's: ``load_policy_file(f).header_limits()``); ``overrides``
    are applied on top (``UsageError`` for an unknown name)."""
    path = os.fspath(path)
    limits = limits if limits is not None else DEFAULT_LIMITS  # never read from a file near ``path``
    if overrides:
        limits = limits.updated(overrides)
    started = time.perf_counter()
    result = FileResult(path=path, kind="safetensors")
    try:
        with FileSource(path) as src:
            result.size = src.size
            check = check_source(src, limits, deep=deep)
        if check.header is None and check.issues:
            check.issues = _name_the_format(path, check.issues)
        result.findings = to_findings(path, check.issues)
        if check.front is not None:
            result.findings += polyglot.front_findings(check.front, DEFAULT_POLICY, path)
    except UnreadableFileError as exc:
        result.findings = [Finding(path, "IO-01", exc.message)]
    except EOFError as exc:  # the file shrank under the deep check
        result.findings = [Finding(path, "IO-01", str(exc))]
    result.seconds = time.perf_counter() - started
    return result


def _name_the_format(path: str, issues: list[Issue]) -> list[Issue]:
    """A format error on a file that is not safetensors at all says what the file looks like instead."""
    first, named = issues[0], path.endswith(SAFETENSORS_SUFFIX)
    with MappedFile(path) as mf:
        message = explain_format_error(mf.span, first.message, named_safetensors=named)
    if message == first.message:
        return issues
    return [first._replace(message=message), *(issues[1:] if named else ())]


def iter_candidates(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for p in paths:
        if Path(p).is_dir():
            yield from (f for f in iter_files([p]) if f.name.endswith(SAFETENSORS_SUFFIX) or starts_like(f))
        else:
            yield Path(p)


def starts_like(path: Path) -> bool:
    """An 8-byte length that is not zero, then ``{`` after JSON whitespace: worth validating."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(LENGTH_BYTES + 64)
    except OSError:
        return False
    return len(head) > LENGTH_BYTES and head[:LENGTH_BYTES] != bytes(LENGTH_BYTES) \
        and head[LENGTH_BYTES:].lstrip(b" \t\r\n")[:1] == b"{"
