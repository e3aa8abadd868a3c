"""``tensorsafe inspect``: the tensor table, metadata and totals of a safetensors file."""
from __future__ import annotations

import json

from tests.cli_runner import invoke

from tensorsafe.safetensors.inspect import inspect_file
from tests.st_build import build, model


def _model(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(model([("w", "F32", (2, 3)), ("b", "BF16", (3,)), ("s", "I64", ()), ("e", "F16", (0, 4))],
                           {"format": "pt", "note": "x" * 500}))
    return path


def test_inspect_text(tmp_path):
    result = invoke(["inspect", str(_model(tmp_path))])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("4 tensors")
    row = next(line for line in lines if line.startswith("w "))
    assert row.split() == ["w", "F32", "[2,", "3]", "24"]
    assert "format = pt" in result.output and "(500 characters)" in result.output
    assert "totals: 4 tensors, 10 elements, 38 data bytes" in result.output


def test_inspect_json(tmp_path):
    result = invoke(["inspect", str(_model(tmp_path)), "--json"])
    doc = json.loads(result.output)
    assert [t["name"] for t in doc["tensors"]] == ["w", "b", "s", "e"]  # file order
    assert doc["tensors"][0] == {"name": "w", "dtype": "F32", "shape": [2, 3], "bytes": 24, "data_offsets": [0, 24]}
    assert doc["metadata"]["format"] == "pt"
    assert doc["totals"]["by_dtype"]["BF16"] == {"tensors": 1, "elements": 3, "bytes": 6}
    assert doc["totals"]["tensors"] == 4 and doc["totals"]["data_bytes"] == 38


def test_inspect_refuses_a_broken_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(build('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}}', b"x"))
    result = invoke(["inspect", str(path)])
    assert result.exit_code == 2 and "bad.safetensors" in result.output and "needs 2 bytes" in result.output


def test_inspect_escapes_names(tmp_path):
    path = tmp_path / "names.safetensors"
    path.write_bytes(model([("evil\x1b[2J\u202ename", "U8", (1,))]))
    result = invoke(["inspect", str(path)])
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "\\u001b[2J\\u202ename" in result.output


def test_inspect_api(tmp_path):
    ins = inspect_file(_model(tmp_path))
    assert [t.name for t in ins.tensors] == ["w", "b", "s", "e"]
    assert ins.tensors[2].shape == () and ins.tensors[2].elements == 1
    assert ins.totals()["elements"] == 10
