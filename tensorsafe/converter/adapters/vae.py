"""VAE single files <-> a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

The key map and the config are the checkpoint converter's own (:func:`tensorsafe.converter.keymaps.plan_vae`,
:mod:`tensorsafe.converter.keymaps.vae`, :func:`tensorsafe.converter.configs.vae_config`). A single file
is read with ``first_stage_model.``/``vae.`` prefixes or bare (``encoder.*``/``decoder.*``); it is
written bare, as VAE files are published (``vae-ft-mse-840000-ema-pruned.safetensors``).

The weights cannot tell an SD1.x/SD2.x VAE from SDXL's (same architecture): ``scaling_factor`` is
SD's 0.18215 unless ``model_type`` says ``sdxl`` (0.13025); the summary says which was written.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from tensorsafe.converter.options import ConversionResult, ConvertOptions

from tensorsafe.converter import configs, keymaps
from tensorsafe.converter.adapters.write import ProgressFactory, write_file, write_model_folder
from tensorsafe.converter.execute import component_tensors
from tensorsafe.converter.families import FAMILIES, SD1, SD2, SDXL, SDXL_REFINER, VAE_PREFIXES
from tensorsafe.converter.keymaps import vae as vae_map
from tensorsafe.converter.options import ConversionResult, ConvertOptions
from tensorsafe.converter.plan import Plan, Target
from tensorsafe.converter.source_io import leases_held
from tensorsafe.converter.sources import Source, open_file, open_folder_component
from tensorsafe.errors import ParseError, UsageError, option
from tensorsafe.paths import require_separate
from tensorsafe.tensors import DType

VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
LOSS = "loss."
VAE_FAMILIES = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL, "sdxl-refiner": SDXL_REFINER}


def is_vae(keys: Iterable[str]) -> bool:
    """Every key is a VAE weight (training-loss weights aside), under one VAE prefix or bare."""
    keys = list(keys)
    for prefix in ("", *VAE_PREFIXES):
        rest = [k[len(prefix):] for k in keys if k.startswith(prefix)]
        if len(rest) != len(keys):
            continue
        rest = [k for k in rest if not k.startswith(LOSS)]
        if rest and all(k.startswith(VAE_ROOTS) for k in rest) and "decoder.conv_in.weight" in rest:
            return True
    return False


def is_vae_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if (folder / "model_index.json").exists() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "AutoencoderKL"
    except (OSError, ValueError, AttributeError):
        return False


def convert_vae(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None,
                model_type: str | None = None, overwrite: bool = False,
                progress_factory: ProgressFactory = None) -> ConversionResult:
    """A VAE single file -> a diffusers ``AutoencoderKL`` folder, or such a folder -> a single file."""
    options = ConvertOptions(dtype=dtype, model_type=model_type, overwrite=overwrite)
    src, dst = Path(src), Path(dst)
    require_separate(src, dst)
    with leases_held():
        if src.is_dir():
            source = open_folder_component(src)
            if source is None:
                raise ParseError("no diffusion_pytorch_model.safetensors (or .bin) in this folder", path=src)
            with source:
                return _folder_to_file(source, src, dst, options.cast(), options, progress_factory)
        with open_file(src) as source:
            return convert_vae_source(source, dst, cast=options.cast(), options=options,
                                      progress_factory=progress_factory)


def _family(model_type: str | None) -> SimpleNamespace:
    try:
        family = VAE_FAMILIES[(model_type or SD1).lower()]
    except KeyError:
        raise UsageError(f"{option('model_type', None)} must be one of {', '.join(VAE_FAMILIES)}, "
                         f"not {model_type!r}") from None
    return SimpleNamespace(family=family, spec=FAMILIES[family])


def convert_vae_source(source: Source, dst: Path, *, cast: DType | None, options: ConvertOptions,
                       progress_factory: ProgressFactory = None) -> ConversionResult:
    """A VAE single file (opened) -> an ``AutoencoderKL`` folder."""
    started = time.perf_counter()
    plan = keymaps.plan_vae(source.shapes())
    _refuse_unmapped(plan, options, source.path)
    detection = _family(options.model_type)
    shapes = keymaps.shapes_by_component(plan).get("vae", {})
    config = configs.vae_config(shapes, detection)  # type: ignore[arg-type]  # reads .family and .spec only
    tensors = component_tensors(plan, "vae", source.tensors, cast)
    written = write_model_folder(dst, "diffusion_pytorch_model", tensors, config, source.tensors,
                                 overwrite=options.overwrite, progress_factory=progress_factory)
    notes = [*plan.notes, f"scaling_factor {config['scaling_factor']} ({detection.spec.title}"
             + ("" if options.model_type else f"; {option('model_type', 'sdxl')} for an SDXL VAE") + ")"]
    return ConversionResult(source.path, str(dst), "VAE single file -> diffusers AutoencoderKL folder",
                            "VAE (AutoencoderKL)", ["vae"], len(tensors), written, time.perf_counter() - started,
                            [f"VAE keys only, e.g. {next(iter(source.tensors))}"], notes, plan.dropped, plan.unmapped)


def _folder_to_file(source: Source, src: Path, dst: Path, cast: DType | None, options: ConvertOptions,
                    progress_factory: ProgressFactory) -> ConversionResult:
    started = time.perf_counter()
    part = vae_map.to_single_file(source.shapes())
    plan = Plan([Target("", t.key, t.sources, t.op, t.shape, t.rows) for t in part.targets], dict(part.dropped),
                list(part.unmapped), list(part.notes))
    _refuse_unmapped(plan, options, src)
    tensors = component_tensors(plan, "", source.tensors, cast)
    if dst.is_dir():
        dst = dst / f"{src.name}.safetensors"
    written = write_file(dst, tensors, {"format": "pt"}, source.tensors, overwrite=options.overwrite,
                         progress_factory=progress_factory)
    return ConversionResult(str(src), str(dst), "diffusers AutoencoderKL folder -> VAE single file",
                            "VAE (AutoencoderKL)", ["vae"], len(tensors), written, time.perf_counter() - started,
                            [f"config.json: AutoencoderKL; {len(tensors)} tensors"],
                            ["written with bare encoder.*/decoder.* keys, as VAE files are published"],
                            plan.dropped, plan.unmapped)


def _refuse_unmapped(plan: Plan, options: ConvertOptions, path: str | Path) -> None:
    if plan.unmapped and not options.allow_unmapped:
        raise ParseError(f"{len(plan.unmapped)} keys are not VAE weights the key map knows: "
                         f"{', '.join(plan.unmapped[:6])}; pass {option('allow_unmapped')} to convert without them",
                         path=path)
