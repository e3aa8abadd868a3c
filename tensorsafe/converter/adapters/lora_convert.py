"""``convert`` for LoRA files: kohya/A1111/ComfyUI <-> diffusers/PEFT, with the same effect.

Down and up weights are copied byte for byte under their new names (cast only with ``dtype``).
The scale ``alpha / rank`` of every module is carried: into kohya ``.alpha`` scalars one way, into
the ``lora_adapter_metadata`` JSON that diffusers' ``load_lora_weights`` reads the other way
(``r``, ``lora_alpha`` and per-module ``rank_pattern``/``alpha_pattern``, as ``save_lora_weights``
writes them). A diffusers file then fuses to the same weights as the kohya file and back.
"""
from __future__ import annotations

import json
import os
import struct
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tensorsafe.converter.options import ConversionResult, ConvertOptions

from tensorsafe.converter.adapters.lora_file import (
    DIFFUSERS,
    FORMAT_TITLES,
    KOHYA,
    METADATA_KEY,
    LoraFile,
    LoraModule,
    read_lora,
)
from tensorsafe.converter.adapters.lora_names import UNET, module_to_kohya
from tensorsafe.converter.adapters.values import scalar
from tensorsafe.converter.adapters.write import ProgressFactory, bytes_tensor, write_file
from tensorsafe.converter.execute import out_tensor
from tensorsafe.converter.options import ConversionResult, ConvertOptions
from tensorsafe.converter.plan import Op, Target
from tensorsafe.converter.source_io import leases_held
from tensorsafe.converter.sources import Located, Source, open_file
from tensorsafe.converter.writer import OutTensor
from tensorsafe.errors import ParseError, UsageError, option
from tensorsafe.paths import require_separate
from tensorsafe.tensors import DTYPES, DType

TARGETS = (DIFFUSERS, KOHYA)
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None, dtype: str | None = None,
                 model_type: str | None = None, overwrite: bool = False, allow_unmapped: bool = False,
                 progress_factory: ProgressFactory = None) -> ConversionResult:
    """Convert a LoRA file to ``to`` (``diffusers`` or ``kohya``; default: the other format).

    ``dst`` is the file to write, or an existing folder to write it into (``pytorch_lora_weights.safetensors``
    for diffusers, the source's name for kohya). Returns a :class:`~tensorsafe.converter.run.ConversionResult`."""
    options = ConvertOptions(dtype=dtype, model_type=model_type, overwrite=overwrite, allow_unmapped=allow_unmapped)
    require_separate(Path(src), dst)
    with leases_held(), open_file(src) as source:
        return convert_lora_source(source, Path(dst), to=to, cast=options.cast(), options=options,
                                   progress_factory=progress_factory)


def convert_lora_source(source: Source, dst: Path, *, to: str | None, cast: DType | None, options: ConvertOptions,
                        progress_factory: ProgressFactory = None) -> ConversionResult:
    """The conversion of an opened source (what :func:`tensorsafe.converter.adapters.route` calls)."""

    started = time.perf_counter()
    metadata = source.extras.get("__metadata__")
    metadata = metadata if isinstance(metadata, dict) else {}
    lora = read_lora(source.shapes(), metadata, model_type=options.model_type, path=source.path)
    if lora.unmapped and not options.allow_unmapped:
        shown = ", ".join(lora.unmapped[:6]) + (f" and {len(lora.unmapped) - 6} more" if len(lora.unmapped) > 6 else "")
        raise ParseError(f"{len(lora.unmapped)} keys are not LoRA modules this converter knows: {shown}; pass "
                         f"{option('allow_unmapped')} to convert without them", path=source.path)
    target = to or (KOHYA if lora.format == DIFFUSERS else DIFFUSERS)
    if target not in TARGETS:
        raise UsageError(f"{option('to', None)} must be one of {', '.join(TARGETS)}, not {target!r}")
    alphas = module_alphas(lora, source.tensors)
    if target == DIFFUSERS:
        tensors, meta = _to_diffusers(lora, alphas, source.tensors, cast)
    else:
        tensors, meta = _to_kohya(lora, alphas, source.tensors, cast)
    dst = _destination(dst, target, source.path)
    written = write_file(dst, tensors, meta, source.tensors, overwrite=options.overwrite,
                         progress_factory=progress_factory)
    notes = [*lora.notes, _alpha_note(alphas, target)]
    if lora.unmapped:
        notes.append(f"left out {len(lora.unmapped)} unknown keys ({option('allow_unmapped')})")
    return ConversionResult(source.path, str(dst), f"{FORMAT_TITLES[lora.format]} LoRA -> {FORMAT_TITLES[target]} LoRA",
                            lora.describe(), sorted({m.component for m in lora.modules}), len(tensors), written,
                            time.perf_counter() - started, lora.evidence, notes, {}, lora.unmapped)


