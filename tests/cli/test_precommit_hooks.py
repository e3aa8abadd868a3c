"""The pre-commit hooks in .pre-commit-hooks.yaml, run by pre-commit itself on a throwaway repository.

pre-commit installs a ``language: python`` hook by creating a virtualenv and running
``pip install .`` in a clone of the hook repository. The test keeps that real path but makes it
offline: pip gets no index, no dependency resolution and no build isolation (setuptools comes
from virtualenv's bundled wheel), and the hook finds tensorsafe's dependencies through PYTHONPATH
(this interpreter's site-packages). tensorsafe itself is the copy pip installed in the hook's venv.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from pre_commit.clientlib import load_manifest

from tensorsafe.cli.main import COMMANDS
from tests import pickle_ops as op
from tests import st_build as st

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"
SYSTEM = op.call_system()
BENIGN = op.proto(2) + op.EMPTY_DICT + op.STOP
GIT = ("git", "-c", "user.name=tensorsafe-test", "-c", "user.email=test@invalid", "-c", "commit.gpgsign=false",
       "-c", "init.defaultBranch=main")


def _hooks() -> dict[str, dict]:
    return {h["id"]: h for h in load_manifest(str(MANIFEST))}


def test_manifest_is_valid_and_uses_real_commands():
    hooks = _hooks()
    assert set(hooks) == {"tensorsafe-scan", "tensorsafe-validate", "tensorsafe-scan-all"}
    for hook in hooks.values():
        assert hook["language"] == "python"
        program, command = hook["entry"].split()
        assert program == "tensorsafe" and command in COMMANDS
        assert hook["require_serial"] is True, "one process per run: one summary, one verdict"


@pytest.mark.parametrize(("name", "scan", "validate"), [
    ("model.ckpt", True, False), ("pytorch_model.bin", True, False), ("MODEL.PT", True, False),
    ("weights.pth", True, False), ("clf.joblib", True, False), ("arrays.npz", True, False),
    ("data.pkl", True, False), ("ckpt.tar.gz", True, False), ("unet/model.safetensors", True, True),
    ("train.py", False, False), ("README.md", False, False), ("logo.png", False, False),
])
def test_files_patterns(name, scan, validate):
    hooks = _hooks()
    assert bool(re.search(hooks["tensorsafe-scan"]["files"], name)) is scan
    assert bool(re.search(hooks["tensorsafe-validate"]["files"], name)) is validate
    assert re.search(hooks["tensorsafe-scan-all"]["files"], name)  # every file


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _snapshot_of_this_checkout(dest: Path) -> str:
    """The working tree's package as a one-commit repository (pre-commit clones a `repo:` at a `rev:`)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "tensorsafe", dest / "tensorsafe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "snapshot")
    return _git(dest, "rev-parse", "HEAD")


def _offline_env(cache: Path) -> dict[str, str]:
    paths = sysconfig.get_paths()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUALENV_", "PRE_COMMIT", "GIT_"))}
    env.pop("SKIP", None)
    site = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    env.update(PRE_COMMIT_HOME=str(cache), PYTHONPATH=site,
               PIP_NO_INDEX="1", PIP_NO_DEPS="1", PIP_NO_BUILD_ISOLATION="0",  # "0": isolation off
               VIRTUALENV_SETUPTOOLS="bundle", VIRTUALENV_NO_PERIODIC_UPDATE="1",
               GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    return env


def _run_hooks(repo: Path, env: dict[str, str]) -> tuple[int, dict[str, tuple[str, str]]]:
    """Exit code, and per hook name its status line and its output."""
    proc = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    hooks: dict[str, tuple[str, str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(tensorsafe [^.]*?)\.{3,}.*?(Passed|Failed|Skipped)$", line)
        if m:
            current = m.group(1)
            hooks[current] = (m.group(2), "")
        elif current:
            hooks[current] = (hooks[current][0], hooks[current][1] + line + "\n")
    assert hooks, proc.stdout + proc.stderr
    return proc.returncode, hooks


@pytest.mark.slow
def test_hooks_fail_on_malicious_files_and_pass_on_benign_ones(tmp_path):
    rev = _snapshot_of_this_checkout(tmp_path / "tensorsafe-repo")
    repo = tmp_path / "models-repo"
    files = {
        "models/evil.ckpt": SYSTEM,
        "models/clean.pt": BENIGN,
        "models/good.safetensors": st.model([("w", "F32", (2, 2))]),
        "models/overlap.safetensors": st.build({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 4),
        "assets/logo.png": SYSTEM,  # a pickle under an image's name
        "README.md": b"# models\n",
    }
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {tmp_path / 'tensorsafe-repo'}\n  rev: {rev}\n  hooks:\n"
        "  - id: tensorsafe-scan\n  - id: tensorsafe-validate\n  - id: tensorsafe-scan-all\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    env = _offline_env(tmp_path / "pre-commit-home")

    code, hooks = _run_hooks(repo, env)
    assert code == 1
    status, out = hooks["tensorsafe scan (model files)"]
    assert status == "Failed" and "models/evil.ckpt: FAIL" in out and "PK-I01" in out
    assert "logo.png" not in out, "the model-file hook only sees model extensions"
    status, out = hooks["tensorsafe validate (safetensors headers)"]
    assert status == "Failed" and "models/overlap.safetensors" in out and "ST-F16" in out
    assert "good.safetensors" not in out
    status, out = hooks["tensorsafe scan (every file, whatever its name)"]
    assert status == "Failed" and "assets/logo.png: FAIL" in out
    for name, (_, out) in hooks.items():  # 7 files: pre-commit would split them over 2+ CPUs
        assert len(re.findall(r"^\d+ files? scanned: ", out, re.M)) == 1, (name, out)
    assert re.search(r"^7 files scanned: .* -> FAIL$", out, re.M), out
    hook_envs = (tmp_path / "pre-commit-home").glob("repo*/py_env-*/lib/python*/site-packages/tensorsafe/cli/main.py")
    installed = list(hook_envs)
    assert installed, "tensorsafe was installed into the hook's own environment"

    _git(repo, "rm", "-q", "-f", "models/evil.ckpt", "models/overlap.safetensors", "assets/logo.png")
    code, hooks = _run_hooks(repo, env)
    assert code == 0, hooks
    assert {status for status, _ in hooks.values()} == {"Passed"} and len(hooks) == 3
