"""Options users reach for: --base for UNet-only files, --vae, --config, --dtype, --ema, unmapped keys."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tensorsafe.converter.run import convert
from tensorsafe.errors import ParseError, UnsupportedModelError
from tests.converter.test_convert_end_to_end import _assert_same_state, _reference_folder, _state


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd1")
    reference, pipe = _reference_folder(tmp, "sd1", 4)
    single = tmp / "model.safetensors"
    convert(reference, single)
    return reference, pipe, single, load_file(single)


def test_unet_only_file_needs_a_base(tmp_path, sd1):
    reference, pipe, _, tensors = sd1
    unet_only = tmp_path / "unet.safetensors"
    save_file({k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}, unet_only)
    with pytest.raises(ParseError, match=r"weights for vae, text_encoder appear to be missing.*base=FOLDER"):
        convert(unet_only, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = convert(unet_only, tmp_path / "out", base=str(reference))
    assert any("taken from the base folder" in n for n in result.notes)
    from diffusers import StableDiffusionPipeline

    _assert_same_state(_state(StableDiffusionPipeline.from_pretrained(tmp_path / "out")), _state(pipe))


def test_cli_base_option_fills_a_unet_only_file(tmp_path, sd1):
    """Regression: the error message told users to pass --base, which the CLI did not have."""
    from tests.cli_runner import invoke


    reference, _, _, tensors = sd1
    unet_only = tmp_path / "unet.safetensors"
    save_file({k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}, unet_only)
    refused = invoke(["convert", str(unet_only), str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--base" in refused.output
    done = invoke(["convert", str(unet_only), str(tmp_path / "b"), "--base", str(reference)])
    assert done.exit_code == 0, done.output
    assert "taken from the base folder" in done.output
    assert (tmp_path / "b" / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_replacement_vae(tmp_path, sd1):
    reference, pipe, single, tensors = sd1
    vae = {k: v + 1 for k, v in tensors.items() if k.startswith("first_stage_model.")}
    vae_file = tmp_path / "better-vae.safetensors"
    save_file(vae, vae_file)
    convert(single, tmp_path / "out", vae=str(vae_file))
    written = load_file(tmp_path / "out" / "vae" / "diffusion_pytorch_model.safetensors")
    original = load_file(reference / "vae" / "diffusion_pytorch_model.safetensors")
    assert set(written) == set(original)
    assert all(torch.equal(written[k], original[k] + 1) for k in original)


def test_config_folder_supplies_configs(tmp_path, sd1):
    reference, _, single, _ = sd1
    convert(single, tmp_path / "out", config=str(reference))
    ours = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    theirs = json.loads((reference / "unet" / "config.json").read_text())
    assert ours["attention_head_dim"] == theirs["attention_head_dim"]
    assert ours["block_out_channels"] == theirs["block_out_channels"]


def test_dtype_cast(tmp_path, sd1):
    _, _, single, tensors = sd1
    convert(single, tmp_path / "out", dtype="fp16")
    unet = load_file(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in unet.values()} == {torch.float16}
    assert torch.equal(unet["conv_in.weight"], tensors["model.diffusion_model.input_blocks.0.0.weight"].half())


def test_ema_weights_are_used_when_asked(tmp_path, sd1):
    _, _, single, tensors = sd1
    unet_keys = [k for k in tensors if k.startswith("model.diffusion_model.")]
    ema = {"model_ema." + k[len("model."):].replace(".", ""): tensors[k] * 2 for k in unet_keys}
    with_ema = tmp_path / "ema.safetensors"
    save_file({**tensors, **ema, "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5)},
              with_ema)
    result = convert(with_ema, tmp_path / "yes", ema="yes")
    unet = load_file(tmp_path / "yes" / "unet" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(unet["conv_in.weight"], tensors["model.diffusion_model.input_blocks.0.0.weight"] * 2)
    assert any("EMA" in n for n in result.notes)
    convert(with_ema, tmp_path / "no", ema="no")
    unet = load_file(tmp_path / "no" / "unet" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(unet["conv_in.weight"], tensors["model.diffusion_model.input_blocks.0.0.weight"])


def test_unknown_keys_fail_unless_allowed(tmp_path, sd1):
    _, _, single, tensors = sd1
    odd = tmp_path / "odd.safetensors"
    save_file({**tensors, "lora_unet_something.alpha": torch.tensor(1.0)}, odd)
    with pytest.raises(ParseError, match="lora_unet_something.alpha.*allow_unmapped=True"):
        convert(odd, tmp_path / "out")
    result = convert(odd, tmp_path / "out", allow_unmapped=True)
    assert result.unmapped == ["lora_unet_something.alpha"]


def test_other_families_are_refused_clearly(tmp_path):
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(4), "img_in.weight": torch.ones(3, 64)}, flux)
    with pytest.raises(UnsupportedModelError, match="Flux.1.*not supported yet"):
        convert(flux, tmp_path / "out")
    assert not (tmp_path / "out").exists()
