"""SARIF 2.1.0 output, shaped for code-scanning services (GitHub's upload-sarif in particular).

Model files are binary, so a result's region is a byte offset (``region.byteOffset``), never a
line. Without a ``startLine`` GitHub's upload step does not hash the file (it would read a
multi-gigabyte checkpoint as text); the results carry their own ``partialFingerprints`` instead,
built from what identifies a finding inside its file (rule, archive members, trigger), not from
byte offsets or messages, so an alert keeps its identity when a file is re-saved.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from tensorsafe import __version__
from tensorsafe.report import Finding, Report
from tensorsafe.rules import RULES, Outcome, Rule

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/tensorsafe/tensorsafe"
RULES_PAGE = f"{INFORMATION_URI}/blob/main/docs/rules.md"
SRCROOT = "%SRCROOT%"
"""The uriBaseId of relative artifact URIs: the folder the scan ran in (a CI checkout's root)."""

LEVEL = {Outcome.FAIL: "error", Outcome.ERROR: "error", Outcome.WARN: "warning", Outcome.INFO: "note"}
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}
"""GitHub ranks alerts by this CVSS-like score: >= 9.0 critical, 7.0-8.9 high, 4.0-6.9 medium, below low."""
OUTCOME_TEXT = {Outcome.FAIL: "fails the check (exit code 1)",
                Outcome.ERROR: "the file could not be judged (exit code 2)",
                Outcome.WARN: "reported, does not fail the check",
                Outcome.INFO: "advisory, does not fail the check"}
FINGERPRINT_KEY = "tensorsafe/v1"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def to_sarif(report: Report, base: str | os.PathLike | None = None) -> dict:
    """SARIF 2.1.0 log; artifact URIs are relative to ``base`` (default: the working folder)."""
    root = Path(os.path.abspath(base or os.getcwd()))
    used = sorted({f.rule_id for f in report.findings})
    index = {rid: i for i, rid in enumerate(used)}
    seen: Counter = Counter()
    results = []
    for f in report.findings:
        uri, relative = artifact_uri(f.path, root)
        identity = _identity(f)
        seen[(uri, identity)] += 1
        results.append(_result(f, index[f.rule_id], uri, relative, identity, seen[(uri, identity)]))
    root_uri = root.as_uri()
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tensorsafe",
                "version": __version__,
                "semanticVersion": __version__,
                "informationUri": INFORMATION_URI,
                "rules": [sarif_rule(RULES[rid]) for rid in used],
            }},
            "originalUriBaseIds": {SRCROOT: {"uri": root_uri if root_uri.endswith("/") else root_uri + "/"}},
            "results": results,
            "properties": {"policy": report.policy.to_json()},
        }],
    }


def help_uri(rule_id: str) -> str:
    return f"{RULES_PAGE}#{rule_id.lower()}"


def sarif_rule(r: Rule) -> dict:
    """A reportingDescriptor with everything GitHub shows on an alert: descriptions, how to fix, severity."""
    verdict = f"{OUTCOME_TEXT[r.outcome]}; severity {r.severity.value}"
    return {
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": f"{r.summary} Outcome: {verdict}."},
        "help": {
            "text": f"{r.id} {r.name}: {verdict}.\n\nWhat it means: {r.summary}\n\nHow to fix: {r.help}\n\n"
                    f"Reference: {help_uri(r.id)}",
            "markdown": f"**{r.id} {r.name}**: {verdict}.\n\n**What it means.** {r.summary}\n\n"
                        f"**How to fix.** {r.help}\n\nSee [{r.id} in the rules reference]({help_uri(r.id)}).",
        },
        "helpUri": help_uri(r.id),
        "defaultConfiguration": {"level": LEVEL[r.outcome]},
        "properties": {"tags": ["security", r.name], "security-severity": SECURITY_SEVERITY[r.severity.value]},
    }


def artifact_uri(path: str, root: Path) -> tuple[str, bool]:
    """(URI, is relative): percent-encoded, relative to ``root`` when the file lies under it.

    A remote file (``hf://...``, ``https://...``) keeps its URI."""
    if _SCHEME.match(path):
        return quote(path.encode("utf-8", "surrogatepass"), safe=":/?#[]@!$&'()*+,;=%~"), False
    p = Path(os.path.abspath(path))
    try:
        rel = p.relative_to(root)
    except ValueError:
        return p.as_uri(), False
    return quote(os.fsencode(rel.as_posix()), safe="/"), True


def _identity(f: Finding) -> str:
    """What names a finding inside its file across runs: no offsets, no message wording."""
    parts = [f.rule_id, *f.location.members, f.trigger or ""]
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _result(f: Finding, rule_index: int, uri: str, relative: bool, identity: str, occurrence: int) -> dict:
    artifact: dict = {"uri": uri}
    if relative:
        artifact["uriBaseId"] = SRCROOT
    physical: dict = {"artifactLocation": artifact}
    if f.location.offset is not None and not f.location.members:
        physical["region"] = {"byteOffset": f.location.offset}
    location: dict = {"physicalLocation": physical}
    if f.location.members:
        location["logicalLocations"] = [{"fullyQualifiedName": " > ".join(f.location.members), "kind": "member"}]
    where = f" [{f.location}]" if str(f.location) else ""
    own = hashlib.sha256(f"{uri}\x00{identity}\x00{occurrence}".encode()).hexdigest()
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL[f.outcome],
        "message": {"text": f"{f.message}{where}"},
        "locations": [location],
        "partialFingerprints": {"primaryLocationLineHash": f"{identity[:16]}:{occurrence}", FINGERPRINT_KEY: own},
        "properties": {"outcome": f.outcome.value, "severity": f.severity.value, "trigger": f.trigger},
    }
