"""SARIF 2.1.0 output, shaped for code-scanning services (GitHub's upload-sarif in particular).

Model files are binary, so a result's region is a byte offset (``region.byteOffset``), never a
line. Without a ``startLine`` GitHub's upload step does not hash the file (it would read a
multi-gigabyte checkpoint as text); the results carry their own ``partialFingerprints`` instead.

One result per file and rule: a pickled module that imports 19 classes is one alert listing the 19
imports (each also a ``relatedLocation``), not 19 alerts. Its fingerprint is built from the file
and the rule only, so an alert keeps its identity when a file is re-saved or gains an import.

``invocations[0].executionSuccessful`` says whether tensorsafe ran to the end and wrote its report
(always, when there is a log to read): GitHub treats an unsuccessful execution as a failed
analysis and drops its results. A file that could not be judged is a ``toolExecutionNotification``
of level ``error`` (SARIF appendix I: the results are then not complete) and stays a result too,
so the page shows an alert on the file.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import quote

from tensorsafe.version import __version__
from tensorsafe.report import Finding, Report
from tensorsafe.rules import RULES, Outcome, Rule, Severity

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
FINGERPRINT_KEY = "tensorsafe/v2"
"""v2: one result per file and rule, fingerprinted by the two (v1 fingerprinted each finding)."""
OUTCOME_RANK = {o: i for i, o in enumerate([Outcome.FAIL, Outcome.ERROR, Outcome.WARN, Outcome.INFO])}
SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}
EXIT_TEXT = {0: "clean: every file was judged and passed", 1: "a finding fails the policy",
             2: "a file could not be read or fully judged (see toolExecutionNotifications)"}
MAX_MESSAGE_LINES = 50
MAX_RELATED = 100
"""GitHub keeps at most 100 locations of a result; the JSON report has every finding."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def to_sarif(report: Report, base: str | os.PathLike | None = None) -> dict:
    """SARIF 2.1.0 log; artifact URIs are relative to ``base`` (default: the working folder)."""
    root = Path(os.path.abspath(base or os.getcwd()))
    used = sorted({f.rule_id for f in report.findings})
    index = {rid: i for i, rid in enumerate(used)}
    artifacts: list[dict] = []
    artifact_index: dict[str, int] = {}

    def artifact(path: str, size: int | None = None, kind: str | None = None) -> int:
        if path not in artifact_index:
            uri, relative = artifact_uri(path, root)
            entry: dict = {"location": _artifact_location(uri, relative), "roles": ["analysisTarget"]}
            if size is not None:
                entry["length"] = size
            if kind:
                entry["properties"] = {"kind": kind}
            artifact_index[path] = len(artifacts)
            artifacts.append(entry)
        return artifact_index[path]

    for fr in report.files:
        artifact(fr.path, fr.size, fr.kind)
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in report.findings:
        groups.setdefault((f.path, f.rule_id), []).append(f)
    results, notifications = [], []
    for (path, rule_id), findings in groups.items():
        i = artifact(path)
        where = {**artifacts[i]["location"], "index": i}
        result = _result(findings, index[rule_id], where)
        results.append(result)
        if RULES[rule_id].outcome is Outcome.ERROR:
            not_judged = any(f.outcome is Outcome.ERROR for f in findings)
            notifications.append(_notification(result, rule_id, index[rule_id], not_judged))
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
            "invocations": [{
                "executionSuccessful": True,
                "exitCode": report.exit_code,
                "exitCodeDescription": EXIT_TEXT[report.exit_code],
                "toolExecutionNotifications": notifications,
            }],
            "originalUriBaseIds": {SRCROOT: {"uri": root_uri if root_uri.endswith("/") else root_uri + "/"}},
            "artifacts": artifacts,
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


def _artifact_location(uri: str, relative: bool) -> dict:
    return {"uri": uri, "uriBaseId": SRCROOT} if relative else {"uri": uri}


def _fingerprints(uri: str, rule_id: str) -> dict:
    """What names an alert across runs: the file and the rule; no offsets, members or wording."""
    identity = hashlib.sha256(rule_id.encode()).hexdigest()
    own = hashlib.sha256(f"{uri}\x00{rule_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return {"primaryLocationLineHash": f"{identity[:16]}:1", FINGERPRINT_KEY: own}


def _location(f: Finding, artifact: dict) -> dict:
    physical: dict = {"artifactLocation": artifact}
    if f.location.offset is not None and not f.location.members:
        physical["region"] = {"byteOffset": f.location.offset}
    location: dict = {"physicalLocation": physical}
    if f.location.members:
        location["logicalLocations"] = [{"fullyQualifiedName": " > ".join(f.location.members), "kind": "member"}]
    return location


def _line(f: Finding) -> str:
    where = f" [{f.location}]" if str(f.location) else ""
    return f"{f.message}{where}"


def _worst(findings: list[Finding]) -> Outcome:
    return min((f.outcome or Outcome.INFO for f in findings), key=OUTCOME_RANK.__getitem__)


def _highest(findings: list[Finding]) -> Severity:
    return min((f.severity or Severity.INFO for f in findings), key=SEVERITY_RANK.__getitem__)


def _message(findings: list[Finding]) -> str:
    """One finding: its line. Several: a headline naming every trigger, then one line per finding."""
    if len(findings) == 1:
        return _line(findings[0])
    rule = RULES[findings[0].rule_id]
    triggers = list(dict.fromkeys(f.trigger for f in findings if f.trigger))
    head = f"{len(findings)} {rule.name} findings" + (f": {', '.join(triggers)}" if triggers else "") + "."
    lines = [f"- {_line(f)}" for f in findings[:MAX_MESSAGE_LINES]]
    if len(findings) > MAX_MESSAGE_LINES:
        lines.append(f"- and {len(findings) - MAX_MESSAGE_LINES} more (all in the JSON report)")
    return "\n".join([head, *lines])


def _result(findings: list[Finding], rule_index: int, artifact: dict) -> dict:
    first = findings[0]
    worst = _worst(findings)
    related = [{"id": n, **_location(f, artifact), "message": {"text": _line(f)}}
               for n, f in enumerate(findings[:MAX_RELATED], start=1)] if len(findings) > 1 else []
    result = {
        "ruleId": first.rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL[worst],
        "message": {"text": _message(findings)},
        "locations": [_location(first, artifact)],
        "partialFingerprints": _fingerprints(artifact["uri"], first.rule_id),
        "properties": {
            "outcome": worst.value,
            "severity": _highest(findings).value,
            "trigger": first.trigger,
            "triggers": list(dict.fromkeys(f.trigger for f in findings if f.trigger)),
            "findings": len(findings),
        },
    }
    if related:
        result["relatedLocations"] = related
    return result


def _notification(result: dict, rule_id: str, rule_index: int, not_judged: bool) -> dict:
    """A file that could not be judged (the results are not complete for it), or one the policy let through."""
    return {
        "level": "error" if not_judged else "warning",
        "message": {"text": ("could not be judged: " if not_judged else "not judged, let through by the policy: ")
                    + result["message"]["text"]},
        "locations": result["locations"],
        "associatedRule": {"id": rule_id, "index": rule_index},
    }
