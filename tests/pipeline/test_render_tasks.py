"""Render tasks from an input picture against diffusers' pipeline for each task, from the same weights.

img2img (``StableDiffusionImg2ImgPipeline``), inpaint (``StableDiffusionInpaintPipeline``), depth
(``StableDiffusionDepth2ImgPipeline`` with a given ``depth_map``) and instruct-pix2pix
(``StableDiffusionInstructPix2PixPipeline``): our pipeline, given the same picture, mask or depth map,
seed and strength, ends on the same latents and image within the equivalence tests' 1e-3 (tiny random
models, guidance 3, at most two denoising steps: see test_pipeline_equivalence for why). The pictures
here are not the generated ones: odd sizes, a rotated gradient, a rectangular mask, a depth map at
another resolution than the image, so the preprocessing (resizing, binarising, downsampling,
normalising) is what is compared.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from tests.cli_runner import invoke
from PIL import Image

from tensorsafe.errors import ParseError, UsageError
from tensorsafe.pipeline import render
from tensorsafe.pipeline.images import colour_field
from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)

TOLERANCE = 1e-3
GUIDANCE = 3.0
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def ours():
    return pt.pipeline_loader()


def picture(width: int, height: int) -> Image.Image:
    """Not the generated colour field: rotated, so that resizing and the VAE see an uneven picture."""
    return colour_field(width, height).rotate(30, fillcolor=(200, 40, 90))


def rectangle_mask(width: int, height: int) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height * 3 // 4, width // 3:] = 255
    mask[0, 0] = 100  # under half: kept, as diffusers binarises
    return Image.fromarray(mask, "L")


def diffusers_pipe(case: str, cls_name: str, scheduler: str):
    import diffusers

    pt._quiet()
    pipe = pt.build_pipeline(case)   # a new pipeline object around the cached models
    if type(pipe).__name__ != cls_name:
        pipe = getattr(diffusers, cls_name)(**pipe.components)
    pipe.scheduler = {"euler": diffusers.EulerDiscreteScheduler, "ddim": diffusers.DDIMScheduler}[scheduler] \
        .from_pretrained(pt.saved_folder(case), subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_render(case: str, cls_name: str, scheduler: str, *, steps: int, seed: int = 0, **kwargs):
    seen = {}

    def keep(pipe, i, t, tensors):
        seen.update(tensors)
        return tensors

    pipe = diffusers_pipe(case, cls_name, scheduler)
    out = pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
               output_type="np", callback_on_step_end=keep, **kwargs)
    return seen["latents"], out.images[0]


def assert_matches(result, latents, image) -> None:
    assert result.latents.shape == latents.shape
    assert (result.latents - latents).abs().max().item() <= TOLERANCE
    ours_image = result.image[0].permute(1, 2, 0).numpy()
    assert ours_image.shape == image.shape
    assert np.abs(ours_image - image).max() <= TOLERANCE


# ---- img2img --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler,strength", [("euler", 0.6), ("ddim", 0.5), ("euler", 1.0)])
def test_img2img_matches_diffusers(ours, scheduler, strength):
    """A text-to-image model given a picture does img2img: VAE sample, strength-truncated steps, noise added."""
    image = picture(50, 44)   # rounded down to 48x40 and resized (Lanczos), as diffusers' image processor does
    result = ours("sd1")(PROMPT, steps=4 if strength < 1 else 2, seed=3, guidance=GUIDANCE, scheduler=scheduler,
                         image=image, strength=strength)
    latents, expected = diffusers_render("sd1", "StableDiffusionImg2ImgPipeline", scheduler,
                                         steps=4 if strength < 1 else 2, seed=3, image=image, strength=strength,
                                         guidance_scale=GUIDANCE)
    assert result.latents.shape == (1, 4, 5, 6)
    assert_matches(result, latents, expected)


def test_img2img_keeps_the_picture_at_low_strength(ours):
    """Not only equal to diffusers: a low strength ends near the picture's latents, a full one far from them."""
    pipe, image = ours("sd1"), picture(64, 64)
    pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        target = pipe.vae.encode(pixels)[0] * pipe.vae.config["scaling_factor"]
    near = pipe(PROMPT, steps=10, seed=0, guidance=1.0, image=image, strength=0.1).latents
    far = pipe(PROMPT, steps=10, seed=0, guidance=1.0, image=image, strength=1.0).latents
    assert (near - target).abs().mean() < 0.5 * (far - target).abs().mean()


