"""``convert``: a single file becomes a diffusers folder, a diffusers folder becomes a single file.

The direction follows the source. Each step is a small function; the plan (what goes where) comes
from the family's key maps, the bytes from the streaming writer, and the output is staged beside
the destination and renamed into place only when complete and verified.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from tensorsafe.converter import adapters, configs, families, keymaps
from tensorsafe.converter.configs import check_component_names, read_json_object
from tensorsafe.converter.execute import DEFAULT_MAX_SHARD_BYTES, component_tensors, write_weights
from tensorsafe.converter.folder_to_safetensors import folder_to_safetensors
from tensorsafe.converter.keymaps.clip import with_text_model_prefix
from tensorsafe.converter.options import ConversionResult, ConvertOptions, Progress
from tensorsafe.converter.output import staged
from tensorsafe.converter.plan import Op, Plan, Target
from tensorsafe.converter.source_io import leases_held, sources_unchanged
from tensorsafe.converter.sources import Located, Source, open_file, open_folder_component
from tensorsafe.converter.to_safetensors import file_to_safetensors, whole_model_refusal
from tensorsafe.converter.writer import OutTensor, write_safetensors
from tensorsafe.errors import OutputError, ParseError, UnsafeFileError, UsageError, option
from tensorsafe.paths import Contained, require_separate
from tensorsafe.tensors import DTYPES

WEIGHT_STEM = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
               "text_encoder": "model", "text_encoder_2": "model"}




def convert(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None, ema: str = "auto",
            key: str | None = None, metadata: dict[str, str] | None = None, vae: str | None = None,
            config: str | None = None, base: str | None = None, model_type: str | None = None,
            prediction_type: str | None = None, overwrite: bool = False, allow_unmapped: bool = False,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, allow_symlinks: bool = False, to: str | None = None,
            options: ConvertOptions | None = None,
            progress_factory: Callable[[int, int], Progress] | None = None) -> ConversionResult:
    """Convert ``src`` to ``dst``; what is done follows the two paths:

    - a single-file Stable Diffusion checkpoint (``.safetensors``, or a pickle ``.ckpt``) and a folder
      ``dst``: the diffusers folder layout;
    - a diffusers folder and a ``dst`` ending in ``.safetensors``: one single-file checkpoint;
    - any clean checkpoint file (pickle, zip or legacy ``torch.save``, or safetensors) and a ``dst``
      ending in ``.safetensors``: one safetensors file with the same tensor names, dtypes, shapes and bytes;
    - a transformers or diffusers folder with ``.bin`` weights and a folder ``dst``: the same folder with
      ``.safetensors`` weights (shards and index kept, other files copied, pickles left out).

    Pickle files are scanned first and read without running pickle code; the output is staged
    beside ``dst`` and renamed into place only when complete and verified.

    Args:
        dtype: Cast float tensors to ``fp16``, ``bf16`` or ``fp32``; ``None`` keeps them.
        ema: ``auto``, ``yes`` or ``no``. To a diffusers folder: use the UNet's EMA copy when the file
            has a complete one (``auto``), insist on it (``yes``) or not (``no``). To safetensors weights:
            keep every tensor (``auto``), drop ``model_ema.*`` (``no``), or write the EMA copy under the
            UNet's names (``yes``).
        key: To safetensors weights from a pickle: the dotted path of the entry holding the weights.
        metadata: To safetensors weights: ``__metadata__`` entries added to ``{"format": "pt"}``.
        vae: To a diffusers folder: a file to take the VAE from instead.
        config: To a diffusers folder: a diffusers folder to take component configs, scheduler and tokenizers from.
        base: To a diffusers folder: a diffusers folder to take the components the file lacks from.
        model_type: Override the detected family (``sd1``, ``sd2``, ``sdxl``, ``sdxl-refiner``; for a LoRA
            ``sd1``, ``sd2``, ``sdxl``).
        prediction_type: ``epsilon`` or ``v_prediction``, where the weights cannot tell.
        overwrite: Replace an existing ``dst`` (only once the new output is complete).
        allow_unmapped: To or from a diffusers folder: convert even when some keys are unknown to the key maps.
        max_shard_bytes: To a diffusers folder: bytes per weights file before sharding with an index.
        allow_symlinks: Follow symlinks in a source folder that lead out of it.
        to: A LoRA file: ``diffusers`` or ``kohya`` (default: the other format); see docs/conversion.md "Adapters".
        options: All of the above as one :class:`ConvertOptions` (then leave the keywords at their defaults).
        progress_factory: Called with (total bytes, tensors); returns a callable given bytes as they are written.
    """
    given = dict(dtype=dtype, ema=ema, key=key, metadata=metadata, vae=vae, config=config, base=base,
                 model_type=model_type, prediction_type=prediction_type, overwrite=overwrite,
                 allow_unmapped=allow_unmapped, max_shard_bytes=max_shard_bytes, allow_symlinks=allow_symlinks, to=to)
    if options is None:
        options = ConvertOptions(**given)
    elif any(value != getattr(ConvertOptions, name) for name, value in given.items()):
        raise UsageError("pass either options= or keyword options, not both")
    src_path = Path(src)
    if not src_path.exists():
        raise UsageError(f"{src_path} does not exist", path=src_path)
    require_separate(src_path, dst)
    started = time.perf_counter()
    try:
        with leases_held():
            result = adapters.route(src_path, Path(dst), options, progress_factory)
            if result is not None:
                return result
            direction = _direction(src_path, Path(dst))
            if direction in (_single_file_to_folder, _folder_to_single_file) and (options.key or options.metadata):
                name = "key" if options.key else "metadata"
                raise UsageError(f"{option(name, None)} applies to writing safetensors weights from a checkpoint "
                                 "(a destination ending in .safetensors), not to the diffusers layout")
            result = direction(src_path, Path(dst), options, progress_factory)
    except UnsafeFileError as exc:
        raise whole_model_refusal(exc) or exc from None
    except OSError as exc:
        raise OutputError(f"cannot write the output: {exc.strerror or exc}; nothing was changed",
                          path=getattr(exc, "filename", None) or dst) from exc
    result.seconds = time.perf_counter() - started
    return result


def _direction(src: Path, dst: Path) -> Callable[..., ConversionResult]:
    """Which conversion ``src`` -> ``dst`` is: a ``.safetensors`` destination is one file, any other a folder."""
    to_file = dst.suffix.lower() == ".safetensors"
    if src.is_dir():
        if to_file:
            return _folder_to_single_file

        return folder_to_safetensors
    if to_file:
        return file_to_safetensors
    return _single_file_to_folder


# -- single file -> diffusers folder ---------------------------------------------------------------
def _single_file_to_folder(src: Path, dst: Path, opts: ConvertOptions, progress_factory) -> ConversionResult:
    with open_file(src) as source:
        shapes = source.shapes()
        detection = families.detect(shapes, source.extras, model_type=opts.model_type,
                                    prediction_type=opts.prediction_type, sidecar=_sidecar(src))
        plan = keymaps.plan_to_diffusers(shapes, detection, ema=opts.ema)
        _refuse_unmapped(plan, opts, src)
        sources: dict[str, Located] = dict(source.tensors)
        boxes = [Contained(f, allow_symlinks=opts.allow_symlinks) for f in (opts.config, opts.base) if f]
        extra_sources = _replacement_vae(plan, opts, detection, sources)
        extra_sources += _missing_from_base(plan, opts, detection, sources, src, boxes[-1] if opts.base else None)
        try:
            by_component = {c: {t.key: t.shape for t in plan.targets if t.component == c} for c in plan.components()}
            component_configs = (configs.configs_from_folder(boxes[0], detection, by_component) if opts.config
                                 else configs.component_configs(detection, by_component))
            notes: list[str] = []
            tokenizers = configs.tokenizer_folders(detection, boxes[0] if opts.config else None, notes)
            result = _write_folder(src, dst, opts, plan, sources, component_configs, tokenizers, detection,
                                   progress_factory)
            result.notes += notes
            result.symlinked = [str(box.given / name) for box in boxes for name in box.followed]
            return result
        finally:
            for s in extra_sources:
                s.close()


def _write_folder(src: Path, dst: Path, opts: ConvertOptions, plan: Plan, sources: dict[str, Located],
                  component_configs: dict[str, dict], tokenizers: dict[str, bytes], detection,
                  progress_factory) -> ConversionResult:
    cast = opts.cast()
    outputs = {c: component_tensors(plan, c, sources, cast) for c in plan.components()}
    total = sum(t.nbytes for ts in outputs.values() for t in ts)
    tick = progress_factory(total, sum(len(ts) for ts in outputs.values())) if progress_factory else None
    with staged(dst, overwrite=opts.overwrite, folder=True) as tmp, sources_unchanged(sources):
        for component, tensors in outputs.items():
            folder = tmp / component
            folder.mkdir()
            write_weights(folder, WEIGHT_STEM.get(component, "model"), tensors,
                          max_shard_bytes=opts.max_shard_bytes, progress=tick)
        for rel, config in component_configs.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        for rel, data in tokenizers.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return ConversionResult(str(src), str(dst), "single-file -> diffusers", detection.describe(),
                            sorted(outputs), sum(len(t) for t in outputs.values()), total, 0.0,
                            list(detection.evidence), [*detection.assumptions, *plan.notes], plan.dropped,
                            plan.unmapped)


def _refuse_unmapped(plan: Plan, opts: ConvertOptions, src: Path) -> None:
    if plan.unmapped and not opts.allow_unmapped:
        shown = ", ".join(plan.unmapped[:8]) + (f" and {len(plan.unmapped) - 8} more" if len(plan.unmapped) > 8 else "")
        raise ParseError(f"{len(plan.unmapped)} keys are not known to the key maps: {shown}; "
                         f"pass {option('allow_unmapped')} to convert without them", path=src)


def _replacement_vae(plan: Plan, opts: ConvertOptions, detection, sources: dict[str, Located]) -> list[Source]:
    """``--vae FILE``: the VAE targets come from another file (single-file or diffusers layout)."""
    if not opts.vae:
        return []

    vae = open_file(opts.vae)
    vae_targets = [replace(t, sources=tuple(f"--vae:{k}" for k in t.sources))
                   for t in keymaps.plan_vae(vae.shapes()).targets]
    plan.targets[:] = [t for t in plan.targets if t.component != "vae"] + vae_targets
    plan.notes.append(f"VAE taken from {opts.vae}")
    sources.update({f"--vae:{k}": v for k, v in vae.tensors.items()})
    return [vae]


def _missing_from_base(plan: Plan, opts: ConvertOptions, detection, sources: dict[str, Located],
                       src: Path, base_box: Contained | None) -> list[Source]:
    """Components the file lacks (a UNet-only file) are named, or taken from ``--base FOLDER``."""
    required = ["unet", "vae", *(slot.component for slot in detection.spec.text_encoders)]
    missing = [c for c in required if c not in plan.components()]
    if not missing:
        return []
    if not opts.base:
        raise ParseError(f"weights for {', '.join(missing)} appear to be missing from the file (found: "
                         f"{', '.join(plan.components()) or 'nothing'}); pass {option('base', 'FOLDER')}, a diffusers folder "
                         "of the same family, to take them from it", path=src)
    opened = []
    for component in missing:
        base = open_folder_component(Path(opts.base) / component, root=base_box)
        if base is None:
            raise ParseError(f"the base folder has no weights for {component}", path=Path(opts.base) / component)
        opened.append(base)
        rename = with_text_model_prefix if component.startswith("text_encoder") else (lambda k: k)
        for key, located in sorted(base.tensors.items()):
            if key.endswith("position_ids"):
                continue
            sources[f"--base:{component}/{key}"] = located
            plan.targets.append(Target(component, rename(key), (f"--base:{component}/{key}",), Op.COPY,
                                       located.ref.shape))
        plan.notes.append(f"{component} taken from the base folder {opts.base}")
    return opened


def _sidecar(src: Path) -> dict | None:
    """A ``<name>.yaml`` beside the checkpoint (the original training config), read as plain data."""
    yaml_path = src.with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    try:
        import yaml
    except ImportError:
        return None
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ParseError(f"cannot read the sidecar config: {exc}", path=yaml_path) from None
    return data if isinstance(data, dict) else None


# -- diffusers folder -> single file ---------------------------------------------------------------
def _folder_to_single_file(src: Path, dst: Path, opts: ConvertOptions, progress_factory) -> ConversionResult:
    box = Contained(src, allow_symlinks=opts.allow_symlinks)
    model_index = _read_json(box.resolve("model_index.json"))
    check_component_names(box, model_index)
    sources: dict[str, Located] = {}
    opened: list[Source] = []
    shapes_by_component: dict[str, dict[str, tuple[int, ...]]] = {}
    configs: dict[str, dict] = {}
    try:
        for component in WEIGHT_STEM:
            if not box.resolve(component).is_dir():
                continue
            source = open_folder_component(src / component, root=box)
            if source is None:
                continue
            opened.append(source)
            shapes_by_component[component] = source.shapes()
            sources.update({f"{component}/{k}": v for k, v in source.tensors.items()})
            config_path = box.resolve("config.json", under=component)
            if config_path.is_file():
                configs[component] = _read_json(config_path)
        scheduler = box.resolve("scheduler/scheduler_config.json")
        if scheduler.is_file():
            configs["scheduler"] = _read_json(scheduler)
        detection = families.detect_folder(model_index, configs, shapes_by_component)
        plan = keymaps.plan_to_single_file(shapes_by_component, detection)
        _refuse_unmapped(plan, opts, src)
        tensors = component_tensors(plan, "", sources, opts.cast()) + _markers(keymaps.marker_keys(detection))
        total = sum(t.nbytes for t in tensors)
        tick = progress_factory(total, len(tensors)) if progress_factory else None
        with staged(dst, overwrite=opts.overwrite, folder=False) as tmp, sources_unchanged(sources):
            write_safetensors(tmp, tensors, {"format": "pt"}, tick, verify=True)  # checked as it is written
    finally:
        for s in opened:
            s.close()
    return ConversionResult(str(src), str(dst), "diffusers -> single-file", detection.describe(),
                            sorted(shapes_by_component), len(tensors), total, 0.0, list(detection.evidence),
                            [*detection.assumptions, *plan.notes], plan.dropped, plan.unmapped,
                            [str(src / name) for name in box.followed])


def _markers(names: list[str]) -> list[OutTensor]:
    """Empty marker tensors (``v_pred``, ``ztsnr``) that A1111 and ComfyUI read from SDXL files."""
    return [OutTensor(name, DTYPES["F32"], (0,), lambda: iter(())) for name in names]


def _read_json(path: Path) -> dict:
    return read_json_object(path, "missing: not a diffusers folder")
