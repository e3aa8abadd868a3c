"""Regenerate the reference pages from the code, so they cannot drift: ``python docs/generate.py``.

tests/test_docs.py fails when a committed page differs from what this script writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from tensorsafe.cli import main as cli_main
from tensorsafe.pickles.policy import ALLOWED, BENIGN, DANGEROUS_MODULES, DANGEROUS_NAMES
from tensorsafe.rules import RULES

DOCS = Path(__file__).parent


def rules_page() -> str:
    lines = ["# Rules", "", "Every finding names one of these rules. Outcome `fail` gives exit code 1, `error` exit",
             "code 2 (the file could not be read or fully parsed: never clean), `warn` and `info` do not fail.",
             "This page is generated from `tensorsafe/rules.py` by `docs/generate.py`.", "",
             "| id | name | outcome | severity | what it means | what to do |", "| --- | --- | --- | --- | --- | --- |"]
    for r in RULES.values():
        lines.append(f"| {r.id} | {r.name} | {r.outcome.value} | {r.severity.value} | {r.summary} | {r.help} |")
    return "\n".join(lines) + "\n"


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


def cli_page() -> str:
    runner = CliRunner()
    lines = ["# Command line", "", "Generated from the click help by `docs/generate.py`.", ""]
    for args in ([], *[[name] for name in sorted(cli_main.commands)]):
        out = runner.invoke(cli_main, [*args, "--help"], prog_name="tensorsafe", terminal_width=100).output
        title = " ".join(["tensorsafe", *args])
        lines += [f"## `{title}`", "", "```text", out.rstrip(), "```", ""]
    return "\n".join(lines)


PAGES = {"rules.md": rules_page, "allowlist.md": allowlist_page, "cli.md": cli_page}


def main() -> int:
    for name, make in PAGES.items():
        (DOCS / name).write_text(make(), encoding="utf-8")
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
