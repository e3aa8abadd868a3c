"""Render a report: readable text, JSON with a stable schema, SARIF 2.1.0."""
from __future__ import annotations

import os

from tensorsafe.version import __version__
from tensorsafe.report import Finding, Report, printable_lines

JSON_SCHEMA_VERSION = 1


def to_text(report: Report, *, verbose: bool = False) -> str:
    """The report for a person; every line escaped whole (:func:`printable_lines`): file names, archive
    members and header strings come from hostile files."""
    lines = []
    for fr in report.files:
        if not fr.findings and not verbose and fr.hub_verdict is None:
            continue
        lines.append(f"{fr.path}: {fr.verdict.upper()} ({fr.kind}, {fr.pickles} pickle{'s' if fr.pickles != 1 else ''})")
        lines += remote_lines(fr)
        for f in fr.findings:
            lines.append("  " + finding_line(f))
        if verbose and fr.imports:
            for u in fr.imports:
                lines.append(f"  import {u.qualified} [{u.tier}] x{u.count}")
    remote = [fr for fr in report.files if fr.bytes_read is not None]
    if remote:
        read, size = sum(fr.bytes_read for fr in remote), sum(fr.size or 0 for fr in remote)
        lines.append(f"read {read:,} of {size:,} bytes from the Hugging Face Hub "
                     f"({len(remote)} file{'s' if len(remote) != 1 else ''})")
    lines.append(report.policy.summary())
    lines.append(summary_line(report))
    return printable_lines(lines)


def remote_lines(fr) -> list[str]:
    """A Hub file: the bytes read to judge it, and the Hub's own verdict when asked for."""
    out = []
    if fr.bytes_read is not None:
        out.append(f"  read {fr.bytes_read:,} of {fr.size or 0:,} bytes from the Hub")
    if fr.hub_verdict is not None:
        out.append(f"  hub verdict: {fr.hub_verdict}")
    return out


def finding_line(f: Finding) -> str:
    where = f" [{f.location}]" if str(f.location) else ""
    return f"{f.rule_id} {f.outcome.value}/{f.severity.value}{where}: {f.message}"


def summary_line(report: Report) -> str:
    counts = {"clean": 0, "fail": 0, "error": 0}
    for fr in report.files:
        counts[fr.verdict] += 1
    n = len(report.files)
    return (f"{n} file{'s' if n != 1 else ''} scanned: {counts['clean']} clean, {counts['fail']} failed, "
            f"{counts['error']} not judged -> {report.verdict.upper()}")


def to_json(report: Report) -> dict:
    """The stable JSON schema (``schema_version`` 1); see docs/json-schema.md."""
    return {
        "tool": "tensorsafe",
        "version": __version__,
        "schema_version": JSON_SCHEMA_VERSION,
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "policy": report.policy.to_json(),
        "files": [{
            "path": fr.path,
            "kind": fr.kind,
            "size": fr.size,
            "verdict": fr.verdict,
            "pickles": fr.pickles,
            "seconds": round(fr.seconds, 6),
            "imports": [{"module": u.module, "name": u.name, "tier": u.tier, "count": u.count} for u in fr.imports],
            "findings": [_finding_json(f) for f in fr.findings],
            **({"bytes_read": fr.bytes_read} if fr.bytes_read is not None else {}),
            **({"hub_verdict": fr.hub_verdict} if fr.hub_verdict is not None else {}),
        } for fr in report.files],
    }


def _finding_json(f: Finding) -> dict:
    return {
        "rule_id": f.rule_id,
        "rule": f.rule_name,
        "outcome": f.outcome.value,
        "severity": f.severity.value,
        "message": f.message,
        "trigger": f.trigger,
        "location": {"members": list(f.location.members), "offset": f.location.offset},
    }


def to_sarif(report: Report, base: str | os.PathLike | None = None) -> dict:
    """SARIF 2.1.0, built by :mod:`tensorsafe.sarif` (loaded here on use: text and JSON runs skip it)."""
    from tensorsafe.sarif import to_sarif as build

    return build(report, base)
