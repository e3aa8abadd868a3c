"""Findings and reports: structured results that the CLI renders (text, JSON, SARIF)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tensorsafe.rules import Outcome, Severity, rule

EXIT_CLEAN = 0
EXIT_POLICY_FAILURE = 1
EXIT_UNREADABLE = 2


def printable(text: str) -> str:
    """Names come from hostile files: escape control and format characters and lone surrogates,
    so a report can neither crash the terminal encoder nor rewrite what the user sees.

    Every character Python does not call printable is written as ``\\uXXXX`` (``\\UXXXXXXXX``): the C0
    and C1 controls (ESC, CR, LF, backspace, BEL, CSI ...), the bidi embeddings, overrides and isolates
    (U+202A-202E, U+2066-2069), other format characters (zero-width, BOM), line and paragraph
    separators and lone surrogates (undecodable file-name bytes). The result is one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def printable_lines(lines: Iterable[str]) -> str:
    """``lines`` joined for a terminal, each escaped whole by :func:`printable`: a name holding a
    newline stays inside its own line, so it cannot forge another one."""
    return "\n".join(map(printable, lines))


@dataclass(frozen=True)
class Location:
    """Where a finding sits inside a file: the chain of archive members, then a byte offset.

    Attributes:
        members: Archive members from the outside in (``("model/data.pkl",)``), empty for the file itself.
        offset: Byte offset inside the innermost member (or the file), when the finding has one.
    """

    members: tuple[str, ...] = ()
    offset: int | None = None

    def inside(self, member: str) -> "Location":
        return Location(self.members + (printable(member),), None)

    def at(self, offset: int | None) -> "Location":
        return Location(self.members, offset)

    def __str__(self) -> str:
        parts = [" > ".join(self.members)] if self.members else []
        if self.offset is not None:
            parts.append(f"@{self.offset}")
        return " ".join(parts)


@dataclass(frozen=True)
class Finding:
    """One rule that fired on one file.

    Attributes:
        path: The file.
        rule_id: The stable rule id (``PK-I01``); ``docs/rules.md`` says what it means and what to do.
        message: One line for a person (control characters from the file are escaped).
        location: Where in the file.
        trigger: The import, opcode or header field that fired (``os.system``), when there is one.
        outcome: ``fail``, ``error``, ``warn`` or ``info``: the rule's default when not given.
        severity: ``critical`` to ``info``: the rule's default when not given.
    """

    path: str
    rule_id: str
    message: str
    location: Location = Location()
    trigger: str | None = None
    outcome: Outcome | None = None
    severity: Severity | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", printable(self.message))
        if self.trigger is not None:
            object.__setattr__(self, "trigger", printable(self.trigger))
        r = rule(self.rule_id)
        if self.outcome is None:
            object.__setattr__(self, "outcome", r.outcome)
        if self.severity is None:
            object.__setattr__(self, "severity", r.severity)

    @property
    def rule_name(self) -> str:
        return rule(self.rule_id).name

    def __str__(self) -> str:
        where = f" [{self.location}]" if str(self.location) else ""
        outcome = self.outcome.value if self.outcome is not None else rule(self.rule_id).outcome.value
        return printable(f"{self.path}{where}: {self.rule_id} {outcome}: {self.message}")  # for a person: one line


@dataclass(frozen=True)
class ImportUse:
    """One import seen in a file, with its policy tier and how often it appears."""

    module: str
    name: str
    tier: str
    count: int

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class FileResult:
    """The result for one file.

    Attributes:
        path: The file.
        kind: The container, as detected from the bytes (``pytorch-zip``, ``gzip:pickle``, ``safetensors``, ...).
        size: Size in bytes, when the file could be opened.
        findings: Every finding, in the order found.
        pickles: How many pickle streams were walked.
        imports: Every import seen, with its policy tier and count.
        seconds: Time spent on the file.
        verdict: ``clean``, ``fail`` or ``error`` (a property: ``fail`` wins over ``error``).
    """

    path: str
    kind: str
    size: int | None = None
    findings: list[Finding] = field(default_factory=list)
    pickles: int = 0
    imports: list[ImportUse] = field(default_factory=list)
    seconds: float = 0.0
    explanations: list[tuple[str, str]] = field(default_factory=list)
    """(location, decompiled source) of each pickle that failed, when asked for."""
    bytes_read: int | None = None
    """A Hub file: the bytes fetched over the network to judge it (``None`` for a local file)."""
    hub_verdict: str | None = None
    """A Hub file, with ``--hub-verdicts``: the Hub's own security scan status (and why)."""

    @property
    def verdict(self) -> str:
        return verdict_of(self.findings)


