"""The restricted reader against torch.load(weights_only=True) on benign files we write ourselves."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.checkpoint import read_checkpoint
from tensorsafe.errors import UnsafeFileError
from tensorsafe.load import load_state_dict, to_numpy
from tests import pickle_ops as op

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16]


def _assert_same(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for k, t in ref.items():
        assert ours[k].dtype == t.dtype and ours[k].shape == t.shape, k
        assert torch.equal(ours[k].view(torch.uint8) if t.element_size() == 1 else ours[k],
                           t.view(torch.uint8) if t.element_size() == 1 else t.detach()), k


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_views_dtypes_and_shared_storages_match_torch(tmp_path_factory, data):
    dtype = data.draw(st.sampled_from(DTYPES))
    shape = tuple(data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    base = (torch.arange(max(1, int(np.prod(shape) * 4)), dtype=torch.float64) * 0.37).to(dtype)
    full = base[: int(np.prod(shape))].reshape(shape) if shape else base[0]
    tensors = collections.OrderedDict(full=full, base=base)
    if len(shape) >= 2 and all(shape):
        tensors["transposed"] = full.transpose(0, 1)
        tensors["sliced"] = full[..., ::2]
    tensors["offset"] = base[1:]
    zip_format = data.draw(st.booleans()) or dtype.itemsize == 1 and dtype.is_floating_point
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16):
        zip_format = True  # torch's own legacy loader cannot read these back
    path = tmp_path_factory.mktemp("r") / "m.pt"
    torch.save({"state_dict": tensors, "global_step": 7}, path, _use_new_zipfile_serialization=zip_format)
    ref = torch.load(path, weights_only=True)["state_dict"]
    _assert_same(load_state_dict(path, framework="torch")["state_dict"], ref)


def test_numpy_framework_keeps_bfloat16(tmp_path):
    sd = {"a": torch.randn(3, 4), "b": torch.randn(5).bfloat16(), "h": torch.randn(2, 2).half().t()}
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    pytest.importorskip("ml_dtypes")
    arrays = load_state_dict(path, framework="numpy")
    assert arrays["a"].dtype == np.float32 and np.array_equal(arrays["a"], sd["a"].numpy())
    assert str(arrays["b"].dtype) == "bfloat16"  # ml_dtypes: never widened
    assert np.array_equal(arrays["b"].astype(np.float32), sd["b"].float().numpy())
    assert np.array_equal(arrays["h"], sd["h"].numpy())


def test_lightning_wrapper_and_extras(fixtures_dir):
    ckpt = read_checkpoint(fixtures_dir / "tiny-sd-lightning.ckpt")
    assert ckpt.format == "pytorch-zip"
    assert "model.diffusion_model.input_blocks.0.0.weight" in ckpt.tensors
    assert ckpt.extras["global_step"] == 470000
    legacy = read_checkpoint(fixtures_dir / "tiny-sd-legacy.pt")
    assert set(legacy.tensors) == set(ckpt.tensors)
    for name, ref in ckpt.tensors.items():
        with open(fixtures_dir / "tiny-sd-lightning.ckpt", "rb") as a, open(fixtures_dir / "tiny-sd-legacy.pt", "rb") as b:
            assert np.array_equal(to_numpy(ref, a.read()), to_numpy(legacy.tensors[name], b.read())), name


def test_refuses_a_file_that_fails_its_scan(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(op.call_system())
    with pytest.raises(UnsafeFileError) as err:
        load_state_dict(path)
    assert "PK-I01" in str(err.value) and str(path) in str(err.value)
    assert isinstance(err.value, tensorsafe.TensorsafeError)


def test_tensor_past_its_storage_is_an_error(tmp_path):
    """A rebuild whose size and strides reach beyond the storage bytes is refused, not read."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.endswith("data/0"):
                body = body[:8]  # 2 floats left for a tensor of 4
            dst.writestr(info.filename, body)
    path = tmp_path / "short.pt"
    path.write_bytes(out.getvalue())
    # the scan refuses it first: the persistent id claims 16 bytes for a record of 8 (PK-A01)
    assert "PK-A01" in {f.rule_id for f in tensorsafe.scan(path).findings}
    with pytest.raises(tensorsafe.ParseError, match="runs past the end of storage"):
        read_checkpoint(path, scan_first=False)
