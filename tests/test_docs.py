"""The documentation site: generated pages are current, and every rule, CLI option, public name and
page is documented and reachable (``mkdocs build --strict`` in .ci/run checks links and rendering)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(page: str, level: str) -> dict[str, str]:
    """Heading text -> the text up to the next heading of the same level."""
    parts = re.split(rf"^{level} (.+)$", page, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("page", ["rules.md", "allowlist.md", "cli.md"])
def test_generated_page_is_current(page):
    gen = _load("generate")
    assert (DOCS / page).read_text(encoding="utf-8") == gen.PAGES[page](), \
        f"docs/{page} is stale: run `python docs/generate.py`"


def test_every_rule_has_a_reason_and_help():
    from tensorsafe.rules import RULES

    for r in RULES.values():
        assert r.summary.endswith(".") and r.help, r.id


def test_every_rule_is_on_the_rules_page_with_its_meaning_and_fix():
    from tensorsafe.rules import RULES

    sections = _sections((DOCS / "rules.md").read_text(encoding="utf-8"), "###")
    for r in RULES.values():
        heading = f"{r.id} {r.name} {{#{r.id.lower()}}}"
        assert heading in sections, f"{r.id} has no section on docs/rules.md"
        body = sections[heading]
        assert f"**What it means.** {r.summary}" in body, r.id
        assert f"**What to do.** {r.help}" in body, r.id
        assert f"**{r.outcome.value}**" in body, r.id


def test_every_cli_command_and_option_is_on_the_cli_page():
    from tensorsafe.cli.main import COMMANDS, command_parser, top_parser

    sections = _sections((DOCS / "cli.md").read_text(encoding="utf-8"), "##")
    parsers = [((), top_parser()), *(((name,), command_parser(name)[0]) for name in COMMANDS)]
    seen = 0
    for path, parser in parsers:
        title = "`" + " ".join(["tensorsafe", *path]) + "`"
        assert title in sections, f"{title} has no section on docs/cli.md"
        for action in parser._actions:  # argparse keeps no public list of a parser's options
            for opt in action.option_strings:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", sections[title]), \
                    f"{title}: option {opt} is missing from docs/cli.md"
                seen += 1
    assert seen > 20  # the walk found the real commands


def test_every_public_name_is_on_the_api_page():
    import tensorsafe
    from tensorsafe import errors

    page = (DOCS / "api.md").read_text(encoding="utf-8")
    for name in tensorsafe.__all__:
        if name == "__version__":
            continue
        if isinstance(getattr(tensorsafe, name), type) and issubclass(getattr(tensorsafe, name), Exception):
            assert "::: tensorsafe.errors" in page and name in page, f"error {name} missing from docs/api.md"
        else:
            assert f"tensorsafe.{name}" in page, f"tensorsafe.{name} is missing from docs/api.md"
    documented_errors = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)
                         and v.__module__ == errors.__name__}
    tree = page[page.index("TensorsafeError"):page.index("::: tensorsafe.errors")]
    for name in documented_errors:
        assert name in tree, f"{name} is missing from the error tree on docs/api.md"


def _nav_pages() -> list[str]:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    nav = re.split(r"^\S", nav, maxsplit=1, flags=re.M)[0]  # up to the next top-level key
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages()
    assert "index.md" in nav and "rules.md" in nav
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages, "mkdocs.yml's nav and the pages in docs/ differ"


def test_hook_drops_sphinx_roles_but_keeps_the_code():
    hooks = _load("hooks")
    assert hooks.on_page_content("see :func:<code>run_many</code> and :class:<code>Report</code>") == \
        "see <code>run_many</code> and <code>Report</code>"
