"""``tensorsafe render``: the command line over :func:`tensorsafe.pipeline.render`.

Loaded only for ``tensorsafe render`` and ``convert --check-render`` (see :mod:`tensorsafe.cli.main`).
The pipeline module imports torch only when a render runs, so loading this one stays cheap.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re

from tensorsafe.cli.arguments import INPUT_FILE, INPUT_FOLDER, float_range, int_range, path
from tensorsafe.cli.output import echo
from tensorsafe.cli.progress import Reporter, render_notes, step_reporter
from tensorsafe.errors import UsageError
from tensorsafe.pipeline import render
from tensorsafe.pipeline.sizing import default_side_for
from tensorsafe.report import printable

RENDER_EXTRA = ("torch", "PIL", "tokenizers")  # import names of the render extra's packages


def require_render_extra() -> None:
    """Fail before any work when torch, pillow or tokenizers is missing."""
    missing = [name for name in RENDER_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"rendering needs the render extra ({', '.join(missing)} not installed): "
                         "pip install 'tensorsafe[render]'")


def size_value(text: str) -> int | tuple[int, int]:
    """``--size``: one number (a square) or WIDTHxHEIGHT."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError("use one number (a square) or WIDTHxHEIGHT, e.g. 512 or 768x512")
    width, height = int(match.group(1)), int(match.group(2) or match.group(1))
    return width if width == height else (width, height)


UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def memory_value(text: str) -> int:
    """``--max-memory``: bytes, or a number with K, M, G or T (powers of 1024, an optional B or iB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not match or float(match.group(1)) * UNITS[match.group(2).lower()] < 1:
        raise argparse.ArgumentTypeError("use a size in bytes, or with K, M, G or T, e.g. 6G or 512MiB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def _progress(quiet: bool) -> Reporter | None:
    """A bar on a terminal, plain lines in a log (:mod:`tensorsafe.cli.progress`)."""
    return step_reporter(quiet)


DESCRIPTION = """\
Render a picture with a converted diffusers folder or a single-file checkpoint.

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

Examples:
  tensorsafe render ./sd15-diffusers --prompt "a photo of a cat" -o cat.png
  tensorsafe render ./sd15-diffusers -p "a watercolour cat" --image cat.png --strength 0.6 -o wc.png
  tensorsafe render ./sd15-inpainting -p "a red hat" --image cat.png --mask hat-mask.png -o hat.png
  tensorsafe render sdxl.safetensors -p "a lighthouse at dusk" --steps 30 --size 1024 \\
      --device cuda --dtype fp16 -o lighthouse.png
  tensorsafe render ./sd15-diffusers -p "a cat, <my-style>" --lora style.safetensors:0.8 \\
      --embedding my-style.pt --vae vae-ft-mse.safetensors -o cat.png
