"""tensorsafe.load_state_dict against torch.load(weights_only=True) and safetensors, on files we write."""
from __future__ import annotations

import builtins
import collections
import pydoc

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tensorsafe
from tensorsafe.errors import MissingFileError, UnreadableFileError, UnsafeFileError, UsageError
from tests import pickle_ops as op

NUMPY_LESS = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


def _checkpoint(legacy: bool) -> dict:
    base = torch.arange(24, dtype=torch.float32).reshape(6, 4) * 0.5
    lin = torch.nn.Linear(3, 2)
    tied = torch.randn(5, 3)
    state = collections.OrderedDict(weight=lin.weight.detach(), bias=lin.bias.detach(),
                                    embed=tied, lm_head=tied, half=torch.randn(2, 3).half(),
                                    bf16=torch.randn(4).bfloat16(), i8=torch.arange(-3, 3, dtype=torch.int8),
                                    mask=torch.tensor([True, False, True]), cplx=torch.randn(3, dtype=torch.complex64),
                                    scalar=torch.tensor(2.5), empty=torch.zeros(0, 3))
    if not legacy:  # torch's own legacy loader cannot read float8 back
        state["f8a"] = torch.randn(4).to(torch.float8_e4m3fn)
        state["f8b"] = torch.randn(4).to(torch.float8_e5m2)
    return {"state_dict": state, "epoch": 3, "hparams": {"lr": 0.1, "name": "x", "flag": True, "none": None},
            "views": [base, base.t(), base[1:, ::2], base[2]], "pair": (torch.ones(2, dtype=torch.int64), b"raw"),
            "param": torch.nn.Parameter(torch.ones(3))}


def _assert_equal(ours: object, ref: object, where: str = "") -> None:
    assert type(ours) is type(ref), where
    if isinstance(ref, torch.Tensor):
        assert (ours.dtype, ours.shape, ours.stride(), ours.storage_offset()) == \
            (ref.dtype, ref.shape, ref.stride(), ref.storage_offset()), where
        assert ours.requires_grad == ref.requires_grad, where
        same = torch.equal(ours.view(torch.uint8), ref.view(torch.uint8)) if ref.element_size() == 1 and \
            ref.dtype is not torch.bool else torch.equal(ours.detach(), ref.detach())
        assert same, where
    elif isinstance(ref, dict):
        assert list(ours) == list(ref), where
        for k in ref:
            _assert_equal(ours[k], ref[k], f"{where}.{k}")
    elif isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_equal(a, b, f"{where}[{i}]")
    else:
        assert ours == ref, where


def _tensors(v: object, where: str = ""):
    if isinstance(v, torch.Tensor):
        yield where, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _tensors(x, f"{where}.{k}")
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from _tensors(x, f"{where}[{i}]")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_mode_matches_torch_load(tmp_path, legacy):
    path = tmp_path / "m.pt"
    torch.save(_checkpoint(legacy), path, _use_new_zipfile_serialization=not legacy)
    ref = torch.load(path, weights_only=True)
    ours = tensorsafe.load_state_dict(path, framework="torch")
    _assert_equal(ours, ref)
    assert type(ours["state_dict"]) is collections.OrderedDict and isinstance(ours["param"], torch.nn.Parameter)
    ref_t, our_t = dict(_tensors(ref)), dict(_tensors(ours))
    ptr = {k: t.untyped_storage().data_ptr() for k, t in ref_t.items()}
    for a in ref_t:  # ties exactly where torch.load ties
        for b in ref_t:
            tied = ptr[a] == ptr[b] and ref_t[a].numel() > 0
            assert (our_t[a].untyped_storage().data_ptr() == our_t[b].untyped_storage().data_ptr()) == tied \
                or not tied and not our_t[a].numel(), (a, b)
    ours["state_dict"]["embed"][0, 0] = 42.0
    assert ours["state_dict"]["lm_head"][0, 0] == 42.0
    assert ours["views"][1][0, 1] == ours["views"][0][1, 0]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_numpy_mode_same_values_and_views(tmp_path, legacy):
    pytest.importorskip("ml_dtypes")  # bf16/fp8 in numpy mode; without it: the refusal test below
    path = tmp_path / "m.pt"
    torch.save(_checkpoint(legacy), path, _use_new_zipfile_serialization=not legacy)
    ref = torch.load(path, weights_only=True)
    ours = tensorsafe.load_state_dict(path, framework="numpy")
    assert ours["epoch"] == 3 and ours["hparams"] == ref["hparams"] and ours["pair"][1] == b"raw"
    for where, arr, t in _pairs(ours, ref):
        assert isinstance(arr, np.ndarray) and arr.shape == tuple(t.shape), where
        if t.dtype in NUMPY_LESS:  # ml_dtypes: same bits, never widened
            assert arr.dtype.itemsize == t.element_size() and str(arr.dtype) == str(t.dtype).split(".")[1]
            assert arr.view(np.uint8).tobytes() == t.contiguous().view(torch.uint8).numpy().tobytes(), where
        else:
            assert np.array_equal(arr, t.detach().numpy()) and arr.dtype == t.detach().numpy().dtype, where
            assert arr.strides == tuple(s * t.element_size() for s in t.stride()) or not t.numel(), where
    views = ours["views"]
    assert np.shares_memory(views[0], views[1]) and np.shares_memory(views[0], views[2])
    assert np.shares_memory(ours["state_dict"]["embed"], ours["state_dict"]["lm_head"])
    views[0][0, 0] = 7.0
    assert views[1][0, 0] == 7.0


