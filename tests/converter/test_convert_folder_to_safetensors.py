"""``tensorsafe convert ./repo ./repo-safetensors``: a folder of .bin weights to the same folder in safetensors.

Oracle: transformers' ``from_pretrained`` on the converted folder gives the logits of the original
model. transformers 5 writes only safetensors, so the ``.bin`` folders are written here the way
transformers 4's ``save_pretrained(safe_serialization=False)`` wrote them: ``torch.save`` of the
state dict (tied weights share one storage), sharded by huggingface_hub's own splitter with the
``pytorch_model{suffix}.bin`` pattern and a ``pytorch_model.bin.index.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tensorsafe
from tensorsafe.errors import ContainmentError, UsageError

transformers = pytest.importorskip("transformers")
GPT2 = dict(n_embd=16, n_layer=2, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
TOKENS = torch.tensor([[1, 5, 7, 9, 2]])


def _save_bin(model, folder: Path, max_shard_size: str | None = None) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    folder.mkdir()
    model.config.save_pretrained(folder)
    state = model.state_dict()
    if max_shard_size is None:
        torch.save(state, folder / "pytorch_model.bin")
        return
    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                              max_shard_size=max_shard_size)
    for name, keys in split.filename_to_tensors.items():
        torch.save({k: state[k] for k in keys}, folder / name)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _logits(folder: Path) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def test_tied_model_gives_the_same_logits_and_no_pickle_is_left(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).eval()
    src = tmp_path / "repo"
    _save_bin(model, src)
    (src / "tokenizer_config.json").write_text('{"model_max_length": 32}')
    torch.save({"learning_rate": 0.1}, src / "training_args.bin")   # a pickle, but not weights
    torch.save({"step": 3}, src / "trainer_state")                   # a torch zip under a name with no suffix
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    before = _tree(src)
    dst = tmp_path / "repo-safetensors"
    result = tensorsafe.convert(src, dst)

    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    assert (dst / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()
    assert {"training_args.bin", "trainer_state"} <= set(result.dropped) and _tree(src) == before
    with safe_open(dst / "model.safetensors", "pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["lm_head.weight"] == "transformer.wte.weight"
        assert "lm_head.weight" not in f.keys()
    with torch.no_grad():
        expected = model(TOKENS).logits
    assert torch.equal(_logits(dst), expected)
    reference = torch.load(src / "pytorch_model.bin", weights_only=True)
    got = load_file(dst / "model.safetensors")
    assert all(torch.equal(got[k], v) for k, v in reference.items() if k != "lm_head.weight")


def test_sharded_model_keeps_its_shards_and_index(tmp_path):
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2, tie_word_embeddings=False)).eval()
    src, dst = tmp_path / "repo", tmp_path / "out"
    _save_bin(model, src, max_shard_size="8KB")
    shards = sorted(p.name for p in src.glob("pytorch_model-*.bin"))
    assert len(shards) > 2
    tensorsafe.convert(src, dst)

    assert not list(dst.glob("*.bin")) and not (dst / "pytorch_model.bin.index.json").exists()
    assert sorted(p.name for p in dst.glob("model-*.safetensors")) == \
        [s.replace("pytorch_model", "model").replace(".bin", ".safetensors") for s in shards]
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    for name, file in index["weight_map"].items():
        with safe_open(dst / file, "pt") as f:
            assert name in f.keys()
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in model.state_dict().values())
    with torch.no_grad():
        assert torch.equal(_logits(dst), model(TOKENS).logits)


def test_diffusers_components_get_their_names(tmp_path):
    from tests import pipeline_tiny as pt

    src = tmp_path / "sd"
    shutil.copytree(pt.saved_folder("sd1"), src)
    originals = {}
    for weights in sorted(src.rglob("*.safetensors")):
        originals[weights.parent.name] = load_file(weights)
        stem = "pytorch_model" if weights.stem == "model" else weights.stem
        torch.save(originals[weights.parent.name], weights.with_name(f"{stem}.bin"))
        weights.unlink()
    dst = tmp_path / "sd-safetensors"
    tensorsafe.convert(src, dst)
    assert not list(dst.rglob("*.bin"))
    for component, tensors in originals.items():
        name = "model.safetensors" if component.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        got = load_file(dst / component / name)
        assert set(got) == set(tensors) and all(torch.equal(got[k], v) for k, v in tensors.items()), component
    assert (dst / "model_index.json").read_bytes() == (src / "model_index.json").read_bytes()


def test_a_folder_without_pickle_weights_is_refused(tmp_path):
    src = tmp_path / "st"
    src.mkdir()
    save_file({"w": torch.ones(2)}, src / "model.safetensors")
    with pytest.raises(UsageError, match="no pickle weights here"):
        tensorsafe.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_index_naming_a_file_outside_is_refused(tmp_path):
    src = tmp_path / "repo"
    src.mkdir()
    torch.save({"w": torch.ones(2)}, tmp_path / "outside.bin")
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.bin"}}))
    with pytest.raises(ContainmentError):
        tensorsafe.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_hub_repository_converts_from_the_cache(hub, tmp_path):
    """hf://OWNER/REPO: downloaded into huggingface_hub's cache (files there are symlinks to blobs), then converted."""
    from tests.cli_runner import invoke


    state = {"encoder.weight": torch.randn(4, 4), "encoder.bias": torch.randn(4)}
    torch.save(state, tmp_path / "weights.bin")
    torch.save({"lr": 0.1}, tmp_path / "args.bin")
    (tmp_path / "config.json").write_text('{"model_type": "tiny"}')
    hub.add_repo("me/tiny", {"pytorch_model.bin": tmp_path / "weights.bin", "training_args.bin": tmp_path / "args.bin",
                             "config.json": tmp_path / "config.json"})
    out = tmp_path / "out"
    run = invoke(["convert", "hf://me/tiny", str(out), "-q"])
    assert run.exit_code == 0, run.output
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    got = load_file(out / "model.safetensors")
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())