"""



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=path(exists=True), metavar="PATH",
                        help="A diffusers folder, or a single-file checkpoint.")
    parser.add_argument("--prompt", "-p", required=True, metavar="TEXT", help="What to draw.")
    parser.add_argument("--negative-prompt", "-n", default="", metavar="TEXT",
                        help="What to steer away from (empty: the model's default).")
    parser.add_argument("--steps", type=int_range(1, 1000), default=20, metavar="N",
                        help="Denoising steps. [default: %(default)s; 1<=x<=1000]")
    parser.add_argument("--size", type=size_value, metavar="SIZE",
                        help="Image size: one number for a square or WIDTHxHEIGHT (default: --image's size, else "
                             "the model's own, at most 512 on a CPU).")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="Seed of the initial noise (drawn as diffusers draws it). [default: %(default)s]")
    parser.add_argument("--guidance", type=float, default=7.5, metavar="SCALE",
                        help="Classifier-free guidance scale. [default: %(default)s]")
    parser.add_argument("--scheduler", choices=["euler", "ddim"], default="euler",
                        help="Sampler, configured from the folder's scheduler_config.json. [default: %(default)s]")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="cpu or cuda (cuda:N). [default: %(default)s]")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="Compute dtype. [default: %(default)s]")
    parser.add_argument("--strength", type=float_range(0.0, 1.0, low_open=True), metavar="FLOAT",
                        help="With an input picture (img2img, inpaint, depth): how much of it to repaint [default: "
                             "diffusers' for the task: 0.8, SDXL refiner 0.3, inpaint 1.0; 1.0 for a made-up "
                             "picture].")
    parser.add_argument("--config", dest="config_folder", type=INPUT_FOLDER,
                        metavar="FOLDER",
                        help="Single files: take component configs from this diffusers folder (as convert --config).")
    parser.add_argument("--model-type", metavar="FAMILY",
                        help="Single files: override the detected family (sd1, sd2, sdxl, sdxl-refiner).")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                        help="Single files: where the weights cannot tell (SD2 512 vs 768-v).")
    parser.add_argument("-o", "--output", type=path(dir_okay=False), required=True, metavar="FILE",
                        help="PNG file to write (prompt and settings go in its text chunks).")
    parser.add_argument("--max-memory", type=memory_value, metavar="SIZE",
                        help="Refuse a render whose estimated memory is over this (bytes, or e.g. 6G) [default: "
                             "half the RAM; 90%% of the GPU's memory with --device cuda].")
    parser.add_argument("--allow-symlinks", action="store_true",
                        help="Follow symlinks in the model folder (or --config folder) that lead out of it; by "
                             "default they are refused.")
    parser.add_argument("--lora", dest="loras", action="append", default=[], metavar="FILE[:SCALE]",
                        help="Fuse this LoRA (kohya/A1111/ComfyUI or diffusers format) into the weights, scaled "
                             "(default 1), as diffusers' load_lora_weights + fuse_lora do. Repeatable.")
    parser.add_argument("--embedding", dest="embeddings", action="append", default=[], type=INPUT_FILE,
                        metavar="FILE",
                        help="A textual-inversion embedding (A1111 .pt/.safetensors, diffusers learned_embeds, "
                             "SDXL clip_l/clip_g): its token can be used in the prompt. Repeatable.")
    parser.add_argument("--vae", dest="vae_file", type=INPUT_FILE, metavar="FILE",
                        help="Decode (and encode) with the weights of this VAE file instead of the model's.")
    parser.add_argument("--image", dest="image_file", type=INPUT_FILE, metavar="FILE",
                        help="Input picture: a text-to-image model does img2img from it; inpaint, depth and "
                             "instruct-pix2pix models start from it (default for those: a made-up colour field). "
                             "The render takes its size unless --size is given.")
    parser.add_argument("--mask", dest="mask_file", type=INPUT_FILE, metavar="FILE",
                        help="Inpainting models (UNet in_channels 9): white is repainted, black kept "
                             "(default: an ellipse).")
    parser.add_argument("--depth-map", dest="depth_file", type=INPUT_FILE, metavar="FILE",
                        help="Depth models (SD2 depth, UNet in_channels 5): a greyscale picture, 8 or 16 bit, "
                             "lighter is nearer (default: a sphere before a wall).")
    parser.add_argument("--image-guidance", type=float_range(0.0, 100.0), metavar="FLOAT",
                        help="instruct-pix2pix models: how closely to keep to the input picture [default: 1.5].")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="No progress (a bar on a terminal, lines in a log) and no summary.")


def run(args: argparse.Namespace) -> int:
    require_render_extra()
    image = render(args.path, args.prompt, args.negative_prompt, steps=args.steps, size=args.size, seed=args.seed,
                   guidance=args.guidance, scheduler=args.scheduler, device=args.device, dtype=args.dtype,
                   strength=args.strength, output=args.output, config=args.config_folder,
                   model_type=args.model_type, prediction_type=args.prediction_type, progress=_progress(args.quiet),
                   max_memory_bytes=args.max_memory, allow_symlinks=args.allow_symlinks, loras=list(args.loras),
                   embeddings=list(args.embeddings), vae=args.vae_file, image=args.image_file, mask=args.mask_file,
                   depth_map=args.depth_file, image_guidance=args.image_guidance,
                   default_max_side=default_side_for(args.device))
    if not args.quiet:
        echo(printable(f"rendered {args.path} -> {args.output} ({image.width}x{image.height}, {args.steps} steps, "
                       f"{args.scheduler}, seed {args.seed})"))
        settings = json.loads(image.info.get("tensorsafe", "{}"))
        for line in settings.get("adapters", []):
            echo(printable(f"  with {line}"))
        for line in render_notes(settings):
            echo(printable(line))
    return 0
