"""Real files written by torch, numpy, joblib and safetensors scan clean: no false positives."""
from __future__ import annotations

import collections
import io

import numpy as np
import pytest
import torch

import tensorsafe
from tests.conftest import rule_ids


def test_bundled_models_are_clean(fixtures_dir):
    report = tensorsafe.scan(fixtures_dir)
    assert len(report.files) >= 5
    assert report.verdict == "clean", [str(f) for f in report.findings]
    kinds = {f.path.rsplit("/", 1)[-1]: f.kind for f in report.files}
    assert kinds["tiny-sd-lightning.ckpt"] == "pytorch-zip"
    assert kinds["tiny-sd-legacy.pt"] == "pytorch-legacy"
    assert kinds["tiny-sd.safetensors"] == "safetensors"


def test_lightning_callback_is_reported_benign_not_failed(fixtures_dir):
    report = tensorsafe.scan(fixtures_dir / "tiny-sd-lightning.ckpt")
    assert report.exit_code == 0
    benign = [f for f in report.findings if f.rule_id == "PK-I03"]
    assert benign and "ModelCheckpoint" in benign[0].message
    tiers = {u.qualified: u.tier for u in report.files[0].imports}
    assert tiers["torch._utils._rebuild_tensor_v2"] == "allowed"
    assert tiers["_codecs.encode"] == "allowed"


def _state(dtype):
    g = torch.Generator().manual_seed(1)
    sd = collections.OrderedDict()
    sd["w"] = torch.randn(4, 3, generator=g).to(dtype)
    sd["view"] = sd["w"][1:, ::2]
    sd["t"] = torch.randn(3, 5, generator=g).to(dtype).t()
    sd["p"] = torch.nn.Parameter(torch.ones(2, dtype=dtype))
    sd["i"] = torch.arange(5)
    sd["b"] = torch.tensor([True, False])
    return sd


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_torch_save_is_clean(tmp_path, zip_format, dtype):
    path = tmp_path / "model.pth"
    torch.save(_state(dtype), path, _use_new_zipfile_serialization=zip_format)
    report = tensorsafe.scan(path)
    assert report.verdict == "clean", [str(f) for f in report.findings]
    assert report.files[0].kind == ("pytorch-zip" if zip_format else "pytorch-legacy")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_torch_save_pickle_protocols(tmp_path, protocol):
    path = tmp_path / "model.bin"
    torch.save(_state(torch.float32), path, pickle_protocol=protocol)
    assert tensorsafe.scan(path).verdict == "clean"


def test_optimizer_and_training_state_clean(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    path = tmp_path / "training.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "device": torch.device("cpu"), "dtype": torch.float16, "size": torch.Size([2, 3]),
                "rng": torch.get_rng_state(), "np_rng": np.random.get_state()}, path)
    report = tensorsafe.scan(path)
    assert report.verdict == "clean", [str(f) for f in report.findings]


def test_numpy_files_clean(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(10, dtype=np.float64))
    np.savez_compressed(tmp_path / "b.npz", x=np.ones((3, 3)), y=np.zeros(2, dtype=np.int8))
    report = tensorsafe.scan(tmp_path)
    assert report.verdict == "clean"
    assert {f.kind for f in report.files} == {"numpy", "zip"}


def test_joblib_files_clean(tmp_path):
    joblib = pytest.importorskip("joblib")
    data = {"weights": np.arange(1000, dtype=np.float32), "names": ["a", "b"], "big": np.ones((50, 50))}
    joblib.dump(data, tmp_path / "plain.joblib")
    joblib.dump(data, tmp_path / "zlib.joblib", compress=3)
    joblib.dump(data, tmp_path / "gz.joblib", compress=("gzip", 3))
    joblib.dump(data, tmp_path / "xz.joblib", compress=("xz", 3))
    joblib.dump(data, tmp_path / "bz2.joblib", compress=("bz2", 3))
    report = tensorsafe.scan(tmp_path)
    assert report.verdict == "clean", [str(f) for f in report.findings]
    assert all("joblib" in f.kind for f in report.files), [f.kind for f in report.files]


@pytest.mark.parametrize("protocol", range(6))
def test_plain_pickles_of_every_protocol_clean(scan_bytes, protocol):
    import pickle

    data = {"list": [1, 2.5, "x", b"y", None, True], "tuple": (1, (2, 3)), "set": {1, 2},
            "frozen": frozenset({3}), "od": collections.OrderedDict(a=1), "nested": {"k": [{"v": 1}]}}
    report = scan_bytes(pickle.dumps(data, protocol=protocol))
    assert report.verdict == "clean", [str(f) for f in report.findings]


def test_text_files_beside_models_are_identified_as_text_not_pickles(tmp_path):
    (tmp_path / "README.md").write_text("# Model card\n\nNothing to see.\n")
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.py").write_text("import os\nimport sys\n\nclass Foo:\n    pass\n")
    (tmp_path / "inst.py").write_text("import torch.nn as nn\n")
    (tmp_path / "notes.txt").write_text("caf\u00e9 \u2014 \U0001f600\n", encoding="utf-8")
    (tmp_path / ".gitkeep").write_bytes(b"")
    report = tensorsafe.scan(tmp_path)
    assert report.verdict == "clean", [str(f) for f in report.findings]
    assert {f.kind for f in report.files} == {"text", "empty"}
    assert rule_ids(report) == set()


def test_safetensors_is_recognised_not_scanned_as_pickle(tmp_path):
    from safetensors.numpy import save_file

    for n in (1, 7, 40, 300):  # header lengths whose first byte is 0x80 included
        tensors = {f"t{i}": np.zeros(3, dtype=np.float32) for i in range(n)}
        save_file(tensors, tmp_path / f"m{n}.safetensors")
        # any name: the bytes decide
        (tmp_path / f"m{n}.bin").write_bytes((tmp_path / f"m{n}.safetensors").read_bytes())
    report = tensorsafe.scan(tmp_path)
    assert {f.kind for f in report.files} == {"safetensors"}
    assert report.verdict == "clean"


def test_in_memory_torch_zip_inside_tar_and_gzip(tmp_path):
    import gzip
    import tarfile

    buf = io.BytesIO()
    torch.save(_state(torch.float32), buf)
    tar_path = tmp_path / "bundle.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("inner/model.pt")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    (tmp_path / "bundle.tar.gz").write_bytes(gzip.compress(tar_path.read_bytes()))
    report = tensorsafe.scan(tmp_path)
    assert report.verdict == "clean", [str(f) for f in report.findings]
    assert sum(f.pickles for f in report.files) == 2


def test_broken_safetensors_is_not_called_other(tmp_path):
    """A header length that runs past the file is a format error for `scan` too, not "other"."""
    import struct

    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    (tmp_path / "lying.bin").write_bytes(struct.pack("<Q", 10**6) + header + b"\0" * 4)
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    report = tensorsafe.scan(tmp_path)
    assert report.exit_code == 2
    assert {f.kind for f in report.files} == {"safetensors"}
    assert {"ST-F03", "ST-F01"} <= rule_ids(report)
