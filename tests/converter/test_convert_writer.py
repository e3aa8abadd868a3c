"""The streaming writer and byte operations, checked against torch and the safetensors library."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tensorsafe.converter import chunks
from tensorsafe.converter.execute import component_tensors, write_weights
from tensorsafe.converter.output import staged
from tensorsafe.converter.plan import Op, Plan, Target
from tensorsafe.converter.sources import open_file
from tensorsafe.errors import ParseError, UsageError
from tensorsafe.tensors import DTYPES


@pytest.fixture
def source(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    sd = {"w": base, "strided": base[:, ::2], "t": base.t(), "h": torch.randn(9, 4, generator=g).half(),
          "q": torch.randn(2, 4, generator=g), "k": torch.randn(2, 4, generator=g), "v": torch.randn(2, 4, generator=g),
          "b": torch.randn(3, 5, generator=g).bfloat16(), "conv": torch.randn(4, 4, 1, 1, generator=g),
          "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    path = tmp_path / "src.pt"
    torch.save({"state_dict": sd}, path)
    return path, sd


def _read(path, key):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(key)


def test_ops_match_torch(tmp_path, source, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 8)  # force many small pieces
    path, sd = source
    plan = Plan([
        Target("c", "copy", ("w",), Op.COPY, (6, 4)),
        Target("c", "strided", ("strided",), Op.COPY, (6, 2)),
        Target("c", "transposed_view", ("t",), Op.COPY, (4, 6)),
        Target("c", "rows", ("h",), Op.ROWS, (3, 4), rows=(3, 6)),
        Target("c", "in_proj", ("q", "k", "v"), Op.CONCAT_ROWS, (6, 4)),
        Target("c", "proj_T", ("w",), Op.TRANSPOSE, (4, 6)),
        Target("c", "linear", ("conv",), Op.RESHAPE, (4, 4)),
        Target("c", "scalar", ("scalar",), Op.COPY, ()),
        Target("c", "empty", ("empty",), Op.COPY, (0, 3)),
        Target("c", "bf16_T", ("b",), Op.TRANSPOSE, (5, 3)),
    ])
    out = tmp_path / "out"
    out.mkdir()
    with open_file(path) as src:
        write_weights(out, "model", component_tensors(plan, "c", src.tensors, None))
    f = out / "model.safetensors"
    assert torch.equal(_read(f, "copy"), sd["w"])
    assert torch.equal(_read(f, "strided"), sd["strided"])
    assert torch.equal(_read(f, "transposed_view"), sd["t"])
    assert torch.equal(_read(f, "rows"), sd["h"][3:6])
    assert torch.equal(_read(f, "in_proj"), torch.cat([sd["q"], sd["k"], sd["v"]]))
    assert torch.equal(_read(f, "proj_T"), sd["w"].t())
    assert torch.equal(_read(f, "linear"), sd["conv"].reshape(4, 4))
    assert torch.equal(_read(f, "scalar"), sd["scalar"])
    assert _read(f, "empty").shape == (0, 3)
    assert torch.equal(_read(f, "bf16_T"), sd["b"].t())


@pytest.mark.parametrize("target", ["F16", "BF16", "F32"])
def test_casts_match_torch(tmp_path, source, target):
    path, sd = source
    plan = Plan([Target("c", k, (k,), Op.COPY, tuple(sd[k].shape)) for k in ("w", "h", "b")])
    out = tmp_path / "out"
    out.mkdir()
    with open_file(path) as src:
        write_weights(out, "model", component_tensors(plan, "c", src.tensors, DTYPES[target]))
    tdtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[target]
    for k in ("w", "h", "b"):
        got = _read(out / "model.safetensors", k)
        assert got.dtype == tdtype and torch.equal(got, sd[k].to(tdtype)), k


def test_bf16_cast_keeps_nan_and_inf():
    values = np.array([np.nan, np.inf, -np.inf, 1.0, -0.0, 3.0e38], dtype=np.float32)
    pieces = chunks.cast_chunks(iter([memoryview(values.tobytes())]), DTYPES["F32"], DTYPES["BF16"])
    got = torch.frombuffer(bytearray(b"".join(bytes(p) for p in pieces)), dtype=torch.bfloat16)
    expected = torch.from_numpy(values).bfloat16()
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[1:], expected[1:])


def test_sharding_and_index(tmp_path, source):
    path, sd = source
    plan = Plan([Target("c", k, (k,), Op.COPY, tuple(sd[k].shape)) for k in ("w", "h", "q", "k", "v")])
    out = tmp_path / "out"
    out.mkdir()
    with open_file(path) as src:
        names = write_weights(out, "diffusion_pytorch_model", component_tensors(plan, "c", src.tensors, None),
                              max_shard_bytes=64)
    assert len(names) > 1 and names[0] == f"diffusion_pytorch_model-00001-of-{len(names):05d}.safetensors"
    import json

    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {"w", "h", "q", "k", "v"}
    for key, name in index["weight_map"].items():
        assert torch.equal(_read(out / name, key), sd[key])


def test_shape_mismatch_is_a_teaching_error(tmp_path, source):
    path, _ = source
    with open_file(path) as src:
        with pytest.raises(ParseError, match=r"'x' \(copy\) expects shape \(5, 4\) but the source \['w'\] has shape \(6, 4\)"):
            component_tensors(Plan([Target("c", "x", ("w",), Op.COPY, (5, 4))]), "c", src.tensors, None)


def test_staged_output_never_touches_an_existing_destination(tmp_path):
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(UsageError, match="overwrite=True"):
        with staged(dst, overwrite=False, folder=True):
            pass
    with pytest.raises(RuntimeError):
        with staged(dst, overwrite=True, folder=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("disk full")
    assert (dst / "keep.txt").read_text() == "old" and not (dst / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with staged(dst, overwrite=True, folder=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (dst / "new.txt").exists() and not (dst / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
