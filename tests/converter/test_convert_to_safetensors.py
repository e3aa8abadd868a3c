"""``tensorsafe convert CKPT FILE.safetensors``: any clean checkpoint to one safetensors file.

Oracle: ``torch.load(weights_only=True)`` of the source, tensor by tensor (values, dtypes, shapes),
against ``safetensors.torch.load_file`` of the output.
"""
from __future__ import annotations

import inspect
import json

import pytest
import torch
from tests.cli_runner import invoke
from safetensors import safe_open
from safetensors.torch import load_file, load_model

import tensorsafe
from tensorsafe.converter.run import ConvertOptions
from tensorsafe.errors import ParseError, UnsafeFileError, UsageError


def _flat(v: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """The oracle's names: nested dict keys and list indices joined with dots."""
    if isinstance(v, torch.Tensor):
        return {prefix: v}
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else ()
    out: dict[str, torch.Tensor] = {}
    for k, x in items:
        out.update(_flat(x, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal, dtype and shape included (NaN and float8 compared as bytes)."""
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def _state(legacy: bool = False) -> dict:
    """Every kind of tensor a state dict holds (no float8 in a legacy file: torch.load cannot read it back)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(16, 8, generator=g)
    big = torch.randn(6, 10, generator=g)
    state = {
        "embed.weight": emb, "head.weight": emb,                       # tied: one storage, one view
        "rows": big[1:4], "cols": big[:, ::3], "t": big.t(),           # views that are not the whole storage
        "bf16": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "f8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "f8b": torch.randn(7, generator=g).to(torch.float8_e5m2),
        "f16": torch.tensor([1.0, float("nan"), float("inf")], dtype=torch.float16),
        "i64": torch.arange(12).reshape(3, 4), "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
        "block": {"norm": torch.ones(3), "layers": [torch.full((2,), 7.0), torch.full((1,), 9.0)]},
    }
    if legacy:
        del state["f8"], state["f8b"]
    return state


@pytest.fixture(params=[False, True], ids=["zip", "legacy"])
def checkpoint(request, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _state(request.param), "global_step": 470000, "epoch": 3, "name": "run-1",
                "hparams": {"lr": 0.1, "betas": [0.9, 0.99]}, "blob": b"\x00\x01",
                "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}]},
               path, _use_new_zipfile_serialization=not request.param)
    return path


def test_every_tensor_equals_torch_load(tmp_path, checkpoint):
    dst = tmp_path / "model.safetensors"
    result = tensorsafe.convert(checkpoint, dst)
    expected = _flat(torch.load(checkpoint, weights_only=True)["state_dict"])
    got = load_file(dst)
    with safe_open(dst, "pt") as f:
        meta = f.metadata()
    assert result.aliases == {"head.weight": "embed.weight"} and meta["head.weight"] == "embed.weight"
    assert set(got) == set(expected) - {"head.weight"}
    got["head.weight"] = got[meta["head.weight"]]
    for name, ref in expected.items():
        assert _same(got[name], ref), name
    assert meta["format"] == "pt" and json.loads(meta["global_step"]) == 470000
    assert json.loads(meta["name"]) == "run-1" and json.loads(meta["hparams"]) == {"lr": 0.1, "betas": [0.9, 0.99]}
    assert set(result.dropped) == {"blob", "optimizer_states"}
    assert "key" in result.dropped["optimizer_states"] and "binary" in result.dropped["blob"]


def test_tied_weights_are_written_once_and_load_model_reties(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.proj = torch.nn.Linear(16, 16)
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

    torch.manual_seed(0)
    model = Tied()
    src, dst = tmp_path / "tied.bin", tmp_path / "tied.safetensors"
    torch.save(model.state_dict(), src)
    tensorsafe.convert(src, dst)
    with safe_open(dst, "pt") as f:
        assert "head.weight" not in f.keys() and f.metadata()["head.weight"] == "embed.weight"
    assert dst.stat().st_size < 50 * 16 * 4 * 2  # one copy of the shared weight
    fresh = Tied()
    missing, unexpected = load_model(fresh, dst)
    assert not missing and not unexpected
    assert fresh.head.weight.data_ptr() == fresh.embed.weight.data_ptr()
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_wrappers_are_unwrapped_and_key_chooses_another(tmp_path):
    src = tmp_path / "train.pt"
    layer = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2)}
    ema = {"fc.weight": torch.full((2, 2), 5.0), "fc.bias": torch.ones(2)}
    torch.save({"epoch": 2, "model": layer, "model_ema": ema}, src)
    result = tensorsafe.convert(src, tmp_path / "a.safetensors")
    assert torch.equal(load_file(tmp_path / "a.safetensors")["fc.weight"], torch.ones(2, 2))
    assert "key" in result.dropped["model_ema"] and "'model'" in result.notes[0]
    tensorsafe.convert(src, tmp_path / "b.safetensors", key="model_ema")
    assert torch.equal(load_file(tmp_path / "b.safetensors")["fc.weight"], torch.full((2, 2), 5.0))
    with pytest.raises(UsageError, match="has no entry 'nope'.*'model_ema'"):
        tensorsafe.convert(src, tmp_path / "c.safetensors", key="nope")
    assert not (tmp_path / "c.safetensors").exists()


def test_dtype_casts_floats_only(tmp_path):
    src = tmp_path / "m.pt"
    state = {"w": torch.randn(4, 4), "b": torch.randn(3).to(torch.bfloat16), "i": torch.arange(3)}
    torch.save(state, src)
    tensorsafe.convert(src, tmp_path / "h.safetensors", dtype="fp16")
    got = load_file(tmp_path / "h.safetensors")
    assert _same(got["w"], state["w"].half()) and _same(got["b"], state["b"].half()) and _same(got["i"], state["i"])


def test_metadata_given_is_added_and_wins(tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"layer.weight": torch.ones(2, 2), "layer.bias": torch.ones(2), "author": "someone"}, src)
    dst = tmp_path / "m.safetensors"
    tensorsafe.convert(src, dst, metadata={"author": "me", "license": "mit"})
    with safe_open(dst, "pt") as f:
        assert f.metadata() == {"format": "pt", "author": "me", "license": "mit"}


def test_sd_ema_copy_dropped_or_used(tmp_path):
    unet = {"model.diffusion_model.out.0.weight": torch.ones(2, 2), "model.diffusion_model.out.0.bias": torch.ones(2)}
    ema = {"model_ema.diffusion_modelout0weight": torch.full((2, 2), 2.0),
           "model_ema.diffusion_modelout0bias": torch.full((2,), 2.0), "model_ema.decay": torch.tensor(0.9999),
           "model_ema.num_updates": torch.tensor(7)}
    src = tmp_path / "sd.ckpt"
    torch.save({"state_dict": {**unet, **ema, "first_stage_model.x": torch.zeros(1)}}, src)
    tensorsafe.convert(src, tmp_path / "auto.safetensors")
    assert set(load_file(tmp_path / "auto.safetensors")) == {*unet, *ema, "first_stage_model.x"}
    no = tensorsafe.convert(src, tmp_path / "no.safetensors", ema="no")
    assert set(load_file(tmp_path / "no.safetensors")) == {*unet, "first_stage_model.x"} and set(ema) <= set(no.dropped)
    tensorsafe.convert(src, tmp_path / "yes.safetensors", ema="yes")
    yes = load_file(tmp_path / "yes.safetensors")
    assert set(yes) == {*unet, "first_stage_model.x"} and torch.equal(yes["model.diffusion_model.out.0.bias"],
                                                                       torch.full((2,), 2.0))


def test_refusals_say_what_the_file_is(tmp_path):
    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(layer.parameters())
    layer(torch.ones(1, 2)).sum().backward()
    opt.step()
    optimizer = tmp_path / "optimizer.pt"
    torch.save(opt.state_dict(), optimizer)
    with pytest.raises(ParseError, match="optimizer's state"):
        tensorsafe.convert(optimizer, tmp_path / "o.safetensors")
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    with pytest.raises(UnsafeFileError, match=r"fails its scan: it is a whole pickled model object \(torch\.nn\.modules\.linear\.Linear, PK-I02\)"):
        tensorsafe.convert(module, tmp_path / "m.safetensors")
    plain = tmp_path / "plain.pt"
    torch.save({"epoch": 3, "note": "hi"}, plain)
    with pytest.raises(ParseError, match="no tensors found: the file holds a dict with keys epoch, note"):
        tensorsafe.convert(plain, tmp_path / "p.safetensors")
    assert not list(tmp_path.glob("*.safetensors"))


def test_cli_options_and_summary(tmp_path, checkpoint):
    dst = tmp_path / "cli.safetensors"
    run = invoke(["convert", str(checkpoint), str(dst), "--key", "state_dict", "--dtype", "fp16",
                                    "--metadata", "author=me", "--metadata", "note=a=b"])
    assert run.exit_code == 0, run.output
    assert "dropped optimizer_states:" in run.output and "head.weight = embed.weight" in run.output
    with safe_open(dst, "pt") as f:
        assert f.metadata()["author"] == "me" and f.metadata()["note"] == "a=b"
        assert f.get_tensor("bf16").dtype == torch.float16
    bad = invoke(["convert", str(checkpoint), str(tmp_path / "x.safetensors"), "--metadata", "oops"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_convert_signature_is_explicit():
    params = inspect.signature(tensorsafe.convert).parameters
    for name in ("dtype", "ema", "key", "metadata", "vae", "config", "base", "overwrite", "max_shard_bytes", "options"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    with pytest.raises(UsageError, match="either options= or keyword options"):
        tensorsafe.convert(__file__, "x.safetensors", options=ConvertOptions(), dtype="fp16")


# -- the diffusers chain: CKPT -> .safetensors -> diffusers folder is CKPT -> diffusers folder ----------------
def _folder_files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _torch_load_fixture(path) -> dict:
    """torch.load(weights_only=True) of a fixture written like a Lightning SD checkpoint: its callback and numpy
    entries are allowed by name (the callback as an empty stand-in class): only the state dict is compared."""
    import numpy as np

    class ModelCheckpoint:
        pass

    allowed = [(ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
               np._core.multiarray.scalar, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
               *{type(np.dtype(c)) for c in "efdilqbBhH?"}]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


def test_sd_ckpt_through_safetensors_gives_the_same_diffusers_folder(tmp_path, fixtures_dir):
    ckpt = fixtures_dir / "tiny-sd1.ckpt"
    single = tmp_path / "tiny-sd1.safetensors"
    result = tensorsafe.convert(ckpt, single)
    expected = _flat(_torch_load_fixture(ckpt)["state_dict"])
    got = load_file(single)
    assert set(got) == set(expected) and all(_same(got[k], v) for k, v in expected.items())
    assert "callbacks" in result.dropped and "numpy_state" in result.dropped
    tensorsafe.convert(ckpt, tmp_path / "from-ckpt")
    tensorsafe.convert(single, tmp_path / "from-safetensors")
    assert _folder_files(tmp_path / "from-ckpt") == _folder_files(tmp_path / "from-safetensors")


def test_global_step_is_read_back_for_family_detection(tmp_path):
    """SD2's prediction type follows global_step (875000: the 512-base model): a .safetensors made from a .ckpt
    keeps it in __metadata__, and the diffusers conversion reads it from there as it reads the .ckpt's."""
    from tensorsafe.converter.sources import open_file

    ckpt = tmp_path / "sd.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(2, 2), "a.bias": torch.ones(2)}, "global_step": 875000,
                "epoch": 12}, ckpt)
    single = tmp_path / "sd.safetensors"
    tensorsafe.convert(ckpt, single)
    with open_file(ckpt) as a, open_file(single) as b:
        assert a.extras["global_step"] == b.extras["global_step"] == 875000 and b.extras["epoch"] == 12


def test_safetensors_source_keeps_its_metadata_and_options_object_works(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "in.safetensors"
    state = {"layer.weight": torch.randn(3, 3), "layer.bias": torch.randn(3)}
    save_file(state, src, metadata={"format": "pt", "modelspec.title": "x"})
    dst = tmp_path / "half.safetensors"
    result = tensorsafe.convert(src, dst, options=ConvertOptions(dtype="fp16"))
    with safe_open(dst, "pt") as f:
        assert f.metadata() == {"format": "pt", "modelspec.title": "x"}
    assert not result.dropped and _same(load_file(dst)["layer.weight"], state["layer.weight"].half())


def test_what_safetensors_cannot_hold_is_refused_by_name(tmp_path):
    complex_file = tmp_path / "c.pt"
    torch.save({"layer.weight": torch.ones(2, 2), "phase": torch.ones(3, dtype=torch.complex128)}, complex_file)
    with pytest.raises(ParseError, match="'phase' is complex128, which safetensors cannot store"):
        tensorsafe.convert(complex_file, tmp_path / "c.safetensors")
    clash = tmp_path / "clash.pt"
    torch.save({"a.b": torch.ones(2), "a": {"b": torch.zeros(2)}, "c": torch.ones(1)}, clash)
    with pytest.raises(ParseError, match="two tensors would both be named 'a.b'"):
        tensorsafe.convert(clash, tmp_path / "clash.safetensors")
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*tensorsafe-tmp*"))


@pytest.mark.parametrize("state", [{"w": torch.randn(4, 4)}, {"weight": torch.randn(3)}, {"bias": torch.randn(1, 5)}])
def test_a_lone_tensor_is_weights_not_an_embedding(tmp_path, state):
    """Regression: one tensor under a plain name was converted as a textual-inversion embedding (renamed
    emb_params). Only a token-like name or a text encoder's width makes an embedding."""
    torch.save(state, tmp_path / "w.pt")
    result = tensorsafe.convert(tmp_path / "w.pt", tmp_path / "w.safetensors")
    assert "embedding" not in result.direction
    assert list(load_file(tmp_path / "w.safetensors")) == list(state)


def test_a_token_named_vector_is_still_an_embedding(tmp_path):
    torch.save({"<cat-toy>": torch.randn(768)}, tmp_path / "learned_embeds.bin")
    result = tensorsafe.convert(tmp_path / "learned_embeds.bin", tmp_path / "cat.safetensors")
    assert "embedding" in result.direction and list(load_file(tmp_path / "cat.safetensors")) == ["emb_params"]
