"""``convert --check-render`` and ``check_render``: a conversion confirmed by a picture, and the top-level API."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from tests.cli_runner import invoke
from PIL import Image
from safetensors.numpy import load_file, save_file

import tensorsafe
from tensorsafe.errors import RenderError
from tests.conftest import FIXTURES
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check") / "tiny-sd1"
    result = tensorsafe.convert(FIXTURES / "tiny-sd1.ckpt", folder)
    assert result.dst == str(folder)
    return folder


def test_cli_convert_check_render_writes_png_beside_output(tmp_path, fixtures_dir):
    dst = tmp_path / "tiny"
    result = invoke(["convert", str(fixtures_dir / "tiny-sd1.ckpt"), str(dst), "--check-render"])
    assert result.exit_code == 0, result.output
    png = tmp_path / "tiny.check.png"
    assert f"check render: {png}" in result.output
    image = Image.open(png)
    assert image.size == (128, 128)  # a quarter of SD1's native 512
    settings = json.loads(image.info["tensorsafe"])
    assert settings["steps"] == 4 and settings["model"] == "tiny"
    assert np.asarray(image).std() > 0  # a picture, not a flat fill


def test_check_render_of_single_file_output_names_png_after_stem(tmp_path, converted):
    single = tmp_path / "back.safetensors"
    tensorsafe.convert(converted, single)
    png = tensorsafe.check_render(single, size=64, steps=1)
    assert png == tmp_path / "back.check.png" and Image.open(png).size == (64, 64)


def test_nan_weights_fail_the_check_with_file_named(tmp_path, converted):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.bias"] = np.full_like(state["conv_out.bias"], np.nan)
    save_file(state, weights)
    with pytest.raises(RenderError, match="NaN") as err:
        tensorsafe.check_render(broken, size=64, steps=1)
    assert str(broken) in str(err.value)
    assert not (tmp_path / "broken.check.png").exists()


def test_cli_check_render_failure_is_one_line_and_keeps_output(tmp_path, converted):
    single = tmp_path / "nan.safetensors"
    tensorsafe.convert(converted, single)
    state = load_file(single)
    key = next(k for k in state if k.endswith("out.2.bias") and k.startswith("model.diffusion_model"))
    state[key] = np.full_like(state[key], np.nan)
    save_file(state, single)
    dst = tmp_path / "out"
    result = invoke(["convert", str(single), str(dst), "--check-render", "-q"])
    assert result.exit_code == 2
    assert "converted, but the check render failed" in result.output and "NaN" in result.output
    assert len(result.output.strip().splitlines()) == 1 and str(dst) in result.output
    assert (dst / "model_index.json").is_file()  # the conversion itself is kept
    assert not (tmp_path / "out.check.png").exists()


def test_check_render_without_render_extra_fails_before_converting(tmp_path, fixtures_dir, monkeypatch):
    import tensorsafe.cli.render as cli_render

    monkeypatch.setattr(cli_render, "RENDER_EXTRA", ("torch", "tensorsafe_no_such_module"))
    dst = tmp_path / "out"
    result = invoke(["convert", str(fixtures_dir / "tiny-sd1.ckpt"), str(dst), "--check-render"])
    assert result.exit_code == 2 and "render extra" in result.output
    assert not dst.exists()


def test_top_level_render_matches_pipeline_render(tmp_path, converted):
    from tensorsafe.pipeline import render

    a = tensorsafe.render(converted, "a red apple", steps=1, size=64, seed=3)
    b = render(converted, "a red apple", steps=1, size=64, seed=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_top_level_api_imports_no_torch_and_convert_is_callable():
    code = ("import sys, tensorsafe; assert callable(tensorsafe.convert) and callable(tensorsafe.render); "
            "from tensorsafe.converter.run import convert; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
