"""Policy belongs to whoever runs the scan: ``--policy FILE`` or the configuration of the folder the
command runs in, never a file inside or near a scanned path; every report names the policy it applied."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from tests.cli_runner import invoke

import tensorsafe
from tensorsafe.batch import collect, scan_many
from tensorsafe.errors import PolicyFileError
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tensorsafe.policy_file import cwd_config, load_policy, load_policy_file
from tests import pickle_ops as op
from tests.st_build import model

CUSTOM = op.proto(2) + op.global_("mylab.schedules", "Cosine") + op.EMPTY_TUPLE + op.REDUCE + op.STOP
ALLOW_COSINE = '[tool.tensorsafe]\nallow = ["mylab.schedules:Cosine"]\n'
SARIF_SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def upload(tmp_path) -> Path:
    """An uploaded repository whose own pyproject allows the unknown import its pickle uses."""
    repo = tmp_path / "upload"
    (repo / ".git").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(ALLOW_COSINE)
    (repo / "tensorsafe.toml").write_text('allow = ["mylab.schedules:Cosine"]\n')
    (repo / "weights").mkdir()
    (repo / "weights" / "custom.pkl").write_bytes(CUSTOM)
    return repo


@pytest.fixture
def gate(tmp_path) -> Path:
    """The gate's own repository, whose pyproject allows the same import."""
    repo = tmp_path / "gate"
    (repo / ".git").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(ALLOW_COSINE)
    return repo


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tensorsafe.cli.main", *map(str, args)], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=120)


def _verdict(report, name: str) -> str:
    return next(fr.verdict for fr in report.files if fr.path.endswith(name))