def _pairs(ours: object, ref: object, where: str = ""):
    if isinstance(ref, torch.Tensor):
        yield where, ours, ref
    elif isinstance(ref, dict):
        for k in ref:
            yield from _pairs(ours[k], ref[k], f"{where}.{k}")
    elif isinstance(ref, (list, tuple)):
        for i, (a, b) in enumerate(zip(ours, ref)):
            yield from _pairs(a, b, f"{where}[{i}]")


def test_numpy_mode_without_ml_dtypes_refuses_bfloat16(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    torch.save({"ok": torch.ones(2), "w": torch.ones(2).bfloat16()}, path)
    real_import = builtins.__import__

    def no_ml_dtypes(name, *args, **kwargs):
        if name == "ml_dtypes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ml_dtypes)
    with pytest.raises(UsageError) as err:
        tensorsafe.load_state_dict(path, framework="numpy")
    text = str(err.value)
    assert "bfloat16" in text and "framework='torch'" in text and "[w]" in text and str(path) in text
    assert tensorsafe.load_state_dict(path, framework="torch")["w"].dtype == torch.bfloat16


def test_default_framework_is_torch_when_importable(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert isinstance(tensorsafe.load_state_dict(path)["w"], torch.Tensor)
    with pytest.raises(UsageError):
        tensorsafe.load_state_dict(path, framework="jax")


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_safetensors_equals_load_file(tmp_path, framework):
    path = tmp_path / "m.safetensors"
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).bfloat16(), "c": torch.arange(4, dtype=torch.int8),
               "d": torch.randn(2).to(torch.float8_e4m3fn), "e": torch.zeros(0, 2)}
    save_file(tensors, path)
    if framework == "numpy":
        pytest.importorskip("ml_dtypes")
    ref = load_file(path)
    ours = tensorsafe.load_state_dict(path, framework=framework)
    assert set(ours) == set(ref)
    for k, t in ref.items():
        if framework == "torch":
            _assert_equal(ours[k], t, k)
        else:
            assert ours[k].shape == tuple(t.shape)
            assert ours[k].tobytes() == t.contiguous().view(torch.uint8).numpy().tobytes(), k


def test_safetensors_header_is_validated_first(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"a": torch.ones(4)}, path)
    raw = bytearray(path.read_bytes())
    bad = raw.replace(b'"data_offsets":[0,16]', b'"data_offsets":[0,64]')
    assert bad != raw
    path.write_bytes(bad)
    with pytest.raises((UnsafeFileError, tensorsafe.ParseError)) as err:
        tensorsafe.load_state_dict(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as err:
        tensorsafe.load_state_dict(path)
    assert isinstance(err.value, MissingFileError) and isinstance(err.value, UnreadableFileError)
    assert str(path) in str(err.value) and err.value.filename == str(path)
    with pytest.raises(UsageError):
        tensorsafe.load_state_dict(tmp_path)


def test_malicious_pickle_raises_the_scan_error_with_findings(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(op.call_system())
    with pytest.raises(UnsafeFileError) as err:
        tensorsafe.load_state_dict(path)
    assert err.value.report is not None and not err.value.report.clean
    assert err.value.findings and any(f.rule_id == "PK-I01" for f in err.value.findings)


def test_an_object_that_is_not_data_is_refused(tmp_path):
    """A class the policy lets through (benign) still does not come back as an object."""
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "size": torch.Size([2, 3]), "dtype": torch.float16}, path)
    out = tensorsafe.load_state_dict(path, framework="torch")
    assert out["dtype"] is torch.float16 and tuple(out["size"]) == (2, 3)
    from tensorsafe.load import _Materializer
    from tensorsafe.pickles.reader import Opaque

    with pytest.raises(UsageError) as err:
        _Materializer("torch", "f.pt").value({"cb": [Opaque("pathlib.PosixPath")]}, b"", "")
    assert "pathlib.PosixPath" in str(err.value) and "cb[0]" in str(err.value)


def test_help_shows_the_signature():
    text = pydoc.render_doc(tensorsafe.load_state_dict)
    assert "framework" in text and "policy" in text and "weights_only=True" in text


def test_a_safetensors_dtype_without_a_tensor_type_is_named(tmp_path):
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "fp4.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x12")
    with pytest.raises(UsageError) as err:
        tensorsafe.load_state_dict(path)
    assert "F4" in str(err.value) and "'w'" in str(err.value)


def test_a_file_that_is_no_checkpoint_names_the_file(tmp_path):
    import zipfile

    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(tensorsafe.ParseError) as err:
        tensorsafe.load_state_dict(path)
    assert str(path) in str(err.value)
