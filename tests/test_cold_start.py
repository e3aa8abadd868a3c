"""Cold start: a CLI call loads only what its command needs (each check runs in a fresh interpreter)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tensorsafe
from tensorsafe.cli.main import main
from tests import pickle_ops as op

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "models"
HEAVY = ("numpy", "huggingface_hub", "fickling", "torch", "jinja2", "h5py", "onnx", "tqdm")
"""Third-party packages no command needs just to start."""


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; which HEAVY modules it left in ``sys.modules``, and its exit code."""
    probe = ("import sys\nrc = 0\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines())
             + "except SystemExit as e:\n    rc = e.code\n"
             f"print('\\n' + __import__('json').dumps({{'rc': rc, 'heavy': [m for m in {HEAVY!r} "
             "if m in sys.modules]}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _scan_code(*paths: Path) -> str:
    return f"from tensorsafe.cli.main import main\nmain(['scan', *{[str(p) for p in paths]!r}])"


def test_importing_the_cli_loads_no_heavy_package():
    assert _loaded_after("import tensorsafe.cli.main")["heavy"] == []


def test_importing_the_package_loads_no_heavy_package():
    assert _loaded_after("import tensorsafe")["heavy"] == []


@pytest.mark.parametrize("name", ["tiny-sd1.ckpt", "tiny-sd-legacy.pt", "tiny-training-state.pt"])
def test_scanning_a_checkpoint_loads_no_heavy_package(name):
    result = _loaded_after(_scan_code(FIXTURES / name))
    assert result == {"rc": 0, "heavy": []}


def test_scanning_a_raw_pickle_loads_no_heavy_package(tmp_path):
    (tmp_path / "state.pkl").write_bytes(op.proto(2) + op.EMPTY_DICT + op.STOP)
    (tmp_path / "evil.pkl").write_bytes(op.call_system())
    assert _loaded_after(_scan_code(tmp_path / "state.pkl")) == {"rc": 0, "heavy": []}
    assert _loaded_after(_scan_code(tmp_path / "evil.pkl")) == {"rc": 1, "heavy": []}


def _npy(descr: str) -> bytes:
    """A version 1.0 .npy of shape (0,) with this descr, written by hand (no array data needed)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (0,), }}".encode("latin-1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_plain_npy_is_judged_without_numpy(tmp_path):
    (tmp_path / "plain.npy").write_bytes(_npy("<f4"))
    assert _loaded_after(_scan_code(tmp_path / "plain.npy")) == {"rc": 0, "heavy": []}


def test_other_dtypes_are_still_judged_by_numpy(tmp_path):
    (tmp_path / "record.npy").write_bytes(_npy("<f4,<i8"))
    assert _loaded_after(_scan_code(tmp_path / "record.npy")) == {"rc": 0, "heavy": ["numpy"]}


@pytest.mark.parametrize(("descr", "has_object"), [
    ("<f4", False), ("|b1", False), (">c16", False), ("|O", True), ("O", True), ("<f4,O", True), ("object", True),
])
def test_object_dtypes_never_take_the_plain_path(descr, has_object):
    from tensorsafe.readers.blob import Span
    from tensorsafe.readers.numpy_files import read_npy_header

    assert read_npy_header(Span.of_bytes(_npy(descr))).has_object is has_object


def test_lazy_commands_are_listed_and_run():
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"]).output
    assert "convert" in listing and "render" in listing
    assert runner.invoke(main, ["convert", "--help"]).exit_code == 0
    assert "Usage: main render" in runner.invoke(main, ["render", "--help"]).output
    assert runner.invoke(main, ["no-such-command"]).exit_code == 2


def test_lazy_public_names_resolve_to_the_real_objects():
    from tensorsafe.api import scan, validate

    assert tensorsafe.scan is scan and tensorsafe.validate is validate
    assert set(tensorsafe.__all__) <= set(dir(tensorsafe))
    assert all(getattr(tensorsafe, name) is not None for name in tensorsafe.__all__)
    assert callable(tensorsafe.convert) and callable(tensorsafe.render)
    with pytest.raises(AttributeError):
        tensorsafe.no_such_name  # noqa: B018
    namespace: dict = {}
    exec("from tensorsafe import *", namespace)
    assert set(tensorsafe.__all__) <= set(namespace)
