"""``render`` and ``tensorsafe render``: from a folder or a single file, PNG metadata, dtypes, errors."""
from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from tests.cli_runner import invoke
from PIL import Image

from tensorsafe.converter.run import convert
from tensorsafe.errors import ParseError, UsageError
from tensorsafe.pipeline import render
from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.mark.slow
def test_single_file_renders_as_its_folder(tmp_path):
    """The tiny folder -> one file (tensorsafe convert) -> rendered directly, and via a converted folder."""
    folder = pt.saved_folder("sdxl-refiner")
    single = tmp_path / "model.safetensors"
    convert(folder, single)
    converted = tmp_path / "converted"
    convert(single, converted, config=str(folder))
    kwargs = dict(steps=2, seed=5, negative_prompt="ugly")
    from_folder = render(folder, "a red bicycle", **kwargs)
    from_file = render(single, "a red bicycle", config=folder, **kwargs)
    from_converted = render(converted, "a red bicycle", **kwargs)
    assert from_folder.size == (pt.SIZE, pt.SIZE)
    assert np.array_equal(_pixels(from_folder), _pixels(from_file))
    assert np.array_equal(_pixels(from_folder), _pixels(from_converted))


def test_single_file_with_derived_configs(tmp_path):
    """Without --config the converter derives every config from the shapes; the result still renders."""
    single = tmp_path / "model.safetensors"
    convert(pt.saved_folder("sd1"), single)
    image = render(single, "a cat", steps=1, size=(64, 48))
    assert image.size == (64, 48)
    assert _pixels(image).std() > 0
    converted = tmp_path / "converted"
    convert(single, converted)
    assert np.array_equal(_pixels(image), _pixels(render(converted, "a cat", steps=1, size=(64, 48))))


def test_png_carries_prompt_and_settings(tmp_path):
    out = tmp_path / "out.png"
    prompt = "ein Fuchs im Schnee, 雪の中の狐 🦊"
    render(pt.saved_folder("sd1-inpaint"), prompt, "blurry", steps=2, seed=3, guidance=5.0, scheduler="ddim",
           output=out)
    text = Image.open(out).text
    assert text["parameters"].startswith(f"{prompt}\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 5.0, "
                                         "Seed: 3, Size: 64x64")
    settings = json.loads(text["tensorsafe"])
    assert settings["prompt"] == prompt and settings["task"] == "inpaint" and settings["size"] == [64, 64]
    assert not list(tmp_path.glob(".*tensorsafe-tmp"))


