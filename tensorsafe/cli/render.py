"""``tensorsafe render``: the click layer over :func:`tensorsafe.pipeline.render`."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click

from tensorsafe.errors import UsageError

RENDER_EXTRA = ("torch", "PIL", "tokenizers")  # import names of the render extra's packages


def require_render_extra() -> None:
    """Fail before any work when torch, pillow or tokenizers is missing."""
    missing = [name for name in RENDER_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"rendering needs the render extra ({', '.join(missing)} not installed): "
                         "pip install 'tensorsafe[render]'")


def _size(value: str | None) -> int | tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", value)
    if not match:
        raise click.BadParameter("use one number (a square) or WIDTHxHEIGHT, e.g. 512 or 768x512", param_hint="--size")
    width, height = int(match.group(1)), int(match.group(2) or match.group(1))
    return width if width == height else (width, height)


UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _memory(value: str | None) -> int | None:
    """``--max-memory``: bytes, or a number with K, M, G or T (powers of 1024, an optional B or iB)."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", value)
    if not match or float(match.group(1)) * UNITS[match.group(2).lower()] < 1:
        raise click.BadParameter("use a size in bytes, or with K, M, G or T, e.g. 6G or 512MiB",
                                 param_hint="--max-memory")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def _progress(quiet: bool):
    """A bar on a terminal, plain lines in a log (:mod:`tensorsafe.cli.progress`)."""
    from tensorsafe.cli.progress import step_reporter

    return step_reporter(quiet)


@click.command("render")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--prompt", "-p", required=True, help="What to draw.")
@click.option("--negative-prompt", "-n", default="", help="What to steer away from (empty: the model's default).")
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True, help="Denoising steps.")
@click.option("--size", help="Image size: one number for a square or WIDTHxHEIGHT (default: --image's size, else "
              "the model's own, at most 512 on a CPU).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial noise (drawn as diffusers draws it).")
@click.option("--guidance", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option("--scheduler", type=click.Choice(["euler", "ddim"]), default="euler", show_default=True,
              help="Sampler, configured from the folder's scheduler_config.json.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (cuda:N).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Compute dtype.")
@click.option("--strength", type=click.FloatRange(0.0, 1.0, min_open=True),
              help="With an input picture (img2img, inpaint, depth): how much of it to repaint [default: "
                   "diffusers' for the task: 0.8, SDXL refiner 0.3, inpaint 1.0; 1.0 for a made-up picture].")
@click.option("--config", "config_folder", type=click.Path(exists=True, file_okay=False),
              help="Single files: take component configs from this diffusers folder (as convert --config).")
@click.option("--model-type", help="Single files: override the detected family (sd1, sd2, sdxl, sdxl-refiner).")
@click.option("--prediction-type", type=click.Choice(["epsilon", "v_prediction"]),
              help="Single files: where the weights cannot tell (SD2 512 vs 768-v).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG file to write (prompt and settings go in its text chunks).")
@click.option("--max-memory", help="Refuse a render whose estimated memory is over this (bytes, or e.g. 6G) "
              "[default: half the RAM; 90% of the GPU's memory with --device cuda].")
@click.option("--allow-symlinks", is_flag=True,
              help="Follow symlinks in the model folder (or --config folder) that lead out of it; by default "
                   "they are refused.")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="Fuse this LoRA (kohya/A1111/ComfyUI or diffusers format) into the weights, scaled (default "
                   "1), as diffusers' load_lora_weights + fuse_lora do. Repeatable.")
@click.option("--embedding", "embeddings", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A textual-inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds, SDXL "
                   "clip_l/clip_g): its token can be used in the prompt. Repeatable.")
@click.option("--vae", "vae_file", type=click.Path(exists=True, dir_okay=False),
              help="Decode (and encode) with the weights of this VAE file instead of the model's.")
@click.option("--image", "image_file", type=click.Path(exists=True, dir_okay=False),
              help="Input picture: a text-to-image model does img2img from it; inpaint, depth and "
                   "instruct-pix2pix models start from it (default for those: a made-up colour field). "
                   "The render takes its size unless --size is given.")
@click.option("--mask", "mask_file", type=click.Path(exists=True, dir_okay=False),
              help="Inpainting models (UNet in_channels 9): white is repainted, black kept "
                   "(default: an ellipse).")
