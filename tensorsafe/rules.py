"""Every rule tensorsafe reports, with its stable id.

Policy is data: one entry per rule, with the outcome it has by default and the sentence a
person reads in text, JSON and SARIF output. ``docs/rules.md`` is generated from this table.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(str, enum.Enum):
    """What a finding does to the verdict."""

    FAIL = "fail"    # the file breaks the policy: exit code 1
    ERROR = "error"  # the file could not be read or fully parsed: exit code 2 (never "clean")
    WARN = "warn"    # reported, does not fail the check
    INFO = "info"    # advisory


class Severity(str, enum.Enum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    outcome: Outcome
    severity: Severity
    summary: str
    help: str


def _rule(rule_id: str, name: str, outcome: Outcome, severity: Severity, summary: str, help: str) -> Rule:
    return Rule(rule_id, name, outcome, severity, summary, help)


F, E, W, I = Outcome.FAIL, Outcome.ERROR, Outcome.WARN, Outcome.INFO
CRIT, HIGH, MED, LOW, INF = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW, Severity.INFO

RULES: dict[str, Rule] = {r.id: r for r in [
    # --- imports found in a pickle -------------------------------------------------------------
    _rule("PK-I01", "dangerous-import", F, CRIT,
          "The pickle imports a callable known to run code or touch the system.",
          "Do not load this file. Loading it with pickle or torch.load(weights_only=False) runs the import."),
    _rule("PK-I02", "unknown-import", F, HIGH,
          "The pickle imports something outside the allowlist (fail closed).",
          "If you trust the import, add it to the allowlist in a policy file (`allow = [\"module:name\"]`)."),
    _rule("PK-I03", "benign-import", W, LOW,
          "The pickle references a known inert metadata class (reported, not failed).",
          "Nothing to do; the class is reviewed as inert when it is only referenced or rebuilt without arguments."),
    _rule("PK-I04", "unresolvable-import", F, HIGH,
          "The pickle imports a name that cannot be known without running it (computed operands, extension codes).",
          "Legitimate checkpoints import by literal names; treat this file as hostile."),
    # --- what is done with imports ------------------------------------------------------------
    _rule("PK-C01", "computed-callable", F, CRIT,
          "The pickle calls a value that is not an imported global (a call result, a memo trick).",
          "Legitimate checkpoints only call imported functions and classes; treat this file as hostile."),
    _rule("PK-C02", "benign-class-invoked", F, HIGH,
          "A class allowed only as inert metadata is called with arguments, which runs its constructor.",
          "Allow the class explicitly in a policy file if this is expected."),
    _rule("PK-C03", "imported-object-modified", F, CRIT,
          "The pickle modifies an imported module, class or function (BUILD or item assignment on it).",
          "This is how a pickle monkey-patches a loader; treat this file as hostile."),
    _rule("PK-C04", "nested-pickle", W, MED,
          "The pickle hands bytes to a loader; the bytes were scanned as a nested pickle.",
          "See the findings located inside the nested pickle."),
    # --- pickle structure ---------------------------------------------------------------------
    _rule("PK-S01", "invalid-pickle", E, HIGH,
          "The pickle stream is invalid (unknown opcode, bad argument, stack or memo error).",
          "A stream that cannot be parsed cannot be judged; re-save the file from a trusted source."),
    _rule("PK-S02", "truncated-pickle", E, HIGH,
          "The pickle stream ends before its STOP opcode or an argument runs past the end.",
          "The file is truncated or corrupted; download it again."),
    _rule("PK-S03", "data-after-stop", E, MED,
          "Bytes follow the last STOP opcode and do not form another pickle.",
          "A loader that reads on after STOP would see them; re-save the file from a trusted source."),
    _rule("PK-S04", "multiple-pickles", W, LOW,
          "The stream holds several concatenated pickles; every one was scanned.",
          "Only some loaders read past the first STOP; the findings cover all of them."),
    _rule("PK-S05", "out-of-band-buffer", E, MED,
          "The pickle refers to protocol-5 out-of-band buffers that are not in the file.",
          "Such a stream cannot be loaded from a file alone."),
    _rule("PK-L01", "pickle-limit", E, HIGH,
          "A safety limit was hit while walking the pickle (size, opcodes, memo, time).",
          "The file may be hostile; raise the limit only for a file you trust."),
    # --- zip containers -----------------------------------------------------------------------
    _rule("ZIP-01", "zip-name-mismatch", F, HIGH,
          "A zip member's local header names a different file than the central directory.",
          "Different zip readers would see different members; treat this file as hostile."),
    _rule("ZIP-02", "zip-bad-crc", F, HIGH,
          "A zip member's data does not match its CRC-32.",
          "The member was altered after writing or the file is corrupted."),
    _rule("ZIP-03", "zip-unusual-flags", F, MED,
          "A zip member uses flag bits checkpoint writers never set (encryption, patched data, masked headers, reserved bits).",
          "Readers disagree on such members; re-save the file from a trusted source."),
    _rule("ZIP-04", "zip-duplicate-name", F, HIGH,
          "Two zip members have the same name; readers disagree on which one they load.",
          "Treat this file as hostile."),
    _rule("ZIP-05", "zip-prepended-data", F, HIGH,
          "Bytes precede the first zip member: a polyglot that torch.load reads as a legacy pickle.",
          "The front of the file was scanned too; re-save the file from a trusted source."),
    _rule("ZIP-06", "zip-overlapping-members", F, HIGH,
          "Zip members overlap or lie outside the file (a zip bomb or a parser trick).",
          "Treat this file as hostile."),
    _rule("ZIP-07", "zip-malformed", E, HIGH,
          "The zip structure cannot be read (bad central directory, bad local header, unsupported method).",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("ZIP-08", "zip-size-mismatch", F, MED,
          "A zip member's sizes disagree between its local header, its central entry and its data.",
          "Readers disagree on where the member ends; re-save the file from a trusted source."),
    _rule("ZIP-09", "torchscript-code", W, MED,
          "The archive holds TorchScript code, which torch.jit.load compiles and runs.",
          "Load it with torch.load(weights_only=True) or convert it to safetensors; do not torch.jit.load it unless you trust it."),
    _rule("ZIP-10", "zip-unscanned-member", F, MED,
          "A member of a PyTorch archive is neither a pickle the loader reads nor referenced storage data.",
          "Hidden members are a common way to smuggle payloads; inspect the member."),
    # --- other archives and compression -------------------------------------------------------
    _rule("ARC-01", "nesting-too-deep", E, HIGH,
          "Archives are nested deeper than the limit.",
          "Raise --max-depth only for a file you trust."),
    _rule("ARC-02", "decompression-failed", E, HIGH,
          "A compressed stream or archive member could not be decompressed.",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("ARC-03", "decompressed-size-limit", E, HIGH,
          "A compressed stream decompresses past the size limit (a compression bomb or a very large file).",
          "Raise --max-decompressed only for a file you trust."),
    _rule("ARC-04", "archive-path-traversal", F, HIGH,
          "An archive member name is an absolute path or climbs out with '..' (or is a link).",
          "Extracting it writes outside the target folder; treat this file as hostile."),
    _rule("ARC-05", "archive-malformed", E, HIGH,
          "The archive structure cannot be read.",
          "The file is corrupted or crafted; it cannot be judged."),
    # --- numpy, joblib, legacy torch ----------------------------------------------------------
    _rule("NPY-01", "numpy-object-array", W, MED,
          "A .npy array holds Python objects, stored as a pickle; loading it needs allow_pickle=True.",
          "The pickle was scanned; prefer numeric arrays or safetensors."),
    _rule("NPY-02", "numpy-malformed", E, HIGH,
          "A .npy header cannot be parsed.",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("TORCH-01", "legacy-trailing-data", F, MED,
          "Bytes follow the storages of a legacy torch.save file.",
          "Appended data is a polyglot trick; re-save the file from a trusted source."),
    _rule("TORCH-02", "legacy-malformed", E, HIGH,
          "The layout of a legacy (pre-1.6) torch.save file cannot be followed.",
          "The file is corrupted or crafted; it cannot be judged."),
    _rule("JOBLIB-01", "joblib-array-unreadable", E, HIGH,
          "A joblib array payload inside the pickle cannot be located.",
          "The file is corrupted or crafted; it cannot be judged."),
    # --- files --------------------------------------------------------------------------------
    _rule("IO-01", "unreadable-file", E, HIGH,
          "The file could not be read.",
          "Check the path and permissions."),
    _rule("IO-02", "scan-time-limit", E, HIGH,
          "Scanning the file took longer than the time limit.",
          "Raise --timeout only for a file you trust."),
    # --- safetensors header (ST-Fxx format errors, ST-Pxx policy findings, ST-Axx advisories) ----
    # (section owned by the header validator; see ../shared/specs/safetensors-header.md)
]}


def rule(rule_id: str) -> Rule:
    return RULES[rule_id]
