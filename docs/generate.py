"""Regenerate the reference pages from the code, so they cannot drift: ``python docs/generate.py``.

tests/test_docs.py fails when a committed page differs from what this script writes.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from tensorsafe.cli.main import COMMANDS, command_parser, top_parser
from tensorsafe.pickles.policy import ALLOWED, BENIGN, DANGEROUS_MODULES, DANGEROUS_NAMES
from tensorsafe.rules import RULES, Rule

DOCS = Path(__file__).parent

RULE_GROUPS = {
    "PK-I": "Pickle imports",
    "PK-C": "What a pickle does with its imports",
    "PK-S": "Pickle structure",
    "PK-L": "Pickle limits",
    "PK-A": "Allocation bombs: what a pickle makes its loader allocate",
    "ZIP-": "Zip containers",
    "ARC-": "Other archives and compression",
    "NPY-": "numpy files",
    "TORCH-": "Legacy torch files",
    "JOBLIB-": "joblib files",
    "IO-": "Reading files",
    "HUB-": "Hugging Face Hub",
    "SCAN-": "Identification: what a file is, or why it was not judged",
    "GGUF-": "GGUF (llama.cpp) files",
    "TPL-": "Chat templates in tokenizer configs and template files",
    "KERAS-": "Keras models (.keras, legacy HDF5)",
    "ONNX-": "ONNX models",
    "ST-F": "safetensors format errors (the reference reader refuses the file)",
    "ST-P": "safetensors policy findings (the reference accepts the file; our limits do not)",
    "ST-A": "safetensors advisories",
    "ST-E": "safetensors check failures",
    "ST-D": "safetensors deep check (--deep)",
}
"""Section of the rules page for each rule-id prefix (the id without its number)."""

OUTCOME_TEXT = {"fail": "fails the check (exit code 1)", "error": "the file could not be judged (exit code 2)",
                "warn": "reported, does not fail the check", "info": "advisory, does not fail the check"}


def rule_prefix(rule_id: str) -> str:
    return re.sub(r"\d+$", "", rule_id)


def rule_anchor(rule_id: str) -> str:
    return rule_id.lower()


def _rule_section(r: Rule) -> list[str]:
    return [f"### {r.id} {r.name} {{#{rule_anchor(r.id)}}}", "",
            f"**{r.outcome.value}**: {OUTCOME_TEXT[r.outcome.value]}; severity **{r.severity.value}**.", "",
            f"**What it means.** {r.summary}", "",
            f"**What to do.** {r.help}", ""]


def rules_page() -> str:
    lines = ["# Rules", "",
             "Every finding names one of these rules by a stable id. Outcome `fail` gives exit code 1, `error`",
             "exit code 2 (the file could not be read or fully parsed: never clean), `warn` and `info` do not",
             "fail. Text, JSON and SARIF output carry the id; the SARIF rule's help is the text below.",
             "This page is generated from `tensorsafe/rules.py` by `docs/generate.py`.", "",
             "| id | name | outcome | severity |", "| --- | --- | --- | --- |"]
    lines += [f"| [{r.id}](#{rule_anchor(r.id)}) | {r.name} | {r.outcome.value} | {r.severity.value} |"
              for r in RULES.values()]
    lines.append("")
    groups: dict[str, list[Rule]] = {}
    for r in RULES.values():
        groups.setdefault(rule_prefix(r.id), []).append(r)
    for prefix, rules in groups.items():
        lines += [f"## {RULE_GROUPS.get(prefix, prefix.rstrip('-') + ' rules')}", ""]
        for r in rules:
            lines += _rule_section(r)
    return "\n".join(lines)


def allowlist_page() -> str:
    lines = ["# Built-in policy tables", "", "Generated from `tensorsafe/pickles/policy.py` by `docs/generate.py`.",
             "Anything in none of these tables is `unknown` and fails (fail closed).", "",
             "## Allowed", "", "| import | why |", "| --- | --- |"]
    lines += [f"| `{m}.{n}` | {why} |" for (m, n), why in sorted(ALLOWED.items())]
    lines += ["", "## Benign (reported, not failed)", "",
              "`invocable: no` means calling the class with pickle-supplied arguments fails the check (PK-C02).", "",
              "| import | why | invocable |", "| --- | --- | --- |"]
    lines += [f"| `{m}.{n}` | {why} | {'yes' if inv else 'no'} |" for (m, n), (why, inv) in sorted(BENIGN.items())]
    lines += ["", "## Dangerous modules (any attribute inside them)", "", "| module | what it can do |", "| --- | --- |"]
    lines += [f"| `{m}` | {why} |" for m, why in sorted(DANGEROUS_MODULES.items())]
    lines += ["", "## Dangerous names", "", "| import | what it can do |", "| --- | --- |"]
    lines += [f"| `{m}.{n}` | {why} |" for (m, n), why in sorted(DANGEROUS_NAMES.items())]
    return "\n".join(lines) + "\n"


def cli_commands() -> list[tuple[str, ...]]:
    """``()`` for ``tensorsafe`` itself, then each command, in the order ``tensorsafe --help`` lists them."""
    return [(), *((name,) for name in COMMANDS)]


def cli_help(args: tuple[str, ...], columns: int = 100) -> str:
    """``tensorsafe [COMMAND] --help`` as a terminal ``columns`` wide shows it."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)  # argparse wraps help to $COLUMNS
    try:
        return (command_parser(args[0])[0] if args else top_parser()).format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def cli_page() -> str:
    lines = ["# Command line", "",
             "Exit codes, for every command: 0 clean, 1 a finding fails the policy, 2 a file could not be",
             "read or parsed, or bad usage. Rule ids in the output are explained in [Rules](rules.md).", "",
             "This page is generated from the command line's help by `docs/generate.py`, so it matches",
             "`tensorsafe COMMAND --help` exactly.", ""]
    for args in cli_commands():
        title = " ".join(["tensorsafe", *args])
        lines += [f"## `{title}`", "", "```text", cli_help(args).rstrip(), "```", ""]
    return "\n".join(lines)


PAGES = {"rules.md": rules_page, "allowlist.md": allowlist_page, "cli.md": cli_page}


def main() -> int:
    for name, make in PAGES.items():
        (DOCS / name).write_text(make(), encoding="utf-8")
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
