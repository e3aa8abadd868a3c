"""Render a report: readable text, JSON with a stable schema, SARIF 2.1.0."""
from __future__ import annotations

import os
from pathlib import Path

from tensorsafe import __version__
from tensorsafe.report import Finding, Report, printable
from tensorsafe.rules import RULES, Outcome

JSON_SCHEMA_VERSION = 1
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/tensorsafe/tensorsafe"
_SARIF_LEVEL = {Outcome.FAIL: "error", Outcome.ERROR: "error", Outcome.WARN: "warning", Outcome.INFO: "note"}


def to_text(report: Report, *, verbose: bool = False) -> str:
    lines = []
    for fr in report.files:
        if not fr.findings and not verbose:
            continue
        lines.append(f"{fr.path}: {fr.verdict.upper()} ({fr.kind}, {fr.pickles} pickle{'s' if fr.pickles != 1 else ''})")
        for f in fr.findings:
            lines.append("  " + finding_line(f))
        if verbose and fr.imports:
            for u in fr.imports:
                lines.append(f"  import {printable(u.qualified)} [{u.tier}] x{u.count}")
    lines.append(summary_line(report))
    return "\n".join(lines)


def finding_line(f: Finding) -> str:
    where = f" [{f.location}]" if str(f.location) else ""
    return f"{f.rule_id} {f.outcome.value}/{f.severity.value}{where}: {f.message}"


def summary_line(report: Report) -> str:
    counts = {"clean": 0, "fail": 0, "error": 0}
    for fr in report.files:
        counts[fr.verdict] += 1
    n = len(report.files)
    return (f"{n} file{'s' if n != 1 else ''} scanned: {counts['clean']} clean, {counts['fail']} failed, "
            f"{counts['error']} unreadable -> {report.verdict.upper()}")


def to_json(report: Report) -> dict:
    """The stable JSON schema (``schema_version`` 1); see docs/json-schema.md."""
    return {
        "tool": "tensorsafe",
        "version": __version__,
        "schema_version": JSON_SCHEMA_VERSION,
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "files": [{
            "path": fr.path,
            "kind": fr.kind,
            "size": fr.size,
            "verdict": fr.verdict,
            "pickles": fr.pickles,
            "seconds": round(fr.seconds, 6),
            "imports": [{"module": u.module, "name": u.name, "tier": u.tier, "count": u.count} for u in fr.imports],
            "findings": [_finding_json(f) for f in fr.findings],
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
    """SARIF 2.1.0 log; artifact URIs are relative to ``base`` (default: the working folder)."""
    used = sorted({f.rule_id for f in report.findings})
    index = {rid: i for i, rid in enumerate(used)}
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tensorsafe",
                "version": __version__,
                "semanticVersion": __version__,
                "informationUri": INFORMATION_URI,
                "rules": [_sarif_rule(rid) for rid in used],
            }},
            "results": [_sarif_result(f, index, base) for f in report.findings],
        }],
    }


def _sarif_rule(rule_id: str) -> dict:
    r = RULES[rule_id]
    return {
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.summary},
        "help": {"text": r.help, "markdown": f"**{r.id} {r.name}**: {r.summary}\n\n{r.help}"},
        "defaultConfiguration": {"level": _SARIF_LEVEL[r.outcome]},
        "properties": {"tags": ["security"], "security-severity": _security_severity(r.severity.value)},
    }


def _security_severity(severity: str) -> str:
    return {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}[severity]


def _sarif_result(f: Finding, index: dict[str, int], base: str | os.PathLike | None) -> dict:
    physical: dict = {"artifactLocation": {"uri": _uri(f.path, base)}}
    if f.location.offset is not None and not f.location.members:
        physical["region"] = {"byteOffset": f.location.offset}
    location: dict = {"physicalLocation": physical}
    if f.location.members:
        location["logicalLocations"] = [{"fullyQualifiedName": " > ".join(f.location.members), "kind": "member"}]
    where = f" [{f.location}]" if str(f.location) else ""
    return {
        "ruleId": f.rule_id,
        "ruleIndex": index[f.rule_id],
        "level": _SARIF_LEVEL[f.outcome],
        "message": {"text": f"{f.message}{where}"},
        "locations": [location],
        "properties": {"outcome": f.outcome.value, "severity": f.severity.value, "trigger": f.trigger},
    }


def _uri(path: str, base: str | os.PathLike | None) -> str:
    p = Path(path)
    try:
        rel = p.absolute().relative_to(Path(base or os.getcwd()).absolute())
        return rel.as_posix()
    except ValueError:
        return p.absolute().as_uri()
