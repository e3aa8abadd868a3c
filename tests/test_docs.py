"""The reference pages are generated from the code; a stale page fails here (regenerate them)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["rules.md", "allowlist.md", "cli.md"])
def test_generated_page_is_current(page):
    gen = _generator()
    assert (DOCS / page).read_text(encoding="utf-8") == gen.PAGES[page](), \
        f"docs/{page} is stale: run `python docs/generate.py`"


def test_every_rule_has_a_reason_and_help():
    from tensorsafe.rules import RULES

    for r in RULES.values():
        assert r.summary.endswith(".") and r.help, r.id
