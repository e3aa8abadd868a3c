"""``tensorsafe scan`` as users and CI gates see it: exit codes, text, JSON, SARIF, policy files."""
from __future__ import annotations

import json

from tests.cli_runner import invoke

from tests import pickle_ops as op

SYSTEM = op.call_system()
BENIGN = op.proto(2) + op.EMPTY_DICT + op.STOP
CUSTOM = op.proto(2) + op.global_("mylab.schedules", "Cosine") + op.EMPTY_TUPLE + op.REDUCE + op.STOP


def _files(tmp_path, **files: bytes):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_exit_codes(tmp_path):
    _files(tmp_path, clean=BENIGN, evil=SYSTEM, broken=op.proto(2) + b"\xff")
    assert invoke(["scan", str(tmp_path / "clean")]).exit_code == 0
    assert invoke(["scan", str(tmp_path / "evil")]).exit_code == 1
    assert invoke(["scan", str(tmp_path / "broken")]).exit_code == 2
    assert invoke(["scan", str(tmp_path)]).exit_code == 1
    assert invoke(["scan", str(tmp_path / "missing")]).exit_code == 2
    assert invoke(["scan"]).exit_code == 2
    assert invoke(["scan", "--max-depth", "-1", str(tmp_path)]).exit_code == 2


def test_text_output_names_file_rule_and_place(tmp_path):
    _files(tmp_path, **{"model.png": SYSTEM})
    result = invoke(["scan", str(tmp_path / "model.png")])
    assert "model.png: FAIL" in result.output
    assert "PK-I01 fail/critical [@2]: imports os.system" in result.output
    assert result.output.strip().endswith("-> FAIL")


def test_json_schema(tmp_path):
    _files(tmp_path, evil=SYSTEM, clean=BENIGN)
    result = invoke(["scan", "--json", str(tmp_path)])
    doc = json.loads(result.output)
    assert doc["schema_version"] == 1 and doc["verdict"] == "fail" and doc["exit_code"] == 1
    by_name = {f["path"].rsplit("/", 1)[-1]: f for f in doc["files"]}
    evil = by_name["evil"]
    assert evil["verdict"] == "fail" and evil["kind"] == "pickle" and evil["pickles"] == 1
    finding = evil["findings"][0]
    assert finding == {"rule_id": "PK-I01", "rule": "dangerous-import", "outcome": "fail", "severity": "critical",
                       "message": finding["message"], "trigger": "os.system",
                       "location": {"members": [], "offset": 2}}
    assert {"module": "os", "name": "system", "tier": "dangerous", "count": 1} in evil["imports"]
    assert by_name["clean"]["findings"] == []


def test_sarif_output(tmp_path, monkeypatch):
    _files(tmp_path, **{"a.ckpt": SYSTEM})
    monkeypatch.chdir(tmp_path)
    result = invoke(["scan", "--sarif", "a.ckpt"])
    assert result.exit_code == 1
    log = json.loads(result.output)
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["PK-I01"]
    assert rules[0]["help"]["text"] and rules[0]["defaultConfiguration"]["level"] == "error"
    res = run["results"][0]
    assert res["ruleId"] == "PK-I01" and res["level"] == "error" and res["ruleIndex"] == 0
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "a.ckpt"
    assert res["locations"][0]["physicalLocation"]["region"] == {"byteOffset": 2}


def test_output_file(tmp_path):
    _files(tmp_path, evil=SYSTEM)
    out = tmp_path / "report.sarif"
    result = invoke(["scan", "--sarif", "-o", str(out), str(tmp_path / "evil")])
    assert result.exit_code == 1
    assert json.loads(out.read_text())["runs"][0]["results"]


def test_policy_file_extends_the_allowlist(tmp_path):
    _files(tmp_path, custom=CUSTOM)
    assert invoke(["scan", str(tmp_path / "custom")]).exit_code == 1
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["mylab.schedules:Cosine"]\n')
    assert invoke(["scan", "--policy", str(policy), str(tmp_path / "custom")]).exit_code == 0


def test_policy_file_refuses_dangerous_entries(tmp_path):
    _files(tmp_path, evil=SYSTEM)
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["os:system"]\n')
    result = invoke(["scan", "--policy", str(policy), str(tmp_path / "evil")])
    assert result.exit_code == 2
    assert "refusing to allow 'os:system'" in result.output and "policy.toml" in result.output


def test_bad_policy_file_is_a_one_line_error(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("allow = [1, 2\n")
    result = invoke(["scan", "--policy", str(policy), str(tmp_path)])
    assert result.exit_code == 2
    assert "not valid TOML" in result.output and "Traceback" not in result.output


def test_pyproject_table_of_the_scanned_repository_is_not_policy(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[tool.tensorsafe]\nallow = ["mylab.schedules.Cosine"]\n')
    (repo / "weights").mkdir()
    (repo / "weights" / "custom.bin").write_bytes(CUSTOM)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert invoke(["scan", str(repo / "weights" / "custom.bin")]).exit_code == 1
    monkeypatch.chdir(repo)  # run from the repository: its configuration is the gate's own
    assert invoke(["scan", str(repo / "weights" / "custom.bin")]).exit_code == 0


def test_explain_prints_the_decompiled_pickle(tmp_path):
    _files(tmp_path, evil=SYSTEM)
    result = invoke(["scan", "--explain", str(tmp_path / "evil")])
    assert result.exit_code == 1
    assert "decompiled by fickling" in result.output
    assert "system('true')" in result.output


def test_verbose_lists_imports_and_clean_files(fixtures_dir):
    result = invoke(["scan", "-v", str(fixtures_dir)])
    assert result.exit_code == 0
    assert "tiny-sd-legacy.pt: CLEAN (pytorch-legacy" in result.output
    assert "import torch._utils._rebuild_tensor_v2 [allowed]" in result.output


def test_timeout_is_an_error_not_clean(tmp_path):
    _files(tmp_path, big=op.proto(2) + op.EMPTY_LIST + b"K\x01a" * 200_000 + op.STOP)
    result = invoke(["scan", "--timeout", "0.001", str(tmp_path / "big")])
    assert result.exit_code == 2
    assert "IO-02" in result.output or "PK-L01" in result.output


def test_a_report_into_a_missing_folder_is_a_one_line_error(fixtures_dir, tmp_path):
    """Regression: ``-o`` into a folder that does not exist ended in a traceback and exit 1 ("a finding")."""
    target = tmp_path / "missing" / "report.json"
    result = invoke(["scan", "--json", "-o", str(target), str(fixtures_dir / "tiny-sd1.ckpt")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"tensorsafe: error: {target}: the parent folder {target.parent} does not exist; parent folders are not "
        "created, make it first"]
    assert not target.parent.exists()


def test_a_report_file_is_replaced_whole_and_leaves_nothing_beside_it(fixtures_dir, tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    result = invoke(["scan", "--json", "-o", str(target), str(fixtures_dir / "tiny-sd1.ckpt")])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["files"][0]["verdict"] == "clean"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
