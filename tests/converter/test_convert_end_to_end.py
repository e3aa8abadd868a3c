"""Conversions checked by the real libraries: diffusers loads what we write, to the same tensors.

For each family: a tiny random-weight diffusers pipeline is saved as the reference folder; our
reverse conversion writes a single file, which diffusers' own ``from_single_file`` (offline, with
``config=`` the reference folder) must load to the reference tensors; our forward conversion of
that single file (as safetensors and as a Lightning-style .ckpt) must write a folder that
``from_pretrained`` loads with no missing or unexpected keys, to the same tensors, bit for bit.
"""
from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

from tensorsafe.converter.run import convert
from tests import sd_tiny

CASES = [("sd1", 4), ("sd2", 4), ("sd1", 9), ("sdxl", 4), ("sdxl-refiner", 4)]
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}


def _pipeline_class(family: str, in_channels: int):
    import diffusers

    if in_channels == 9:
        return diffusers.StableDiffusionInpaintPipeline if family != "sdxl" else diffusers.StableDiffusionXLInpaintPipeline
    return getattr(diffusers, PIPELINES[family])


def _reference_folder(tmp_path, family: str, in_channels: int):
    """The tiny models saved as a diffusers pipeline folder (our converter never touches this)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from tensorsafe.converter.tokenizer import tokenizer_files

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    models = sd_tiny.models(family, in_channels)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir(exist_ok=True)
    for name, data in tokenizer_files("<|endoftext|>").items():
        (tok_dir / name).write_bytes(data)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    scheduler = (EulerDiscreteScheduler if family.startswith("sdxl") else DDIMScheduler)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    kwargs = dict(unet=models["unet"], vae=models["vae"], scheduler=scheduler)
    if family in ("sd1", "sd2"):
        kwargs.update(text_encoder=models["text_encoder"], tokenizer=tokenizer, safety_checker=None,
                      feature_extractor=None, requires_safety_checker=False)
    elif family == "sdxl":
        kwargs.update(text_encoder=models["text_encoder"], tokenizer=tokenizer,
                      text_encoder_2=models["text_encoder_2"], tokenizer_2=tokenizer)
    else:
        kwargs.update(text_encoder=None, tokenizer=None, text_encoder_2=models["text_encoder_2"], tokenizer_2=tokenizer)
    pipe = _pipeline_class(family, in_channels)(**kwargs)
    folder = tmp_path / "reference"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder, pipe


def _state(pipe) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            for k, v in module.state_dict().items():
                if k.endswith("position_ids"):
                    continue
                out[f"{name}/{k.removeprefix('text_model.')}"] = v
    return out


def _assert_same_state(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref), (sorted(set(ref) - set(ours))[:5], sorted(set(ours) - set(ref))[:5])
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k


@pytest.mark.slow
@pytest.mark.parametrize("family,in_channels", CASES, ids=[f"{f}-{c}ch" for f, c in CASES])
def test_round_trip_through_diffusers(tmp_path, family, in_channels):
    reference, pipe = _reference_folder(tmp_path, family, in_channels)
    cls = _pipeline_class(family, in_channels)
    ref_state = _state(pipe)

    single = tmp_path / "model.safetensors"
    convert(reference, single)
    loaded = cls.from_single_file(str(single), config=str(reference), local_files_only=True)
    _assert_same_state(_state(loaded), ref_state)

    folder = tmp_path / "converted"
    result = convert(single, folder, model_type=family)
    assert result.family.startswith(family.split("-")[0])
    again = cls.from_pretrained(folder, local_files_only=True)
    _assert_same_state(_state(again), ref_state)

    back = tmp_path / "back.safetensors"
    convert(folder, back)
    from safetensors.torch import load_file

    a, b = load_file(single), load_file(back)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_ckpt_input_matches_safetensors_input(tmp_path):
    reference, pipe = _reference_folder(tmp_path, "sd1", 4)
    single = tmp_path / "model.safetensors"
    convert(reference, single)
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(single), "global_step": 470000, "epoch": 3}, ckpt)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    convert(single, out_a)
    convert(ckpt, out_b)
    for sub in ("unet", "vae", "text_encoder"):
        name = "model.safetensors" if sub == "text_encoder" else "diffusion_pytorch_model.safetensors"
        assert (out_a / sub / name).read_bytes() == (out_b / sub / name).read_bytes(), sub
    assert json.loads((out_a / "model_index.json").read_text()) == json.loads((out_b / "model_index.json").read_text())
