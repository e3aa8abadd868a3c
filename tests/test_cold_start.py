"""Cold start: a CLI call loads only what its command needs (each check runs in a fresh interpreter)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli_runner import invoke

import tensorsafe
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
    from tensorsafe.cli.main import COMMANDS

    listing = invoke(["--help"])
    assert listing.exit_code == 0
    for name, command in COMMANDS.items():
        assert f"  {name}  " in listing.output and command.summary in listing.output, name
        assert invoke([name, "--help"]).exit_code == 0
    assert invoke(["render", "--help"]).output.startswith("usage: tensorsafe render [OPTIONS] PATH")
    unknown = invoke(["no-such-command"])
    assert unknown.exit_code == 2 and "invalid choice: 'no-such-command'" in unknown.stderr


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


def _modules_after(code: str, names: tuple[str, ...], **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; which of ``names`` it left in ``sys.modules``."""
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             f"print('\\n' + __import__('json').dumps([m for m in {names!r} if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


NOT_FOR_SCAN = ("click", "tensorsafe.cli.validate", "tensorsafe.cli.inspect", "tensorsafe.cli.convert",
                "tensorsafe.cli.render", "tensorsafe.cli.progress", "tensorsafe.converter", "tensorsafe.pipeline",
                "tensorsafe.batch", "tensorsafe.hub.client", "numpy", "huggingface_hub", "tqdm", "fickling")
"""What ``tensorsafe scan`` of a local checkpoint has no use for: another command's module, the converter,
the executor of ``--jobs``, the Hub client, the heavy packages."""


def _console(*args: str) -> str:
    """What the console script runs, as one line of code."""
    return f"from tensorsafe.cli.entry import main; sys.argv = ['tensorsafe', *{list(args)!r}]; main()"


def test_the_scan_command_loads_only_what_it_needs():
    loaded = _modules_after(_console("scan", str(FIXTURES / "tiny-sd1.ckpt")), (*NOT_FOR_SCAN, "tensorsafe.cli.scan"))
    assert loaded == ["tensorsafe.cli.scan"]


def test_an_hf_path_loads_the_hub_client():
    code = _console("scan", "hf://tensorsafe-test/no-such-repo/model.ckpt")
    loaded = _modules_after(code, ("tensorsafe.cli.scan", "tensorsafe.hub.client"), HF_HUB_OFFLINE="1")
    assert loaded == ["tensorsafe.cli.scan", "tensorsafe.hub.client"]
