"""Tiny random-weight diffusers folders for the reference-pipeline tests, and their diffusers pipelines.

The models are ``tests/sd_tiny``'s, except that the text encoders have CLIP's real 49408-token
vocabulary, so the bundled tokenizer (what ``tensorsafe convert`` writes) can drive them. Each
folder is saved by diffusers itself, with the tokenizer files the converter writes, so both
pipelines read the very same files. Nothing here is product code.
"""
from __future__ import annotations

import functools
import json
import logging
import warnings
from pathlib import Path

import pytest

from tests import sd_tiny

VOCAB = 49408
PADS = {"sd1": ("<|endoftext|>",), "sd2": ("!",), "sdxl": ("<|endoftext|>", "!"), "sdxl-refiner": (None, "!")}
# name -> (family, unet in_channels, prediction type, extra scheduler settings)
CASES = {
    "sd1": ("sd1", 4, "epsilon", {}),
    "sd2": ("sd2", 4, "v_prediction", {}),
    "sd2-zsnr": ("sd2", 4, "v_prediction", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    "sdxl": ("sdxl", 4, "epsilon", {}),
    "sdxl-refiner": ("sdxl-refiner", 4, "epsilon", {}),
    "sd1-inpaint": ("sd1", 9, "epsilon", {}),
    "sd2-depth": ("sd2", 5, "epsilon", {}),
    "sd1-pix2pix": ("sd1", 8, "epsilon", {}),
    "sdxl-inpaint": ("sdxl", 9, "epsilon", {}),
}
SIZE = 64   # unet sample_size 8 x VAE factor 8


def _quiet():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@functools.lru_cache(maxsize=None)
def models(family: str, in_channels: int = 4) -> dict:
    _quiet()
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    out = {"unet": UNet2DConditionModel(**sd_tiny.unet_kwargs(family, in_channels)),
           "vae": AutoencoderKL(**sd_tiny.VAE_KWARGS)}
    if family != "sdxl-refiner":
        act = "gelu" if family == "sd2" else "quick_gelu"
        out["text_encoder"] = CLIPTextModel(CLIPTextConfig(**dict(sd_tiny.te_kwargs(32, act), vocab_size=VOCAB)))
    if family.startswith("sdxl"):
        kwargs = dict(sd_tiny.te_kwargs(sd_tiny.TE2_WIDTH, "gelu", sd_tiny.TE2_PROJECTION), vocab_size=VOCAB)
        out["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**kwargs))
    for m in out.values():
        m.eval()
    return out


def scheduler_for(family: str, prediction: str, extra: dict):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  prediction_type=prediction)
    if family.startswith("sdxl"):
        return EulerDiscreteScheduler(**common, timestep_spacing="leading", **extra)
    return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, **extra)


def pipeline_class(family: str, in_channels: int):
    import diffusers

    if in_channels == 9:
        return (diffusers.StableDiffusionXLInpaintPipeline if family == "sdxl"
                else diffusers.StableDiffusionInpaintPipeline)
    if in_channels == 8:
        return diffusers.StableDiffusionInstructPix2PixPipeline
    if in_channels == 5:
        return diffusers.StableDiffusionDepth2ImgPipeline
    return {"sd1": diffusers.StableDiffusionPipeline, "sd2": diffusers.StableDiffusionPipeline,
            "sdxl": diffusers.StableDiffusionXLPipeline,
            "sdxl-refiner": diffusers.StableDiffusionXLImg2ImgPipeline}[family]