@pytest.mark.slow
def test_half_precision_renders_close_to_fp32():
    from tensorsafe.pipeline.pipeline import Pipeline

    folder = pt.saved_folder("sd1")
    full = Pipeline.from_folder(folder)("a cat", steps=1).image
    for dtype, tolerance in (("fp16", 0.02), ("bf16", 0.05)):
        pipe = Pipeline.from_folder(folder, dtype=dtype)
        assert next(pipe.unet.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        assert pipe.vae_dtype == (torch.float32 if dtype == "fp16" else torch.bfloat16)  # force_upcast, as diffusers
        half = pipe("a cat", steps=1).image
        assert half.dtype == torch.float32 and torch.isfinite(half).all()
        assert (full - half).abs().mean().item() < tolerance, dtype


def _broken_copy(tmp_path, case="sd1"):
    folder = tmp_path / "broken"
    shutil.copytree(pt.saved_folder(case), folder)
    return folder


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _broken_copy(tmp_path)
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["decoder.conv_out.weight"]
    save_file(state, path)
    with pytest.raises(ParseError, match=r"vae: 1 tensors .* missing: decoder\.conv_out\.weight") as info:
        render(folder, "a cat", steps=1)
    assert "diffusion_pytorch_model.safetensors" in str(info.value)


def test_mismatched_shape_names_key_expected_and_found(tmp_path):
    folder = _broken_copy(tmp_path)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(ParseError, match=r"unet: down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k"
                                         r"\.weight has shape \[32, 32\], but unet/config\.json implies \[32, 48\]"):
        render(folder, "a cat", steps=1)


def test_tokenizer_beyond_the_text_encoder_vocabulary_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _broken_copy(tmp_path)
    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(path)
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    state[key] = state[key][:1000].clone()
    save_file(state, path)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    (folder / "text_encoder" / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(ParseError, match="only 1000 token embeddings"):
        render(folder, "a photo of a cat", steps=1)


def test_usage_errors(tmp_path):
    folder = pt.saved_folder("sd1")
    with pytest.raises(UsageError, match="multiple of 8"):
        render(folder, "a cat", steps=1, size=60)
    with pytest.raises(UsageError, match="scheduler"):
        render(folder, "a cat", steps=1, scheduler="pndm")
    with pytest.raises(UsageError, match="dtype"):
        render(folder, "a cat", steps=1, dtype="int8")
    with pytest.raises(UsageError, match="strength"):
        render(folder, "a cat", steps=1, strength=0.5)
    with pytest.raises(UsageError, match="does not exist"):
        render(tmp_path / "nothing", "a cat")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            render(folder, "a cat", steps=1, device="cuda")


def test_cli_renders_png(tmp_path):
    out = tmp_path / "cat.png"
    result = invoke(["render", str(pt.saved_folder("sd1")), "--prompt", "a cat", "--steps", "2",
                                                 "--size", "64x48", "--seed", "9", "--scheduler", "ddim", "-o",
                                                 str(out)])
    assert result.exit_code == 0, result.output
    assert "rendered" in result.output and out.is_file()
    image = Image.open(out)
    assert image.size == (64, 48)
    assert json.loads(image.text["tensorsafe"])["seed"] == 9


def test_cli_refuses_bad_options(tmp_path):
    folder = str(pt.saved_folder("sd1"))
    bad_size = invoke(["render", folder, "-p", "x", "--size", "big", "-o", str(tmp_path / "a.png")])
    assert bad_size.exit_code == 2 and "WIDTHxHEIGHT" in bad_size.output
    no_prompt = invoke(["render", folder, "-o", str(tmp_path / "a.png")])
    assert no_prompt.exit_code == 2 and "--prompt" in no_prompt.output
    broken = invoke(["render", str(tmp_path), "-p", "x", "-o", str(tmp_path / "a.png")])
    assert broken.exit_code == 2 and "tensorsafe: error:" in broken.output  # a ParseError, as one line


def test_importing_the_cli_and_render_does_not_import_torch():
    code = "import sys, tensorsafe.cli.render, tensorsafe.pipeline; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_output_in_a_missing_folder_is_refused_before_the_render(tmp_path, monkeypatch):
    """Regression: the PNG's folder was first tried after the render (minutes on a CPU), then a traceback."""
    render_module = importlib.import_module("tensorsafe.pipeline.render")  # the package's ``render`` is the function

    def rendered(*args, **kwargs):
        raise AssertionError("the render started before its output was checked")

    monkeypatch.setattr(render_module, "plan_render", rendered)
    target = tmp_path / "missing" / "cat.png"
    with pytest.raises(UsageError, match="does not exist"):
        render(pt.saved_folder("sd1"), "a cat", steps=1, output=target)
    result = invoke(["render", str(pt.saved_folder("sd1")), "-p", "a cat", "--steps", "1", "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and str(tmp_path / "missing") in result.stderr
    assert not (tmp_path / "missing").exists()


def test_an_interrupted_render_keeps_the_old_picture(tmp_path, monkeypatch):
    """A render stopped midway (Ctrl-C, a kill) leaves the existing PNG as it was and nothing beside it."""
    render_module = importlib.import_module("tensorsafe.pipeline.render")  # the package's ``render`` is the function

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "cat.png"
    out.write_bytes(b"the old picture")
    monkeypatch.setattr(render_module, "plan_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render(pt.saved_folder("sd1"), "a cat", steps=1, output=out)
    assert out.read_bytes() == b"the old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]
