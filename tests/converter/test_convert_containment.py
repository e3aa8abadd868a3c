"""A model folder is untrusted: convert and render read only files inside it (tensorsafe.paths).

For each way a crafted folder could point outside itself, a file is planted OUTSIDE the folder with
recognisable bytes; the command must fail with one line and exit code 2, leave that file as it was,
leave no output, and write its bytes nowhere.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.cli_runner import invoke
from safetensors.numpy import load_file, save_file

from tensorsafe.converter.sources import open_file
from tensorsafe.errors import ContainmentError
from tensorsafe.paths import Contained
from tests.conftest import FIXTURES

MARKER = b"0UTSIDE!"
TINY = FIXTURES / "tiny-sd1.ckpt"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The tiny SD1 checkpoint as a diffusers folder (written once, copied per test)."""
    folder = tmp_path_factory.mktemp("containment") / "model"
    result = invoke(["convert", "-q", str(TINY), str(folder)])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def model(tmp_path, converted) -> Path:
    return Path(shutil.copytree(converted, tmp_path / "model"))


def _marked(weights: Path) -> dict[str, np.ndarray]:
    """The same tensors as ``weights``, every byte of them the marker pattern."""
    out = {}
    for name, array in load_file(weights).items():
        raw = (MARKER * (array.nbytes // len(MARKER) + 1))[:array.nbytes]
        out[name] = np.frombuffer(raw, dtype=array.dtype).reshape(array.shape).copy()
    return out


@pytest.fixture
def outside(tmp_path, model) -> Path:
    """A valid UNet weights file outside the model folder, every tensor byte the marker."""
    path = tmp_path / "elsewhere" / "x.safetensors"
    path.parent.mkdir()
    save_file(_marked(model / WEIGHTS), str(path))
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _refused(tmp_path: Path, args: list[str], outside: Path, entry: str) -> None:
    before = outside.read_bytes()
    existing = set(tmp_path.iterdir())
    result = invoke(args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("tensorsafe: error:"), result.output
    assert "Traceback" not in result.output and entry in lines[0] and "may only name files inside" in lines[0]
    assert outside.read_bytes() == before
    assert set(tmp_path.iterdir()) == existing, "an output (or a staging copy) was left"
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and outside.parent not in path.parents:
            assert MARKER not in path.read_bytes(), path


def _index(folder: Path, names: list[str]) -> None:
    """Replace the UNet's weights file by a shard index naming ``names``."""
    keys = list(load_file(folder / WEIGHTS))
    (folder / WEIGHTS).unlink()
    weight_map = {key: names[i % len(names)] for i, key in enumerate(keys)}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def _convert(tmp_path: Path, model: Path) -> list[str]:
    return ["convert", str(model), str(tmp_path / "out.safetensors")]


def _render(tmp_path: Path, model: Path) -> list[str]:
    return ["render", str(model), "-p", "a cat", "--steps", "1", "--size", "64", "-o", str(tmp_path / "out.png")]


COMMANDS = [pytest.param(_convert, id="convert"), pytest.param(_render, id="render")]


def _craft(vector: str, model: Path, outside: Path) -> str:
    """Make ``model`` point at ``outside`` one way; returns the entry the refusal must name."""
    if vector == "index-dotdot":
        _index(model, ["../../elsewhere/x.safetensors"])
        return "../../elsewhere/x.safetensors"
    if vector == "index-absolute":
        _index(model, [str(outside)])
        return str(outside)
    if vector == "index-symlinked-shard":
        _index(model, ["diffusion_pytorch_model-00001-of-00001.safetensors"])
        (model / "unet" / "diffusion_pytorch_model-00001-of-00001.safetensors").symlink_to(outside)
        return "diffusion_pytorch_model-00001-of-00001.safetensors"
    if vector == "symlinked-weights":
        (model / WEIGHTS).unlink()
        (model / WEIGHTS).symlink_to(outside)
        return WEIGHTS
    if vector == "symlinked-subfolder":
        elsewhere_unet = outside.parent / "unet"
        shutil.move(str(model / "unet"), elsewhere_unet)
        shutil.copy(outside, elsewhere_unet / "diffusion_pytorch_model.safetensors")
        (model / "unet").symlink_to(elsewhere_unet, target_is_directory=True)
        return "unet"
    if vector == "symlinked-config":
        config = json.loads((model / "unet" / "config.json").read_text())
        config["_marker"] = MARKER.decode()
        target = outside.parent / "config.json"
        target.write_text(json.dumps(config))
        (model / "unet" / "config.json").unlink()
        (model / "unet" / "config.json").symlink_to(target)
        return "unet/config.json"
    if vector == "model-index-dotdot":
        index = json.loads((model / "model_index.json").read_text())
        index["../elsewhere"] = ["diffusers", "UNet2DConditionModel"]
        (model / "model_index.json").write_text(json.dumps(index))
        return "../elsewhere"
    raise AssertionError(vector)


VECTORS = ["index-dotdot", "index-absolute", "index-symlinked-shard", "symlinked-weights", "symlinked-subfolder",
           "symlinked-config", "model-index-dotdot"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("vector", VECTORS)
def test_a_folder_that_points_outside_is_refused(tmp_path, model, outside, vector, command):
    entry = _craft(vector, model, outside)
    _refused(tmp_path, command(tmp_path, model), outside, entry)


def test_render_checks_the_folder_before_its_preflight_reads_it(tmp_path, model, outside):
    """The memory preflight reads weight headers through shard indexes: containment comes first."""
    entry = _craft("index-dotdot", model, outside)
    _refused(tmp_path, [*_render(tmp_path, model), "--max-memory", "1K"], outside, entry)


def test_render_refuses_a_tokenizer_file_that_is_a_symlink_outside(tmp_path, model, outside):
    target = outside.parent / "vocab.json"
    target.write_bytes((model / "tokenizer" / "vocab.json").read_bytes()[:-1] + b', "' + MARKER + b'": 999999}')
    (model / "tokenizer" / "vocab.json").unlink()
    (model / "tokenizer" / "vocab.json").symlink_to(target)
    _refused(tmp_path, _render(tmp_path, model), outside, "tokenizer/vocab.json")


def test_config_folder_with_a_symlink_outside_is_refused(tmp_path, model, outside):
    """``convert --config DIR``: the configs are copied into the output, so DIR is contained too."""
    _craft("symlinked-config", model, outside)
    args = ["convert", str(TINY), str(tmp_path / "out"), "--config", str(model)]
    _refused(tmp_path, args, outside, "unet/config.json")


@pytest.mark.parametrize("vector", ["symlinked-weights", "index-symlinked-shard"])
def test_allow_symlinks_follows_them_and_the_summary_names_them(tmp_path, model, outside, vector):
    entry = _craft(vector, model, outside)
    dst = tmp_path / "out.safetensors"
    result = invoke(["convert", "--allow-symlinks", str(model), str(dst)])
    assert result.exit_code == 0, result.output
    assert "--allow-symlinks" in result.output and entry in result.output
    assert MARKER in dst.read_bytes()  # followed on purpose: the linked weights are what was converted


def test_render_with_allow_symlinks_loads_weights_kept_elsewhere(tmp_path, model):
    shared = tmp_path / "shared" / "unet.safetensors"
    shared.parent.mkdir()
    shutil.move(str(model / WEIGHTS), shared)
    (model / WEIGHTS).symlink_to(shared)
    result = invoke([*_render(tmp_path, model), "--allow-symlinks", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file()


def test_links_inside_the_folder_are_fine(tmp_path, model):
    shutil.move(str(model / WEIGHTS), model / "unet" / "real.safetensors")
    (model / WEIGHTS).symlink_to("real.safetensors")
    result = invoke(["convert", "-q", str(model), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 0, result.output


def test_huggingface_cache_snapshot_links_are_accepted(tmp_path, converted):
    """A snapshot of huggingface_hub's cache links every file to ``../../blobs/HASH``: the cache made
    those links, so they are followed without --allow-symlinks (and a link elsewhere still is not)."""
    repo = tmp_path / "hub" / "models--me--sd"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for i, path in enumerate(sorted(p for p in converted.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(path, blob)
        link = snapshot / path.relative_to(converted)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    result = invoke(["convert", "-q", str(snapshot), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 0, result.output
    stray = tmp_path / "stray.safetensors"
    shutil.copy(converted / WEIGHTS, stray)
    (snapshot / WEIGHTS).unlink()
    (snapshot / WEIGHTS).symlink_to(stray)
    result = invoke(["convert", "-q", str(snapshot), str(tmp_path / "out2.safetensors")])
    assert result.exit_code == 2 and WEIGHTS in result.output, result.output


@pytest.mark.parametrize("where", ["inside", "same", "parent-of-file"])
def test_a_destination_overlapping_the_source_is_refused(tmp_path, model, where):
    if where == "parent-of-file":
        src = tmp_path / "ckpts" / "tiny.ckpt"
        src.parent.mkdir()
        shutil.copy(TINY, src)
        args, guarded = ["convert", "--overwrite", str(src), str(src.parent)], src.parent
    else:
        dst = model / "out.safetensors" if where == "inside" else model
        args, guarded = ["convert", "--overwrite", str(model), str(dst)], model
    before = _tree(guarded)
    result = invoke(args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "destination" in lines[0], result.output
    assert _tree(guarded) == before


def test_a_file_swapped_for_a_symlink_after_resolving_is_refused(tmp_path, model, outside):
    """Between resolving a name and opening it, a link swapped in is caught by what was opened."""
    box = Contained(model)
    real = box.resolve(WEIGHTS)
    real.unlink()
    real.symlink_to(outside)
    with pytest.raises(ContainmentError, match="changed"):
        open_file(real, folder=box)


@pytest.mark.parametrize("name", ["/etc/passwd", "C:\\Windows\\x", "..", "unet/../../x", "a\x00b", ""])
def test_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(ContainmentError):
        Contained(tmp_path).resolve(name)


def test_a_name_that_climbs_and_comes_back_is_fine(model):
    assert Contained(model).resolve("../vae", under="unet") == (model / "vae").resolve()


def test_a_name_is_judged_as_written_not_only_as_resolved(model):
    """``link/../../x`` with ``link`` deep inside resolves back inside, but names a file outside to any
    reader that normalises the name first: refused."""
    (model / "unet" / "deep").mkdir()
    (model / "link").symlink_to(model / "unet" / "deep", target_is_directory=True)
    with pytest.raises(ContainmentError, match=r"'\.\.' leads out"):
        Contained(model).resolve("link/../../model_index.json")
