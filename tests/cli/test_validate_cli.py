"""``tensorsafe validate`` from the command line: exit codes, --json, --sarif, limits, policy files."""
from __future__ import annotations

import json

import pytest
from tests.cli_runner import invoke

from tests.st_build import build, model


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes(model([("w", "F32", (2, 3)), ("b", "F32", (3,))], {"format": "pt"}))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(build('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],'
                          '"data_offsets":[0,1]}}', b"x"))
    policy = tmp_path / "named.safetensors"
    policy.write_bytes(model([("../../etc/passwd", "U8", (1,))]))
    return {"good": good, "bad": bad, "policy": policy, "dir": tmp_path}


def _run(*args):
    return invoke([str(a) for a in args])


def test_clean_file_exits_0(files):
    result = _run("validate", files["good"])
    assert result.exit_code == 0, result.output
    assert "CLEAN" in result.output


def test_format_error_exits_2(files):
    result = _run("validate", files["bad"])
    assert result.exit_code == 2
    assert "ST-F16" in result.output and "invalid offset" in result.output


def test_policy_finding_exits_1(files):
    result = _run("validate", files["policy"])
    assert result.exit_code == 1
    assert "ST-P05" in result.output


def test_json_output(files):
    result = _run("validate", files["dir"], "--json")
    assert result.exit_code == 1  # a policy failure wins over a format error
    doc = json.loads(result.output)
    rules = {f["rule_id"] for fr in doc["files"] for f in fr["findings"]}
    assert {"ST-F16", "ST-P05"} <= rules
    assert {fr["kind"] for fr in doc["files"]} == {"safetensors"}
    assert doc["exit_code"] == 1


def test_sarif_output(files):
    result = _run("validate", files["bad"], "--sarif")
    doc = json.loads(result.output)
    run = doc["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["ST-F16"]
    assert run["results"][0]["ruleId"] == "ST-F16" and run["results"][0]["level"] == "error"


def test_limit_option(files):
    result = _run("validate", files["good"], "--limit", "max_tensors=1")
    assert result.exit_code == 1 and "ST-P02" in result.output
    result = _run("validate", files["good"], "--limit", "max-rank=0")
    assert result.exit_code == 1 and "ST-P03" in result.output


@pytest.mark.parametrize("value", ["nope=1", "max_tensors", "max_tensors=x", "max_tensors=-1"])
def test_bad_limit_is_a_usage_error(files, value):
    result = _run("validate", files["good"], "--limit", value)
    assert result.exit_code == 2
    assert "tensorsafe: error:" in result.output and "Traceback" not in result.output


def test_policy_file_limits(files, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[limits]\nmax_tensors = 1\n")
    result = _run("validate", files["good"], "--policy", policy)
    assert result.exit_code == 1 and "ST-P02" in result.output


def test_policy_file_unknown_limit(files, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[limits]\nmax_tensor = 1\n")
    result = _run("validate", files["good"], "--policy", policy)
    assert result.exit_code == 2 and "unknown limit 'max_tensor'" in result.output


def test_pyproject_limits_apply(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / "pyproject.toml").write_text("[tool.tensorsafe.limits]\nmax_tensors = 1\n")
    path = tmp_path / "m.safetensors"
    path.write_bytes(model([("a", "U8", (1,)), ("b", "U8", (1,))]))
    assert _run("validate", path).exit_code == 0  # the pyproject next to the file is not the run's policy
    assert _run("scan", path).exit_code == 0
    monkeypatch.chdir(tmp_path)  # the folder the command runs in: its pyproject applies
    assert _run("validate", path).exit_code == 1
    assert _run("scan", path).exit_code == 1  # scan applies the same header limits
    assert _run("validate", path, "--limit", "max_tensors=5").exit_code == 0


def test_deep_option(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "nan.safetensors"
    save_file({"x": np.array([1.0, np.nan, np.inf, -np.inf], np.float32), "i": np.arange(3)}, path)
    result = _run("validate", path, "--deep", "--json")
    assert result.exit_code == 0
    findings = json.loads(result.output)["files"][0]["findings"]
    d01 = [f for f in findings if f["rule_id"] == "ST-D01"]
    assert len(d01) == 1 and "1 NaN and 2 infinite" in d01[0]["message"]
    import hashlib

    d02 = [f for f in findings if f["rule_id"] == "ST-D02"]
    assert d02[0]["trigger"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_scan_reports_header_rules_in_sarif(files):
    result = _run("scan", files["dir"], "--sarif")
    doc = json.loads(result.output)
    ids = {r["ruleId"] for r in doc["runs"][0]["results"]}
    assert {"ST-F16", "ST-P05"} <= ids and result.exit_code == 1


def test_missing_file_is_unreadable(tmp_path):
    result = _run("validate", tmp_path / "nope.safetensors")
    assert result.exit_code == 2 and "IO-01" in result.output


def test_help_lists_limits():
    result = _run("validate", "--help")
    assert result.exit_code == 0
    for name in ("max_tensors", "max_rank", "max_dim", "max_name_bytes", "max_json_depth", "header_warn_bytes"):
        assert name in result.output