@click.option("--depth-map", "depth_file", type=click.Path(exists=True, dir_okay=False),
              help="Depth models (SD2 depth, UNet in_channels 5): a greyscale picture, 8 or 16 bit, lighter "
                   "is nearer (default: a sphere before a wall).")
@click.option("--image-guidance", type=click.FloatRange(0.0, 100.0),
              help="instruct-pix2pix models: how closely to keep to the input picture [default: 1.5].")
@click.option("-q", "--quiet", is_flag=True, help="No progress (a bar on a terminal, lines in a log) and no summary.")
def render_command(path: Path, prompt: str, negative_prompt: str, steps: int, size: str | None, seed: int,
                   guidance: float, scheduler: str, device: str, dtype: str, strength: float,
                   config_folder: str | None, model_type: str | None, prediction_type: str | None, output: Path,
                   max_memory: str | None, quiet: bool, allow_symlinks: bool, loras: tuple[str, ...] = (),
                   embeddings: tuple[str, ...] = (), vae_file: str | None = None, image_file: str | None = None,
                   mask_file: str | None = None, depth_file: str | None = None,
                   image_guidance: float | None = None) -> None:
    """Render a picture with a converted diffusers folder or a single-file checkpoint.

    A quick check that a conversion works: tensorsafe's own reference pipeline (torch, no
    diffusers) loads the weights with the safe readers and renders the prompt. A single file
    is converted into a temporary folder first. Needs the render extra: pip install 'tensorsafe[render]'.

    The task follows the model (its UNet's input channels): text-to-image, or img2img with
    --image; inpaint (--image, --mask); depth (--image, --depth-map); instruct-pix2pix (--image,
    --image-guidance); the SDXL refiner is img2img. An input such a model needs and is not given
    is made up (a colour field, an ellipse mask, a sphere's depth), so every model renders.

    On a CPU, with no --size and no --image, the side is capped at 512 to keep a first render
    short (SDXL's own 1024 takes about 4x as long); --size asks for more. Progress is a bar on a
    terminal and a line every tenth of the steps in a log.

    Every option and config value is checked against its sane range, and the render's memory is
    estimated from the configs, the weights' headers and the size, before anything is allocated:
    a render over --max-memory is refused with one line and exit code 2.

    \b
    Examples:
      tensorsafe render ./sd15-diffusers --prompt "a photo of a cat" -o cat.png
      tensorsafe render ./sd15-diffusers -p "a watercolour cat" --image cat.png --strength 0.6 -o wc.png
      tensorsafe render ./sd15-inpainting -p "a red hat" --image cat.png --mask hat-mask.png -o hat.png
      tensorsafe render sdxl.safetensors -p "a lighthouse at dusk" --steps 30 --size 1024 \\
          --device cuda --dtype fp16 -o lighthouse.png
      tensorsafe render ./sd15-diffusers -p "a cat, <my-style>" --lora style.safetensors:0.8 \\
          --embedding my-style.pt --vae vae-ft-mse.safetensors -o cat.png
    """
    require_render_extra()
    max_memory_bytes = _memory(max_memory)
    from tensorsafe.pipeline import render
    from tensorsafe.pipeline.sizing import default_side_for

    image = render(path, prompt, negative_prompt, steps=steps, size=_size(size), seed=seed, guidance=guidance,
                   scheduler=scheduler, device=device, dtype=dtype, strength=strength, output=output,
                   config=config_folder, model_type=model_type, prediction_type=prediction_type,
                   progress=_progress(quiet), max_memory_bytes=max_memory_bytes, allow_symlinks=allow_symlinks,
                   loras=list(loras), embeddings=list(embeddings), vae=vae_file, image=image_file, mask=mask_file,
                   depth_map=depth_file, image_guidance=image_guidance, default_max_side=default_side_for(device))
    if not quiet:
        click.echo(f"rendered {path} -> {output} ({image.width}x{image.height}, {steps} steps, {scheduler}, "
                   f"seed {seed})")
        import json

        for line in json.loads(image.info.get("tensorsafe", "{}")).get("adapters", []):
            click.echo(f"  with {line}")
        from tensorsafe.cli.progress import render_notes

        for line in render_notes(json.loads(image.info.get("tensorsafe", "{}"))):
            click.echo(line)
