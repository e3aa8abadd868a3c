"""Reference pipeline: renders a picture from a converted folder to confirm that a conversion works.

A small, readable torch implementation (the ``render`` extra: torch, pillow, tokenizers) of the
CLIP tokenizer and text encoders, the UNet, the VAE and the Euler/DDIM samplers, loaded with
tensorsafe's safe readers and checked to render what diffusers renders::

    from tensorsafe.pipeline import render
    image = render("sd15-diffusers", "a photo of a cat", steps=20, seed=0, output="cat.png")

    from tensorsafe.pipeline.pipeline import Pipeline     # lower level: latents and float images
    pipe = Pipeline.from_folder("sd15-diffusers", device="cuda", dtype="fp16")
    result = pipe("a photo of a cat", steps=20, seed=0)

This package is the only place that imports torch; importing it (and ``render``) does not.
"""
from __future__ import annotations

from tensorsafe.pipeline.render import check_render, render, save_png

__all__ = ["check_render", "render", "save_png"]
