"""The repository's own tooling: CI runs the README's commands as written, benchmarks fail on a
missed target, lint and type settings live in pyproject.toml."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "README.md's Quick start has no bash block"
    return block.group(1).strip().splitlines()


def test_ci_runs_the_readme_commands_as_written():
    commands = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--commands"], capture_output=True, text=True,
                              check=True, cwd=ROOT).stdout.splitlines()
    assert commands == _readme_quickstart()
    assert len(commands) == 2 and "python -m pytest" in commands[1]
    assert all(" -e " not in c and "--editable" not in c for c in commands), "a newcomer's install is not editable"
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv" in script and "ruff check" in script and "mypy" in script


def test_lint_and_type_settings_are_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tool = config["tool"]
    assert tool["ruff"]["lint"]["select"] and tool["mypy"]["disallow_untyped_defs"] is True
    assert "tensorsafe/__init__.py" in tool["mypy"]["files"]
    assert {"ruff", "mypy"} <= {re.split(r"[<>=\[ ]", d)[0] for d in config["project"]["optional-dependencies"]["lint"]}
    assert "py.typed" in tool["setuptools"]["package-data"]["tensorsafe"]


@pytest.fixture(scope="module")
def finish():
    spec = importlib.util.spec_from_file_location("bench_targets", ROOT / "benchmarks" / "_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.finish


def test_a_missed_target_fails_the_benchmark(finish, capsys):
    assert finish([("a", True), ("b: 2.1x (target >= 3x)", False)], quick=False) == 1
    assert "TARGET MISSED" in capsys.readouterr().out


def test_met_targets_pass(finish):
    assert finish([("a", True), ("b", True)], quick=False) == 0


def test_a_quick_run_reports_targets_without_enforcing_them(finish, capsys):
    assert finish([("b", False)], quick=True) == 0
    assert "not enforced" in capsys.readouterr().out


def test_a_failed_run_fails_even_a_quick_run(finish):
    assert finish([("b", True)], quick=True, failures=["diffusers crashed"]) == 1
