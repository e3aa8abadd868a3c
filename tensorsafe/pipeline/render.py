"""``render``: one picture from a converted folder or a single-file checkpoint, to confirm it works.

A single file is converted into a temporary diffusers folder first (the same converter as
``tensorsafe convert``, so what renders is what a conversion writes), loaded, and the folder
removed. Models that need an input picture take the caller's (``image``, ``mask``, ``depth_map``;
a text-to-image model given an ``image`` does img2img) or get a generated one: inpainting a smooth
colour field with an elliptical mask, depth a radial depth map, the SDXL refiner (img2img) and
instruct-pix2pix the colour field (:mod:`tensorsafe.pipeline.tasks`).
The PNG carries the prompt and every setting in its text chunks.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


from tensorsafe.converter.output import staged
from tensorsafe.converter.sources import check_folder
from tensorsafe.errors import RenderError, TensorsafeError, UsageError, option
from tensorsafe.pipeline.configs import read_config
from tensorsafe.pipeline.preflight import plan_render
from tensorsafe.pipeline.sizing import capped_size
from tensorsafe.pipeline.tasks import GivenInputs, fits_configs, plan_task
from tensorsafe.pipeline.validate import check_options, check_side

SCHEDULER_NAMES = {"euler": "Euler", "ddim": "DDIM"}
CHECK_PROMPT = "a photo of an astronaut riding a horse on the moon"
CHECK_STEPS = 4


def render(path: str | os.PathLike, prompt: str, negative_prompt: str = "", *, steps: int = 20,
           size: int | tuple[int, int] | None = None, seed: int = 0, guidance: float = 7.5, scheduler: str = "euler",
           device: str = "cpu", dtype: str = "fp32", strength: float | None = None,
           output: str | os.PathLike | None = None,
           config: str | os.PathLike | None = None, model_type: str | None = None,
           prediction_type: str | None = None, progress: Callable[[int, int], None] | None = None,
           max_memory_bytes: int | None = None, allow_symlinks: bool = False, loras=(), embeddings=(),
           vae: str | os.PathLike | None = None, image=None, mask=None, depth_map=None,
           image_guidance: float | None = None, default_max_side: int | None = None):
    """Render ``prompt`` with the model at ``path`` and return a ``PIL.Image`` (written to ``output`` if given).

    ``loras``: LoRA files (kohya or diffusers format) as ``"FILE"``, ``"FILE:SCALE"`` or ``(FILE, SCALE)``,
    fused as diffusers' ``load_lora_weights`` + ``fuse_lora`` do; ``embeddings``: textual-inversion files
    whose tokens the prompt may use; ``vae``: a VAE file whose weights replace the model's
    (:mod:`tensorsafe.pipeline.adapters`).

    Input pictures (a file path or a ``PIL.Image``; ``depth_map`` also a 2-D array, larger nearer):
    ``image`` makes a text-to-image model do img2img and is what inpaint, depth and instruct-pix2pix
    models start from, ``mask`` (white is repainted) is for inpainting models, ``depth_map`` for depth
    models; what such a model needs and is not given is made up (:mod:`tensorsafe.pipeline.tasks`).
    ``strength`` (default: diffusers' for the task, 1.0 for a made-up picture) is how much of the
    picture is repainted; ``image_guidance`` is instruct-pix2pix's image guidance scale (default 1.5).

    ``size`` is one side or ``(width, height)``, default the input image's size (rounded down to a
    multiple of 8) or else the model's native size, capped at ``default_max_side`` when that is given
    (the CLI's short first render on a CPU, :mod:`tensorsafe.pipeline.sizing`); ``config``,
    ``model_type`` and ``prediction_type`` are passed to the converter for single files.

    Before torch builds or allocates anything, every config value and option is checked against
    its sane range and the render's memory is estimated from the configs, the safetensors headers
    and the size (:mod:`tensorsafe.pipeline.budget`): a render over ``max_memory_bytes`` (default
    half the RAM, or 90% of the GPU's memory on CUDA) is refused with :class:`LimitExceeded`, a bad
    option with :class:`UsageError`, a bad config with :class:`ParseError` naming the file.
    A folder is read only inside itself (:mod:`tensorsafe.paths`; ``allow_symlinks`` follows symlinks
    that lead out of it).
    """
    with _staged_png(output) as written:  # the output's folder is checked before the render spends minutes
        src = Path(path)
        if not src.exists():
            raise UsageError(f"{src} does not exist", path=src)
        given = GivenInputs.load(image=image, mask=mask, depth_map=depth_map)  # before any model is read
        size = given.size() if size is None else size
        check_options(steps=steps, guidance=guidance, seed=seed, strength=1.0 if strength is None else strength,
                      prompt=prompt,
                      negative_prompt=negative_prompt, max_memory_bytes=max_memory_bytes)
        if scheduler not in SCHEDULER_NAMES:
            raise UsageError(f"scheduler must be one of {', '.join(SCHEDULER_NAMES)}, not {scheduler!r}")
        plan = {"steps": steps, "guidance": guidance, "seed": seed, "strength": 1.0 if strength is None else strength,
                "prompt": prompt,
                "negative_prompt": negative_prompt, "dtype": dtype, "device": device, "max_memory_bytes": max_memory_bytes}
        if src.is_dir():
            check_folder(src, allow_symlinks=allow_symlinks)  # before the preflight reads any of it
            configs, (width, height), _ = plan_render(src, capped_size(src, size, default_max_side), **plan)
            fits_configs(configs, given, image_guidance)
            from tensorsafe.pipeline.pipeline import Pipeline

            pipe = Pipeline.from_folder(src, device=device, dtype=dtype, allow_symlinks=allow_symlinks)
        else:
            _image_size(size)  # the ranges, before converting; the VAE's multiple once the folder exists
            pipe, (width, height) = _from_single_file(src, size, plan, config, model_type, prediction_type,
                                                      allow_symlinks, default_max_side,
                                                      lambda configs: fits_configs(configs, given, image_guidance))
        from tensorsafe.pipeline.adapters import apply_adapters

        adapters = apply_adapters(pipe, loras=loras, embeddings=embeddings, vae=vae)
        job = plan_task(pipe.task, width, height, given, strength=strength, image_guidance=image_guidance)
        try:
            result = pipe(prompt, negative_prompt, steps=steps, height=height, width=width, seed=seed, guidance=guidance,
                          scheduler=scheduler, progress=progress, max_memory_bytes=max_memory_bytes,
                          **job.pipeline_kwargs())
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, MemoryError) or _out_of_memory(exc):
                raise RenderError(f"ran out of memory rendering {width}x{height} ({str(exc).splitlines()[0][:120]}); "
                                  f"choose a smaller size or lower {option('max_memory_bytes', None, cli='--max-memory')}", path=src) from None
            raise
        _require_finite(result, src, dtype)
        image = result.to_pil()
        settings = {"prompt": prompt, "negative_prompt": negative_prompt, "steps": steps, "size": [width, height],
                    "seed": seed, "guidance": guidance, "scheduler": scheduler, "device": device,
                    "dtype": dtype, **job.settings(), "model": src.name,
                    **({"native_size": pipe.default_size()} if size is None and pipe.default_size() > max(width, height)
                       else {}), **({"adapters": adapters} if adapters else {})}
        image.info.update(png_text(settings))
        if written is not None:
            _write_png(image, written)
    return image


def _out_of_memory(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def check_render(path: str | os.PathLike, *, output: str | os.PathLike | None = None, prompt: str = CHECK_PROMPT,
                 steps: int = CHECK_STEPS, size: int | tuple[int, int] | None = None, seed: int = 0,
                 device: str = "cpu", dtype: str = "fp32", max_memory_bytes: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Render a small picture from a converted model to confirm it works; returns the PNG's path.

    The task is the model's (inpaint, depth, instruct-pix2pix, the refiner's img2img), from made-up
    input pictures (:mod:`tensorsafe.pipeline.tasks`); ``progress(done, total)`` is called after each step.

    The default size is a quarter of the model's native side (128 for SD1, 192 for 768-v SD2, 256
    for SDXL): enough for every block of the UNet and the VAE to run, cheap enough on a CPU. The PNG
    goes beside the model as ``<name>.check.png`` unless ``output`` says otherwise. Raises
    :class:`RenderError` when the picture holds NaN or infinite values.
    """
    src = Path(path)
    if output is None:
        stem = src.name.removesuffix(".safetensors")
        output = src.with_name(f"{stem}.check.png")
    if size is None:
        size = _check_size(src)
    render(src, prompt, steps=steps, size=size, seed=seed, device=device, dtype=dtype, output=output,
           max_memory_bytes=max_memory_bytes, progress=progress)
    return Path(output)


def _check_size(src: Path) -> int:
    sample = None
    config = src / "unet" / "config.json"
    if config.is_file():
        try:
            sample = read_config(config).get("sample_size")
        except TensorsafeError:
            sample = None  # render names the problem
    side = (sample if isinstance(sample, int) and sample > 0 else 64) * 8 // 4
    return max(64, side // 64 * 64)


def _require_finite(result, src: Path, dtype: str) -> None:
    import torch

    for name, tensor in (("latents", result.latents), ("image", result.image)):
        if not bool(torch.isfinite(tensor).all()):
            hint = f"; try {option('dtype', 'fp32')}" if dtype != "fp32" else ""
            raise RenderError(f"the rendered {name} hold NaN or infinite values: the weights do not work{hint}",
                              path=src)


def _from_single_file(src: Path, size, plan: dict, config, model_type, prediction_type, allow_symlinks: bool,
                      default_max_side: int | None = None, before_load=None):
    """Convert into a temporary folder, check and estimate it as a folder, then load it."""
    from tensorsafe.converter.run import convert

    with tempfile.TemporaryDirectory(prefix="tensorsafe-render-") as tmp:
        folder = Path(tmp) / "model"
        convert(src, folder, config=str(config) if config else None, model_type=model_type,
                prediction_type=prediction_type, allow_symlinks=allow_symlinks)
        configs, sides, _ = plan_render(folder, capped_size(folder, size, default_max_side), **plan)
        if before_load is not None:
            before_load(configs)
        from tensorsafe.pipeline.pipeline import Pipeline

        pipe = Pipeline.from_folder(folder, device=plan["device"], dtype=plan["dtype"])
        return pipe, sides  # fully loaded: the folder can go


def _image_size(size) -> None:
    if size is None:
        return
    if not isinstance(size, (tuple, list)):
        check_side("size", size, 1)
        return
    if len(size) != 2:
        raise UsageError(f"size must be an int or (width, height), not {size!r}")
    for name, side in zip(("width", "height"), size):
        check_side(name, side, 1)


# ---- PNG ------------------------------------------------------------------------------------------------

def png_text(settings: dict) -> dict[str, str]:
    """Text chunks: ``parameters`` in the A1111 form that image viewers read, ``tensorsafe`` as JSON."""
    from tensorsafe.version import __version__

    w, h = settings["size"]
    line = (f"Steps: {settings['steps']}, Sampler: {SCHEDULER_NAMES.get(settings['scheduler'], settings['scheduler'])}"
            f", CFG scale: {settings['guidance']}, Seed: {settings['seed']}, Size: {w}x{h}, "
            f"Model: {settings['model']}, Dtype: {settings['dtype']}, Renderer: tensorsafe {__version__}")
    negative = f"\nNegative prompt: {settings['negative_prompt']}" if settings["negative_prompt"] else ""
    return {"parameters": f"{settings['prompt']}{negative}\n{line}",
            "tensorsafe": json.dumps({**settings, "tensorsafe": __version__}, ensure_ascii=False)}


def save_png(image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG with its string ``info`` entries as text chunks (written beside, then renamed)."""
    with _staged_png(path) as written:
        _write_png(image, written)
    return Path(path)


def _staged_png(output: str | os.PathLike | None):
    """A path beside ``output`` that becomes it when the block completes (none without an output).

    The converter's staged output: a missing folder is a one-line error before any work, a
    failed or interrupted write leaves the old file as it was and nothing beside it.
    """
    return contextlib.nullcontext() if output is None else staged(output, overwrite=True, folder=False)


def _write_png(image, path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    image.save(path, format="PNG", pnginfo=info)