def build_pipeline(case: str):
    """The diffusers pipeline object of one case (models shared through the cache: do not mutate)."""
    from transformers import CLIPTokenizer

    family, in_channels, prediction, extra = CASES[case]
    ms = models(family, in_channels)
    toks = []
    for pad in PADS[family]:
        if pad is None:
            toks.append(None)
            continue
        folder = _token_folder(pad)
        toks.append(CLIPTokenizer.from_pretrained(folder))
    kwargs = dict(unet=ms["unet"], vae=ms["vae"], scheduler=scheduler_for(family, prediction, extra))
    if family in ("sd1", "sd2"):
        kwargs.update(text_encoder=ms["text_encoder"], tokenizer=toks[0])
        if in_channels == 5:
            kwargs.update(depth_estimator=None, feature_extractor=None)
        elif in_channels == 8:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif family == "sdxl":
        kwargs.update(text_encoder=ms["text_encoder"], tokenizer=toks[0], text_encoder_2=ms["text_encoder_2"],
                      tokenizer_2=toks[1])
    else:
        kwargs.update(text_encoder=None, tokenizer=None, text_encoder_2=ms["text_encoder_2"], tokenizer_2=toks[1],
                      requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    return pipeline_class(family, in_channels)(**kwargs)


@functools.lru_cache(maxsize=None)
def _token_folder(pad: str) -> Path:
    import atexit
    import shutil
    import tempfile

    from tensorsafe.converter.tokenizer import tokenizer_files

    folder = Path(tempfile.mkdtemp(prefix="tensorsafe-tok-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name, data in tokenizer_files(pad).items():
        (folder / name).write_bytes(data)
    return folder


def save_folder(case: str, dst: Path) -> Path:
    """The case saved as a diffusers folder, with the converter's tokenizer files."""
    from tensorsafe.converter.tokenizer import tokenizer_files

    _quiet()
    pipe = build_pipeline(case)
    pipe.save_pretrained(dst, safe_serialization=True)
    family = CASES[case][0]
    for folder, pad in zip(("tokenizer", "tokenizer_2"), PADS[family]):
        if pad is None:
            continue
        for old in (dst / folder).iterdir():
            old.unlink()
        for name, data in tokenizer_files(pad).items():
            (dst / folder / name).write_bytes(data)
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_class_name"] == type(pipe).__name__
    return dst


# ---- shared folders and diffusers renders ------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def saved_folder(case: str) -> Path:
    """The case's folder, saved once per test session (removed at exit)."""
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"tensorsafe-{case}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return save_folder(case, root / case)


def pipeline_loader():
    """Our pipelines over the saved tiny folders, each loaded once (a module-scoped fixture returns this)."""
    from tensorsafe.pipeline.pipeline import Pipeline

    return functools.cache(lambda case: Pipeline.from_folder(saved_folder(case)))


def task_inputs(case: str) -> dict:
    """The inputs ``tensorsafe.pipeline.render`` generates for this case's model."""
    from tensorsafe.pipeline.images import generated_inputs

    family, in_channels = CASES[case][:2]
    task = {9: "inpaint", 5: "depth", 8: "pix2pix"}.get(in_channels,
                                                          "img2img" if family == "sdxl-refiner" else "text2img")
    return generated_inputs(task, SIZE, SIZE)


def diffusers_render(case: str, scheduler: str, *, prompt: str, negative_prompt: str = "", steps: int = 2,
                     seed: int = 0, guidance: float = 7.5):
    """(final latents, image as float numpy HWC in [0, 1]) from diffusers' own pipeline on the saved folder."""
    import torch
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    _quiet()
    family, in_channels = CASES[case][:2]
    folder = saved_folder(case)
    cls = pipeline_class(family, in_channels)
    if in_channels == 5:  # no DPT depth estimator in a converted folder: build it around the saved components
        pipe = build_pipeline(case)
    else:
        pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler}[scheduler].from_pretrained(
        folder, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    inputs = task_inputs(case)
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative_prompt or None)
    if "mask" in inputs:
        kwargs.update(image=inputs["image"], mask_image=inputs["mask"], height=SIZE, width=SIZE, strength=1.0)
    elif "depth" in inputs:
        kwargs.update(image=inputs["image"], depth_map=torch.from_numpy(inputs["depth"])[None], strength=1.0)
    elif "image" in inputs:
        kwargs.update(image=inputs["image"])
        if family == "sdxl-refiner":
            kwargs.update(strength=1.0)
    else:
        kwargs.update(height=SIZE, width=SIZE)
    seen = {}

    def keep(pipe, i, t, tensors):
        seen.update(tensors)
        return tensors

    out = pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
               callback_on_step_end=keep, **kwargs)
    return seen["latents"], out.images[0]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread (less sync overhead, no fight with other work on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