def test_sdxl_refiner_with_a_given_picture_matches_diffusers(ours):
    image = picture(64, 56)
    result = ours("sdxl-refiner")(PROMPT, steps=4, seed=1, guidance=GUIDANCE, scheduler="euler", image=image,
                                  strength=0.5)
    latents, expected = diffusers_render("sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", "euler", steps=4,
                                         seed=1, image=image, strength=0.5, guidance_scale=GUIDANCE)
    assert_matches(result, latents, expected)


def test_sdxl_base_img2img_matches_diffusers(ours):
    image = picture(64, 48)
    result = ours("sdxl")(PROMPT, steps=4, seed=5, guidance=GUIDANCE, scheduler="euler", image=image, strength=0.5)
    latents, expected = diffusers_render("sdxl", "StableDiffusionXLImg2ImgPipeline", "euler", steps=4, seed=5,
                                         image=image, strength=0.5, guidance_scale=GUIDANCE)
    assert_matches(result, latents, expected)


# ---- inpaint --------------------------------------------------------------------------------------------

INPAINT_PIPELINES = {"sd1-inpaint": "StableDiffusionInpaintPipeline", "sdxl-inpaint": "StableDiffusionXLInpaintPipeline"}


@pytest.mark.parametrize("case,scheduler,strength", [("sd1-inpaint", "euler", 1.0), ("sd1-inpaint", "ddim", 1.0),
                                                     ("sd1-inpaint", "euler", 0.75), ("sdxl-inpaint", "ddim", 0.75)])
def test_inpaint_matches_diffusers(ours, case, scheduler, strength):
    """Mask resized and binarised, masked picture's latents (a VAE sample), mask downsampled to the latents;
    under strength 1 the picture's latents are a first VAE sample, noised."""
    image, mask = picture(72, 40), rectangle_mask(30, 20)   # the mask at another size: resized like the image
    steps = 4 if strength < 1 else 2
    result = ours(case)(PROMPT, steps=steps, seed=2, guidance=GUIDANCE, scheduler=scheduler,
                        image=image, mask=mask, strength=strength, height=40, width=72)
    latents, expected = diffusers_render(case, INPAINT_PIPELINES[case], scheduler, steps=steps,
                                         seed=2, image=image, mask_image=mask, height=40, width=72,
                                         strength=strength, guidance_scale=GUIDANCE)
    assert_matches(result, latents, expected)


# ---- instruct-pix2pix -----------------------------------------------------------------------------------

@pytest.mark.parametrize("image_guidance,guidance", [(1.2, GUIDANCE), (2.0, 1.5), (0.8, GUIDANCE)])
def test_pix2pix_matches_diffusers(ours, image_guidance, guidance):
    """Three-way guidance ``[text, image, uncond]``; an image guidance under 1 turns guidance off, as diffusers."""
    image = picture(56, 48)
    result = ours("sd1-pix2pix")(PROMPT, steps=2, seed=4, guidance=guidance, scheduler="euler", image=image,
                                 image_guidance=image_guidance)
    latents, expected = diffusers_render("sd1-pix2pix", "StableDiffusionInstructPix2PixPipeline", "euler",
                                         steps=2, seed=4, image=image, image_guidance_scale=image_guidance,
                                         guidance_scale=guidance)
    assert_matches(result, latents, expected)


# ---- depth ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler,strength", [("ddim", 1.0), ("euler", 0.7)])
def test_depth_with_given_map_matches_diffusers(ours, scheduler, strength):
    """The depth map (here 24x20, the picture 64x48) is resized bicubically to the latents and scaled to [-1, 1]."""
    image = picture(64, 48)
    y, x = np.mgrid[0:20, 0:24].astype(np.float32)
    depth = 3.0 + np.sin(x / 4) * np.cos(y / 5) + x / 10   # any range: only the relative values count
    steps = 3 if strength < 1 else 2
    result = ours("sd2-depth")(PROMPT, steps=steps, seed=6, guidance=GUIDANCE, scheduler=scheduler, image=image,
                               depth=depth, strength=strength)
    latents, expected = diffusers_render("sd2-depth", "StableDiffusionDepth2ImgPipeline", scheduler, steps=steps,
                                         seed=6, image=image, depth_map=torch.from_numpy(depth)[None],
                                         strength=strength, guidance_scale=GUIDANCE)
    assert_matches(result, latents, expected)


# ---- render() and the CLI -------------------------------------------------------------------------------

def _uint8(image_np: np.ndarray) -> np.ndarray:
    return (image_np * 255).round().astype(np.int16)


