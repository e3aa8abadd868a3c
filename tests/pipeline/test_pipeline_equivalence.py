"""The reference pipeline renders what diffusers renders, family by family (fp32, tiny random models).

Both pipelines read the same saved diffusers folder, draw the initial noise from the same seed and
run the same sampler for the same steps; the final latents and the decoded image must agree to
1e-3. Measured (guidance 3, two steps, both samplers, every case): at most 6e-5 on the latents and
3e-5 on the image; SD1/SD2 text-to-image is often bit-exact. The rest is float rounding (BLAS
kernels differ with thread count and memory alignment), which random tiny UNets amplify: at
guidance 7.5 with three steps a 1e-7 difference can grow past 1e-3, which says nothing about the
pipeline, so these runs keep to two steps and guidance 3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)

TOLERANCE = 1e-3
GUIDANCE = 3.0
# case -> the sampler it is checked with (both samplers are checked step by step in test_pipeline_components)
RUNS = [("sd1", "ddim"), ("sd1", "euler"), ("sd2", "ddim"), ("sd2-zsnr", "euler"), ("sdxl", "euler"),
        ("sdxl", "ddim"), ("sdxl-refiner", "euler"), ("sd1-inpaint", "euler"), ("sd2-depth", "ddim"),
        ("sd1-pix2pix", "euler"), ("sdxl-inpaint", "ddim")]


@pytest.fixture(scope="module")
def pipelines():
    return pt.pipeline_loader()


def _ours(pipe, case: str, scheduler: str, **kwargs):
    kwargs = {"seed": 0, "guidance": GUIDANCE, **kwargs}
    return pipe("a photo of a cat", scheduler=scheduler, steps=2, **pt.task_inputs(case), **kwargs)


@pytest.mark.parametrize("case,scheduler", RUNS, ids=[f"{c}-{s}" for c, s in RUNS])
def test_render_matches_diffusers(pipelines, case, scheduler):
    pipe = pipelines(case)
    ours = _ours(pipe, case, scheduler)
    latents, image = pt.diffusers_render(case, scheduler, prompt="a photo of a cat", guidance=GUIDANCE)
    assert ours.latents.shape == latents.shape
    assert (ours.latents - latents).abs().max().item() <= TOLERANCE
    assert ours.image.shape == (1, 3, pt.SIZE, pt.SIZE)
    assert np.abs(ours.image[0].permute(1, 2, 0).numpy() - image).max() <= TOLERANCE


@pytest.mark.parametrize("case", ["sdxl", "sdxl-refiner"])
def test_negative_prompt_and_seed_match_diffusers(pipelines, case):
    """A real negative prompt (SDXL base zeroes an empty one, the refiner encodes "") and another seed."""
    ours = _ours(pipelines(case), case, "euler", negative_prompt="blurry, low quality", seed=1234)
    latents, image = pt.diffusers_render(case, "euler", prompt="a photo of a cat",
                                         negative_prompt="blurry, low quality", seed=1234, guidance=GUIDANCE)
    assert (ours.latents - latents).abs().max().item() <= TOLERANCE
    assert np.abs(ours.image[0].permute(1, 2, 0).numpy() - image).max() <= TOLERANCE


def test_no_guidance_matches_diffusers(pipelines):
    ours = _ours(pipelines("sd1"), "sd1", "euler", guidance=1.0)
    latents, image = pt.diffusers_render("sd1", "euler", prompt="a photo of a cat", guidance=1.0)
    assert (ours.latents - latents).abs().max().item() <= TOLERANCE
    assert np.abs(ours.image[0].permute(1, 2, 0).numpy() - image).max() <= TOLERANCE


def test_initial_noise_is_diffusers_draw(pipelines):
    """One Euler step from sigma_max: the noise is ``torch.randn(shape, generator=Generator('cpu').manual_seed)``."""
    pipe = pipelines("sd1")
    from tensorsafe.pipeline.schedulers import make_scheduler

    sched = make_scheduler("euler", pipe.scheduler_config)
    sched.set_timesteps(2)
    expected = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7)) * sched.init_noise_sigma
    seen = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda x, *a, **k: (seen.append(x), original(x, *a, **k))[1]
    try:
        pipe("x", steps=2, seed=7, guidance=1.0)
    finally:
        del pipe.unet.forward
    assert torch.equal(seen[0], sched.scale_model_input(expected, 0))