def module_alphas(lora: LoraFile, sources: dict[str, Located]) -> dict[LoraModule, float]:
    """Each module's alpha (its scale is alpha / rank): read from kohya's scalars, else known."""
    return {m: scalar(sources[m.alpha_key], m.alpha_key) if m.alpha_key else float(m.alpha or m.rank)
            for m in lora.modules}


def _copy(name: str, key: str, sources: dict[str, Located], cast: DType | None) -> OutTensor:
    return out_tensor(Target("", name, (key,), Op.COPY, sources[key].ref.shape), sources, cast)


def _to_diffusers(lora: LoraFile, alphas: dict[LoraModule, float], sources: dict[str, Located],
                  cast: DType | None) -> tuple[list[OutTensor], dict[str, str]]:
    tensors = []
    for m in lora.modules:
        tensors.append(_copy(f"{m.component}.{m.path}.lora_A.weight", m.down, sources, cast))
        tensors.append(_copy(f"{m.component}.{m.path}.lora_B.weight", m.up, sources, cast))
    configs = {}
    for component in sorted({m.component for m in lora.modules}):
        mods = [m for m in lora.modules if m.component == component]
        configs.update({f"{component}.{k}": v for k, v in adapter_config(mods, alphas).items()})
    return tensors, {"format": "pt", METADATA_KEY: json.dumps(configs, indent=2, sort_keys=True)}


def adapter_config(modules: list[LoraModule], alphas: dict[LoraModule, float]) -> dict:
    """PEFT ``LoraConfig`` fields for one component: the most common rank and alpha, the others per module.

    Text encoder module names go without ``text_model.`` so they match both transformers layouts."""
    def name(m: LoraModule) -> str:
        return m.path.removeprefix("text_model.") if m.component != UNET else m.path

    r = Counter(m.rank for m in modules).most_common(1)[0][0]
    alpha = Counter(alphas[m] for m in modules).most_common(1)[0][0]
    return {"r": r, "lora_alpha": alpha, "target_modules": sorted(name(m) for m in modules),
            "rank_pattern": {name(m): m.rank for m in modules if m.rank != r},
            "alpha_pattern": {name(m): alphas[m] for m in modules if alphas[m] != alpha},
            "use_dora": False, "use_rslora": False, "lora_bias": False}


def _to_kohya(lora: LoraFile, alphas: dict[LoraModule, float], sources: dict[str, Located],
              cast: DType | None) -> tuple[list[OutTensor], dict[str, str]]:
    tensors = []
    for m in lora.modules:
        name = module_to_kohya(m.component, m.path, lora.family)
        tensors.append(_copy(f"{name}.lora_down.weight", m.down, sources, cast))
        tensors.append(_copy(f"{name}.lora_up.weight", m.up, sources, cast))
        tensors.append(_alpha_tensor(f"{name}.alpha", alphas[m]))
    return tensors, {"ss_network_module": "networks.lora"}


def _alpha_tensor(name: str, alpha: float) -> OutTensor:
    """A scalar: float32 as kohya writes it, or float64 where float32 would round it (loaders call ``.item()``)."""
    if struct.unpack("<f", struct.pack("<f", alpha))[0] == alpha:
        return bytes_tensor(name, DTYPES["F32"], (), struct.pack("<f", alpha))
    return bytes_tensor(name, DTYPES["F64"], (), struct.pack("<d", alpha))


def _destination(dst: Path, target: str, src: str) -> Path:
    if not dst.is_dir():
        return dst
    return dst / (DIFFUSERS_FILE if target == DIFFUSERS else Path(src).with_suffix(".safetensors").name)


def _alpha_note(alphas: dict[LoraModule, float], target: str) -> str:
    scales = sorted({round(a / m.rank, 6) for m, a in alphas.items()})
    where = f"{METADATA_KEY} (lora_alpha, alpha_pattern)" if target == DIFFUSERS else "an .alpha tensor per module"
    shown = ", ".join(str(s) for s in scales[:4]) + (" ..." if len(scales) > 4 else "")
    return f"alpha carried in {where}: scale alpha/rank {shown}"