def test_render_reads_picture_files_and_matches_diffusers(tmp_path):
    """``render(image=PATH, mask=PATH)``: files are read as diffusers reads PIL images; size from the picture."""
    image_file, mask_file = tmp_path / "photo.png", tmp_path / "mask.png"
    picture(72, 44).save(image_file)           # 44 is rounded down to 40, as diffusers' image processor does
    rectangle_mask(72, 44).save(mask_file)
    out = render(pt.saved_folder("sd1-inpaint"), PROMPT, steps=2, seed=2, guidance=GUIDANCE, scheduler="euler",
                 image=image_file, mask=mask_file)
    assert out.size == (72, 40)
    _, expected = diffusers_render("sd1-inpaint", "StableDiffusionInpaintPipeline", "euler", steps=2, seed=2,
                                   image=Image.open(image_file), mask_image=Image.open(mask_file), height=40,
                                   width=72, guidance_scale=GUIDANCE)
    assert np.abs(np.asarray(out).astype(np.int16) - _uint8(expected)).max() <= 1
    settings = json.loads(out.info["tensorsafe"])
    assert settings["task"] == "inpaint" and settings["strength"] == 1.0 and "generated_inputs" not in settings


def test_cli_img2img_writes_what_diffusers_renders(tmp_path):
    image_file = tmp_path / "photo.png"
    picture(64, 48).save(image_file)
    out = tmp_path / "out.png"
    result = invoke(["render", str(pt.saved_folder("sd1")), "-p", PROMPT, "--image",
                                                 str(image_file), "--strength", "0.5", "--steps", "4",
                                                 "--guidance", "3", "--seed", "9", "-o", str(out)])
    assert result.exit_code == 0, result.output
    _, expected = diffusers_render("sd1", "StableDiffusionImg2ImgPipeline", "euler", steps=4, seed=9,
                                   image=Image.open(image_file), strength=0.5, guidance_scale=GUIDANCE)
    written = Image.open(out)
    assert np.abs(np.asarray(written).astype(np.int16) - _uint8(expected)).max() <= 1
    settings = json.loads(written.info["tensorsafe"])
    assert settings["task"] == "img2img" and settings["strength"] == 0.5