# -- a scanned folder's configuration is never policy ------------------------------------------------
def test_the_cli_ignores_the_scanned_folders_pyproject(upload, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _cli("scan", upload / "weights" / "custom.pkl", cwd=elsewhere)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PK-I02" in result.stdout and "policy: built-in (nothing loosened)" in result.stdout


def test_the_library_ignores_the_scanned_folders_pyproject(upload, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    report = tensorsafe.scan(upload)
    assert _verdict(report, "custom.pkl") == "fail" and report.exit_code == 1
    assert report.policy.source == "built-in" and report.policy.allow == ()
    batch = collect(scan_many(upload, jobs=2, ordered=True))
    assert _verdict(batch, "custom.pkl") == "fail" and batch.policy.source == "built-in"


def test_the_library_ignores_even_the_working_folders_pyproject(upload, gate, monkeypatch):
    """The library reads no policy by itself: a service passes its own."""
    monkeypatch.chdir(gate)
    assert _verdict(tensorsafe.scan(upload / "weights"), "custom.pkl") == "fail"
    assert _verdict(collect(scan_many(upload / "weights", jobs=2)), "custom.pkl") == "fail"
    from tensorsafe.hub.scan import _default_policy

    assert _default_policy() is DEFAULT_POLICY


def test_a_policy_file_next_to_the_model_is_ignored_when_scanning_dot_from_a_parent(upload, tmp_path,
                                                                                    monkeypatch):
    (tmp_path / ".git").mkdir()  # the parent is the gate's repository: the lookup stops there
    monkeypatch.chdir(tmp_path)
    result = invoke(["scan", "."])
    assert result.exit_code == 1
    assert "custom.pkl: FAIL" in result.output and "policy: built-in" in result.output


def test_the_working_folder_is_looked_up_no_higher_than_its_git_root(tmp_path):
    (tmp_path / "pyproject.toml").write_text(ALLOW_COSINE)
    inner = tmp_path / "inner"
    (inner / ".git").mkdir(parents=True)
    (inner / "sub").mkdir()
    assert cwd_config(inner / "sub").source == "built-in"
    (inner / "pyproject.toml").write_text(ALLOW_COSINE)
    assert cwd_config(inner / "sub").source == f"{inner / 'pyproject.toml'} [tool.tensorsafe]"


# -- the run's own configuration applies and is named --------------------------------------------------
def test_the_working_folders_pyproject_applies_and_is_named(upload, gate):
    target = upload / "weights" / "custom.pkl"
    text = _cli("scan", target, cwd=gate)
    assert text.returncode == 0, text.stdout + text.stderr
    source = f"{gate / 'pyproject.toml'} [tool.tensorsafe]"
    assert f"policy: {source} (allows 1 extra import: mylab.schedules:Cosine)" in text.stdout
    doc = json.loads(_cli("scan", "--json", target, cwd=gate).stdout)
    assert doc["policy"] == {"source": source, "inside_scanned_path": False,
                             "loosened": {"allow": ["mylab.schedules:Cosine"], "benign": [], "limits": {},
                                          "allow_unscanned": False, "allow_empty": False}}
    log = json.loads(_cli("scan", "--sarif", target, cwd=gate).stdout)
    assert log["runs"][0]["properties"]["policy"] == doc["policy"]
    assert not list(jsonschema.Draft4Validator(SARIF_SCHEMA).iter_errors(log))


def test_a_policy_file_is_applied_and_named(upload, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('allow = ["mylab.schedules:Cosine"]\nbenign = ["mylab.callbacks:Saver"]\n'
                      "[limits]\nmax_tensors = 5\n")
    result = invoke(["scan", "--json", "--policy", str(policy), str(upload / "weights")])
    assert result.exit_code == 0
    assert json.loads(result.output)["policy"] == {
        "source": str(policy), "inside_scanned_path": False,
        "loosened": {"allow": ["mylab.schedules:Cosine"], "benign": ["mylab.callbacks:Saver"],
                     "limits": {"max_tensors": {"value": 5, "default": 100_000}},
                     "allow_unscanned": False, "allow_empty": False}}


def test_a_config_inside_a_scanned_path_is_applied_and_flagged(gate):
    (gate / "custom.pkl").write_bytes(CUSTOM)
    result = _cli("scan", "--json", ".", cwd=gate)
    doc = json.loads(result.stdout)
    assert doc["policy"]["inside_scanned_path"] is True
    assert "[inside a scanned path]" in _cli("scan", "custom.pkl", ".", cwd=gate).stdout


def test_the_library_applies_a_policy_it_is_given(upload):
    policy_file = upload.parent / "hub-policy.toml"
    policy_file.write_text('allow = ["mylab.schedules:Cosine"]\n')
    for policy in (load_policy(policy_file), load_policy_file(policy_file)):
        report = tensorsafe.scan(upload / "weights", policy=policy)
        assert report.clean and report.policy.source == str(policy_file)
        assert report.policy.allow == ("mylab.schedules:Cosine",)
        batch = collect(scan_many(upload / "weights", policy, jobs=2), policy)
        assert batch.clean and batch.policy.source == str(policy_file)


def test_a_loosened_policy_is_never_reported_as_the_built_in_one(upload):
    report = tensorsafe.scan(upload / "weights", policy=DEFAULT_POLICY.extended(["mylab.schedules:Cosine"]))
    assert report.clean
    assert report.policy.source != "built-in" and report.policy.allow == ("mylab.schedules:Cosine",)


# -- header limits follow the same rule ----------------------------------------------------------------
def test_header_limits_come_from_the_runs_policy_not_the_files_folder(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[tool.tensorsafe]\n[tool.tensorsafe.limits]\nmax_tensors = 100000000\n")
    path = repo / "m.safetensors"
    path.write_bytes(model([("a", "U8", (1,)), ("b", "U8", (1,))]))
    strict = tmp_path / "strict.toml"
    strict.write_text("[limits]\nmax_tensors = 1\n")
    monkeypatch.chdir(tmp_path)
    assert tensorsafe.scan(path, policy=load_policy(strict)).exit_code == 1
    assert tensorsafe.validate(path, limits=load_policy_file(strict).header_limits()).exit_code == 1
    (repo / "pyproject.toml").write_text("[tool.tensorsafe.limits]\nmax_tensors = 1\n")
    assert tensorsafe.scan(path).exit_code == 0 and tensorsafe.validate(path).exit_code == 0
    assert invoke(["validate", str(path)]).exit_code == 0
    result = invoke(["validate", "--json", "--policy", str(strict), str(path)])
    assert result.exit_code == 1
    assert json.loads(result.output)["policy"]["loosened"]["limits"] == {"max_tensors": {"value": 1,
                                                                                          "default": 100_000}}


# -- the switches ---------------------------------------------------------------------------------------
def test_allow_unscanned_is_a_validated_policy_switch(tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text("allow_unscanned = true\n")
    config = load_policy_file(policy)
    assert config.allow_unscanned is True and config.policy().allow_unscanned is True
    assert config.policy().extended(["mylab.schedules:Cosine"]).allow_unscanned is True
    assert DEFAULT_POLICY.allow_unscanned is False and load_policy_file(tmp_path / "p.toml").policy() is not DEFAULT_POLICY
    policy.write_text('allow_unscanned = "yes"\n')
    with pytest.raises(PolicyFileError, match="allow_unscanned"):
        load_policy_file(policy)
    result = invoke(["scan", "--policy", str(policy), str(tmp_path)])
    assert result.exit_code == 2 and "allow_unscanned" in result.output


def test_allow_unscanned_and_allow_empty_flags_reach_the_scan_and_the_report(tmp_path, monkeypatch):
    from tensorsafe import api as scanner
    seen = {}
    real = scanner.scan

    def spy(paths, policy=None, limits=None, **kwargs):
        seen.update(policy=policy, **kwargs)
        return real(paths, policy, limits, **kwargs)

    monkeypatch.setattr(scanner, "scan", spy)
    (tmp_path / "a.pkl").write_bytes(op.proto(2) + op.EMPTY_DICT + op.STOP)
    monkeypatch.chdir(tmp_path)
    result = invoke(["scan", "--json", "--allow-unscanned", "--allow-empty", "a.pkl"])
    assert seen["policy"].allow_unscanned is True and seen["allow_empty"] is True
    doc = json.loads(result.output)
    assert doc["policy"]["loosened"]["allow_unscanned"] is True and doc["policy"]["loosened"]["allow_empty"] is True
    assert doc["policy"]["source"] == "built-in, with command-line options"
    text = invoke(["scan", "--allow-unscanned", "a.pkl"]).output
    assert "lets unscanned non-model files pass" in text
    invoke(["scan", "a.pkl"])
    assert seen["policy"].allow_unscanned is False and seen["allow_empty"] is False


def test_allow_empty_reaches_the_batch_path_too(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.pkl").write_bytes(op.proto(2) + op.EMPTY_DICT + op.STOP)
    paths = [str(tmp_path / "empty"), str(tmp_path / "a.pkl")]
    for jobs in ("1", "2"):
        strict = invoke(["scan", "--jobs", jobs, *paths])
        loose = invoke(["scan", "--json", "--jobs", jobs, "--allow-empty", *paths])
        assert strict.exit_code == 2, (jobs, strict.output)
        assert loose.exit_code == 0, (jobs, loose.output)
        assert json.loads(loose.output)["policy"]["loosened"]["allow_empty"] is True