def verdict_of(findings: list[Finding]) -> str:
    """``fail`` wins over ``error``: a definite policy failure is the stronger verdict."""
    outcomes = {f.outcome for f in findings}
    if Outcome.FAIL in outcomes:
        return "fail"
    if Outcome.ERROR in outcomes:
        return "error"
    return "clean"


@dataclass(frozen=True)
class PolicyInfo:
    """Which policy judged the files, and what it loosens against the built-in policy.

    Attributes:
        source: ``built-in``, a policy file's path, or ``PATH [tool.tensorsafe]`` (a pyproject table).
        allow: Imports allowed beyond the built-in allowlist (``module:name``).
        benign: Imports marked benign beyond the built-in list.
        limits: Safetensors header limits set to other values than the defaults: (name, value, default).
        allow_unscanned: Files that no reader identifies pass (never one with a model extension).
        allow_empty: A path that yields no files is not an error.
        inside_scanned_path: The policy's file lies inside one of the scanned paths.
    """

    source: str = "built-in"
    allow: tuple[str, ...] = ()
    benign: tuple[str, ...] = ()
    limits: tuple[tuple[str, int, int], ...] = ()
    allow_unscanned: bool = False
    allow_empty: bool = False
    inside_scanned_path: bool = False

    @property
    def loosened(self) -> dict:
        """What the policy changes, in the JSON and SARIF shape."""
        return {"allow": list(self.allow), "benign": list(self.benign),
                "limits": {name: {"value": value, "default": default} for name, value, default in self.limits},
                "allow_unscanned": self.allow_unscanned, "allow_empty": self.allow_empty}

    def to_json(self) -> dict:
        return {"source": self.source, "loosened": self.loosened, "inside_scanned_path": self.inside_scanned_path}

    def summary(self) -> str:
        """One line: ``policy: SOURCE (allows 2 extra imports: a:b, c:d; ...)``."""
        parts = []
        if self.allow:
            parts.append(f"allows {_count(self.allow, 'extra import')}: {', '.join(self.allow)}")
        if self.benign:
            parts.append(f"marks {_count(self.benign, 'extra import')} benign: {', '.join(self.benign)}")
        if self.limits:
            parts.append("header limits " + ", ".join(f"{n}={v} (default {d})" for n, v, d in self.limits))
        if self.allow_unscanned:
            parts.append("lets unscanned non-model files pass")
        if self.allow_empty:
            parts.append("lets paths with no files pass")
        where = " [inside a scanned path]" if self.inside_scanned_path else ""
        return f"policy: {printable(self.source)}{where} ({'; '.join(parts) or 'nothing loosened'})"


def _count(items: tuple, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


@dataclass
class Report:
    """What :func:`tensorsafe.scan` and :func:`tensorsafe.validate` return: one result per file.

    Attributes:
        files: One result per file, in a stable order.
        findings: Every finding of every file (a property).
        verdict: ``clean``, ``fail`` (a finding fails the policy) or ``error`` (a file could not be judged).
        exit_code: 0, 1 or 2, as the command line exits.
        clean: ``True`` when the verdict is ``clean``.
        policy: Which policy judged the files and what it loosened.
    """

    files: list[FileResult] = field(default_factory=list)
    policy: PolicyInfo = field(default_factory=PolicyInfo)

    @property
    def findings(self) -> list[Finding]:
        return [f for fr in self.files for f in fr.findings]

    @property
    def verdict(self) -> str:
        return verdict_of(self.findings)

    @property
    def exit_code(self) -> int:
        return {"clean": EXIT_CLEAN, "fail": EXIT_POLICY_FAILURE, "error": EXIT_UNREADABLE}[self.verdict]

    @property
    def clean(self) -> bool:
        return self.verdict == "clean"

    def extend(self, other: "Report") -> None:
        self.files.extend(other.files)