def test_cli_pix2pix_and_depth_options(tmp_path):
    image_file, depth_file = tmp_path / "photo.png", tmp_path / "depth.png"
    picture(48, 48).save(image_file)
    ramp = (np.linspace(0, 65535, 40 * 32).reshape(32, 40)).astype(np.uint16)
    Image.fromarray(ramp).save(depth_file)      # 16-bit greyscale, as depth estimators write them
    out = tmp_path / "p2p.png"
    result = invoke(["render", str(pt.saved_folder("sd1-pix2pix")), "-p", "make it snow", "--image",
                                            str(image_file), "--image-guidance", "1.3", "--steps", "1", "-q",
                                            "-o", str(out)])
    assert result.exit_code == 0, result.output
    settings = json.loads(Image.open(out).info["tensorsafe"])
    assert settings["task"] == "pix2pix" and settings["image_guidance"] == 1.3 and Image.open(out).size == (48, 48)
    out = tmp_path / "depth.png"
    result = invoke(["render", str(pt.saved_folder("sd2-depth")), "-p", "a room", "--depth-map",
                                            str(depth_file), "--steps", "2", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    settings = json.loads(Image.open(out).info["tensorsafe"])
    assert settings["task"] == "depth" and settings["generated_inputs"] == ["image"]
    assert settings["strength"] == 1.0   # the picture was made up: all of it is repainted


def test_depth_map_file_is_read_as_its_values(tmp_path):
    """A 16-bit PNG depth map renders as the same map given as an array."""
    from tensorsafe.pipeline.images import load_depth

    ramp = (np.arange(24 * 20).reshape(20, 24) * 100).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "d.png")
    np.testing.assert_array_equal(load_depth(tmp_path / "d.png"), ramp.astype(np.float32))


def test_default_strength_is_diffusers_for_a_given_picture(tmp_path):
    image_file = tmp_path / "photo.png"
    picture(64, 64).save(image_file)
    out = render(pt.saved_folder("sd1"), PROMPT, steps=5, image=image_file)
    assert json.loads(out.info["tensorsafe"])["strength"] == 0.8
    out = render(pt.saved_folder("sd1-inpaint"), PROMPT, steps=1)   # nothing given: both inputs made up
    settings = json.loads(out.info["tensorsafe"])
    assert settings["generated_inputs"] == ["image", "mask"] and settings["strength"] == 1.0


# ---- refusals -------------------------------------------------------------------------------------------

def test_inputs_a_model_cannot_take_are_refused(tmp_path):
    image = picture(64, 64)
    with pytest.raises(UsageError, match="takes no mask: a mask is for inpainting models"):
        render(pt.saved_folder("sd1"), PROMPT, steps=1, image=image, mask=rectangle_mask(64, 64))
    with pytest.raises(UsageError, match="takes no depth_map"):
        render(pt.saved_folder("sd1-pix2pix"), PROMPT, steps=1, depth_map=np.eye(8, dtype=np.float32))
    with pytest.raises(UsageError, match="image_guidance is instruct-pix2pix's"):
        render(pt.saved_folder("sd1"), PROMPT, steps=1, image=image, image_guidance=1.5)
    with pytest.raises(UsageError, match="strength applies to img2img, inpaint and depth renders, not text2img: give an input image"):
        render(pt.saved_folder("sd1"), PROMPT, steps=1, strength=0.5)
    with pytest.raises(UsageError, match="flat"):
        render(pt.saved_folder("sd2-depth"), PROMPT, steps=1, depth_map=np.ones((8, 8), np.float32))


def test_misfit_inputs_are_refused_before_loading_weights(tmp_path, monkeypatch):
    """From the configs alone: a big model is not loaded only to be told it takes no mask."""
    from tensorsafe.converter.run import convert
    from tensorsafe.pipeline.pipeline import Pipeline

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(Pipeline, "from_folder", never)
    with pytest.raises(UsageError, match="a text2img model takes no mask"):
        render(pt.saved_folder("sd1"), PROMPT, steps=1, mask=rectangle_mask(64, 64))
    with pytest.raises(UsageError, match="an inpaint model takes no depth_map: a depth map is for depth models"):
        render(pt.saved_folder("sd1-inpaint"), PROMPT, steps=1, depth_map=np.eye(8, dtype=np.float32))
    with pytest.raises(UsageError, match="image_guidance is instruct-pix2pix's"):
        render(pt.saved_folder("sd2-depth"), PROMPT, steps=1, image_guidance=2.0)
    single = tmp_path / "model.safetensors"
    convert(pt.saved_folder("sd1"), single)
    with pytest.raises(UsageError, match="a text2img model takes no mask"):   # a single file: once converted
        render(single, PROMPT, steps=1, config=pt.saved_folder("sd1"), mask=rectangle_mask(64, 64))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_bad_picture_files_are_one_line_errors_naming_the_file(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(9000, 8000))   # 72 Mpx claimed by a 60-byte file: refused unread
    with pytest.raises(ParseError, match="9000x8000 pixels; the limit is") as err:
        render(pt.saved_folder("sd1"), PROMPT, steps=1, image=huge)
    assert str(huge) in str(err.value)
    huge.write_bytes(_png_header_only(16000, 16000))  # past Pillow's own bomb limit: its refusal, as a ParseError
    with pytest.raises(ParseError, match="decompression bomb") as err:
        render(pt.saved_folder("sd1"), PROMPT, steps=1, image=huge)
    assert str(huge) in str(err.value)
    junk = tmp_path / "photo.png"
    junk.write_bytes(b"not a picture at all")
    with pytest.raises(ParseError, match="not a picture Pillow can read") as err:
        render(pt.saved_folder("sd1"), PROMPT, steps=1, image=junk)
    assert str(junk) in str(err.value)
    result = invoke(["render", str(pt.saved_folder("sd1")), "-p", "x", "--image", str(junk),
                                       "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2 and "not a picture Pillow can read" in result.output
    assert len(result.output.strip().splitlines()) == 1 and str(junk) in result.output
    assert not (tmp_path / "o.png").exists()


# ---- convert --check-render -----------------------------------------------------------------------------

@pytest.mark.parametrize("case,task,made,note", [
    ("sd1-inpaint", "inpaint", ["image", "mask"], "inpaint, made-up image and mask"),
    ("sd2-depth", "depth", ["image", "depth_map"], "depth, made-up image and depth map"),
    ("sd1-pix2pix", "pix2pix", ["image"], "pix2pix, made-up image"),
])
def test_convert_check_render_picks_the_task(tmp_path, case, task, made, note):
    """A converted single file of each variant is checked by a picture of its task, from made-up inputs."""
    from tensorsafe.converter.run import convert

    single = tmp_path / "model.safetensors"
    convert(pt.saved_folder(case), single)
    result = invoke(["convert", str(single), str(tmp_path / "out"), "--check-render"])
    assert result.exit_code == 0, result.output
    png = tmp_path / "out.check.png"
    assert f"check render: {png} ({note})" in result.output
    assert "check render: step 4/4 (100%), " in result.output   # progress lines: the output is not a terminal
    settings = json.loads(Image.open(png).info["tensorsafe"])
    assert settings["task"] == task and settings["generated_inputs"] == made and settings["strength"] == 1.0
