"""``convert``: a single file becomes a diffusers folder, a diffusers folder becomes a single file.

The direction follows the source. Each step is a small function; the plan (what goes where) comes
from the family's key maps, the bytes from the streaming writer, and the output is staged beside
the destination and renamed into place only when complete and verified.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from tensorsafe.convert.configs import check_component_names, read_json_object
from tensorsafe.convert.execute import DEFAULT_MAX_SHARD_BYTES, component_tensors, write_weights
from tensorsafe.convert.output import staged
from tensorsafe.convert.plan import Op, Plan, Target
from tensorsafe.convert.source_io import first_change, leases_held, release_leases
from tensorsafe.convert.sources import Located, Source, open_file, open_folder_component
from tensorsafe.convert.writer import OutTensor
from tensorsafe.errors import OutputError, ParseError, TensorsafeError, UsageError, option
from tensorsafe.paths import Contained, require_separate
from tensorsafe.tensors import DTYPES, DType

DTYPE_NAMES = {"fp16": "F16", "float16": "F16", "bf16": "BF16", "bfloat16": "BF16", "fp32": "F32", "float32": "F32"}
WEIGHT_STEM = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
               "text_encoder": "model", "text_encoder_2": "model"}


@dataclass
class ConvertOptions:
    """How to convert; the fields match ``tensorsafe convert``'s options.

    Attributes:
        dtype: Cast float tensors to ``fp16``, ``bf16`` or ``fp32``; ``None`` keeps them.
        ema: ``auto``, ``yes`` or ``no``: use the UNet's EMA copy when the checkpoint carries one.
        vae: A file to take the VAE from instead.
        config: A diffusers folder to take component configs, scheduler and tokenizers from.
        base: A diffusers folder to take the components the file lacks from (a UNet-only file).
        model_type: Override the detected family: ``sd1``, ``sd2``, ``sdxl``, ``sdxl-refiner``.
        prediction_type: ``epsilon`` or ``v_prediction``, where the weights cannot tell.
        overwrite: Replace an existing destination (only once the new output is complete).
        allow_unmapped: Convert even when some keys are unknown to the key maps.
        max_shard_bytes: Bytes per weights file before sharding with an index.
        allow_symlinks: Follow symlinks in a source, ``--config`` or ``--base`` folder whose targets are
            outside it (weights kept in a shared cache); by default they are refused.
    """

    dtype: str | None = None
    ema: str = "auto"
    vae: str | None = None
    config: str | None = None
    base: str | None = None
    model_type: str | None = None
    prediction_type: str | None = None
    overwrite: bool = False
    allow_unmapped: bool = False
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    allow_symlinks: bool = False

    def cast(self) -> DType | None:
        if self.dtype is None:
            return None
        try:
            return DTYPES[DTYPE_NAMES[self.dtype.lower()]]
        except KeyError:
            raise UsageError(f"{option('dtype', None)} must be one of fp16, bf16, fp32, not {self.dtype!r}") from None


@dataclass
class ConversionResult:
    """What a conversion did.

    Attributes:
        src: The source file or folder.
        dst: The destination written.
        direction: ``single-file -> diffusers`` or ``diffusers -> single-file``.
        family: The detected model family, described in one line.
        components: The diffusers components written or read (``unet``, ``vae``, ``text_encoder``, ...).
        tensors: Tensors written.
        bytes_written: Tensor bytes written.
        seconds: Wall time.
        evidence: The keys and shapes the family was detected from.
        notes: What was assumed or taken from elsewhere.
        dropped: Keys left out on purpose, with the reason.
        unmapped: Keys the key maps do not know (converted only with ``allow_unmapped``).
        symlinked: Files read through a symlink leading out of their folder (``allow_symlinks``).
    """

    src: str
    dst: str
    direction: str
    family: str
    components: list[str]
    tensors: int
    bytes_written: int
    seconds: float
    evidence: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    symlinked: list[str] = field(default_factory=list)


Progress = Callable[[int], None]


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, options: ConvertOptions | None = None,
            progress_factory: Callable[[int, int], Progress] | None = None, **kwargs) -> ConversionResult:
    """Convert ``src`` to ``dst``; keyword arguments are :class:`ConvertOptions` fields."""
    options = options or ConvertOptions(**kwargs)
    src_path = Path(src)
    if not src_path.exists():
        raise UsageError(f"{src_path} does not exist", path=src_path)
    require_separate(src_path, dst)
    started = time.perf_counter()
    try:
        with leases_held():
            if src_path.is_dir():
                result = _folder_to_single_file(src_path, Path(dst), options, progress_factory)
            else:
                result = _single_file_to_folder(src_path, Path(dst), options, progress_factory)
    except OSError as exc:
        raise OutputError(f"cannot write the output: {exc.strerror or exc}; nothing was changed",
                          path=getattr(exc, "filename", None) or dst) from exc
    result.seconds = time.perf_counter() - started
    return result


# -- single file -> diffusers folder ---------------------------------------------------------------
def _single_file_to_folder(src: Path, dst: Path, opts: ConvertOptions, progress_factory) -> ConversionResult:
    from tensorsafe.convert import configs, families, keymaps

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
    with staged(dst, overwrite=opts.overwrite, folder=True) as tmp, _sources_unchanged(sources):
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


@contextlib.contextmanager
def _sources_unchanged(sources: dict[str, Located]) -> Iterator[None]:
    """The output is committed only if no source file changed while it was written; a failure while
    writing (a short read, a verification that differs) is reported as the change that caused it."""
    try:
        yield
    except (TensorsafeError, OSError) as exc:
        changed = first_change(s.watch for s in sources.values())
        if changed is not None:
            raise changed from exc
        raise
    changed = first_change(s.watch for s in sources.values())
    if changed is not None:
        raise changed
    release_leases()


def _refuse_unmapped(plan: Plan, opts: ConvertOptions, src: Path) -> None:
    if plan.unmapped and not opts.allow_unmapped:
        shown = ", ".join(plan.unmapped[:8]) + (f" and {len(plan.unmapped) - 8} more" if len(plan.unmapped) > 8 else "")
        raise ParseError(f"{len(plan.unmapped)} keys are not known to the key maps: {shown}; "
                         f"pass {option('allow_unmapped')} to convert without them", path=src)


def _replacement_vae(plan: Plan, opts: ConvertOptions, detection, sources: dict[str, Located]) -> list[Source]:
    """``--vae FILE``: the VAE targets come from another file (single-file or diffusers layout)."""
    if not opts.vae:
        return []
    from tensorsafe.convert import keymaps

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
    from tensorsafe.convert.keymaps.clip import with_text_model_prefix

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
    from tensorsafe.convert import families, keymaps
    from tensorsafe.convert.writer import write_safetensors

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
        with staged(dst, overwrite=opts.overwrite, folder=False) as tmp, _sources_unchanged(sources):
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
