"""action.yml (the composite GitHub Action): its wiring, the CLI options it uses, and its shell
steps run for real with bash, the way the runner runs them (``bash --noprofile --norc -eo pipefail``)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.cli_runner import invoke

from tests import pickle_ops as op

ROOT = Path(__file__).resolve().parents[2]
ACTION_TEXT = (ROOT / "action.yml").read_text(encoding="utf-8")
ACTION = yaml.safe_load(ACTION_TEXT)
STEPS = ACTION["runs"]["steps"]
TENSORSAFE = Path(sys.executable).with_name("tensorsafe")


def _step(step_id: str) -> dict:
    return next(s for s in STEPS if s.get("id") == step_id)


def _gate_step() -> dict:
    return next(s for s in STEPS if s.get("name") == "Fail on findings")


def test_composite_action_with_described_inputs():
    assert ACTION["runs"]["using"] == "composite"
    assert {"paths", "args", "sarif-file", "fail-on-findings", "upload-sarif"} <= set(ACTION["inputs"])
    for name, spec in ACTION["inputs"].items():
        assert spec["description"] and "default" in spec, name


def test_every_input_is_used_and_every_reference_exists():
    steps_text = yaml.safe_dump(STEPS)
    for name in ACTION["inputs"]:
        assert f"inputs.{name}" in steps_text, f"input {name!r} is never used"
    for name in re.findall(r"inputs\.([\w-]+)", ACTION_TEXT):
        assert name in ACTION["inputs"], name
    ids = {s["id"]: s for s in STEPS if "id" in s}
    for step_id, key in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", ACTION_TEXT):
        step = ids[step_id]
        assert "uses" in step or f'echo "{key}=' in step["run"], f"{step_id} does not write {key}"


def test_run_scripts_take_inputs_through_the_environment():
    """``${{ }}`` inside a script is pasted in before bash parses it: a path could inject commands."""
    for step in STEPS:
        if "run" in step:
            assert "${{" not in step["run"], step["name"]
            assert step["shell"] == "bash"


def test_upload_uses_codeql_upload_sarif():
    upload = next(s for s in STEPS if "upload-sarif" in s.get("uses", ""))
    assert upload["uses"].startswith("github/codeql-action/upload-sarif@")
    assert "inputs.upload-sarif" in upload["if"] and "steps.scan.outputs.sarif-file" in upload["with"]["sarif_file"]
    assert STEPS.index(upload) < STEPS.index(_gate_step()), "upload before failing the job"


@pytest.mark.parametrize("command", ["scan", "validate"])
def test_cli_options_in_the_action_exist(command):
    """Every option the action passes exists in ``tensorsafe <command> --help``."""
    assert command in _step("scan")["run"] and command in ACTION["inputs"]["command"]["description"]
    invocation = next(line for line in _step("scan")["run"].splitlines() if line.strip().startswith('"$TENSORSAFE"'))
    options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", invocation))
    assert {"--sarif", "--output"} <= options
    help_text = invoke([command, "--help"]).output
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text), f"{command} has no {option}"


def test_options_in_the_documented_workflows_exist():
    """`args` examples in docs/ci.md name real options of scan or validate."""
    docs = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    args = re.findall(r"args:\s*([^`\n]+)", docs)
    assert len(args) >= 3
    help_text = "".join(invoke([c, "--help"]).output for c in ("scan", "validate"))
    for line in args:
        for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", line):
            assert option in help_text, option


def _run_step(step: dict, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    script = tmp_path / "step.sh"
    script.write_text(step["run"])
    github_output = tmp_path / "github_output"
    github_output.write_text("")
    full_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GITHUB_OUTPUT": str(github_output),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), **env}
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=tmp_path,
                          env=full_env, capture_output=True, text=True, timeout=120)
    outputs = dict(line.split("=", 1) for line in github_output.read_text().splitlines() if "=" in line)
    return proc, outputs


@pytest.fixture
def workspace(tmp_path) -> Path:
    assert shutil.which("bash") and TENSORSAFE.exists()
    (tmp_path / "my models").mkdir()
    (tmp_path / "my models" / "evil.ckpt").write_bytes(op.call_system())
    (tmp_path / "clean.pkl").write_bytes(op.proto(2) + op.EMPTY_DICT + op.STOP)
    return tmp_path


def _scan_env(**overrides: str) -> dict[str, str]:
    env = {"TENSORSAFE": str(TENSORSAFE), "TS_PYTHON": sys.executable, "TS_COMMAND": "scan",
           "TS_PATHS": ".", "TS_ARGS": "", "SARIF_FILE": "tensorsafe.sarif"}
    return {**env, **overrides}


def test_scan_step_reports_findings_and_records_the_exit_code(workspace):
    proc, outputs = _run_step(_step("scan"), workspace, **_scan_env(
        TS_PATHS="  my models  \n\nclean.pkl\n", TS_ARGS="--max-depth 3\n--timeout 60", SARIF_FILE="out.sarif"))
    assert proc.returncode == 0, proc.stderr
    assert outputs == {"exit-code": "1", "sarif-file": "out.sarif"}
    results = json.loads((workspace / "out.sarif").read_text())["runs"][0]["results"]
    assert [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results] == \
        ["my%20models/evil.ckpt"]
    assert "PK-I01" in proc.stdout and "PK-I01" in (workspace / "summary.md").read_text()

    gate, _ = _run_step(_gate_step(), workspace, CODE=outputs["exit-code"])
    assert gate.returncode == 1 and "::error::" in gate.stdout


def test_scan_step_on_clean_files(workspace):
    proc, outputs = _run_step(_step("scan"), workspace, **_scan_env(TS_PATHS="clean.pkl"))
    assert proc.returncode == 0 and outputs["exit-code"] == "0"
    assert json.loads((workspace / "tensorsafe.sarif").read_text())["runs"][0]["results"] == []


@pytest.mark.parametrize(("overrides", "message"), [
    ({"TS_COMMAND": "convert"}, "command must be 'scan' or 'validate'"),
    ({"TS_ARGS": "--no-such-option"}, "wrote no SARIF report"),
])
def test_scan_step_refuses_bad_inputs(workspace, overrides, message):
    proc, _ = _run_step(_step("scan"), workspace, **_scan_env(**overrides))
    assert proc.returncode == 2 and message in proc.stdout
    assert not (workspace / "tensorsafe.sarif").exists()
