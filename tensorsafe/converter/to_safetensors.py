"""Any clean checkpoint file to one ``.safetensors`` file: same tensor names, dtypes, shapes and bytes.

The source is scanned and read by the restricted reader (no pickle code runs); its state dict is
found as :mod:`.state_tree` says, and streamed by the same writer, verification and staged output
as every other conversion. Two things a pickle can hold that safetensors cannot:

- **Tied weights** (two names, one view of one storage: an input embedding reused as the output
  head). The bytes are written once, under the name that comes first in the file (the module that
  owns the weight is saved before the one that reuses it), and each other name is recorded in
  ``__metadata__`` as ``{alias: kept name}``, which is what ``safetensors.torch.save_model`` and the
  Hub's conversion bot write. Loaders re-tie from the model, not the file: ``from_pretrained``
  ties by its config, ``safetensors.torch.load_model`` by the model's own shared parameters.
  Views of one storage that are not the same view (slices, transposes) are written as their own
  contiguous bytes; nothing else is shared.
- **Values that are not tensors**: kept as JSON text in ``__metadata__`` or dropped and listed, by
  the rule in :mod:`.state_tree`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tensorsafe.converter.execute import out_tensor
from tensorsafe.converter.families import EMA_PREFIX, UNET_PREFIX, _ema, ema_key
from tensorsafe.converter.keymaps import EMA_CHOICES
from tensorsafe.converter.options import ConversionResult, ConvertOptions
from tensorsafe.converter.output import staged
from tensorsafe.converter.plan import Op, Target
from tensorsafe.converter.source_io import sources_unchanged
from tensorsafe.converter.sources import Located, Source, open_file
from tensorsafe.converter.state_tree import Selection, select
from tensorsafe.converter.writer import OutTensor, write_safetensors
from tensorsafe.errors import ParseError, UnsafeFileError, UsageError, option
from tensorsafe.tensors import DTYPES, DType, TensorRef

ProgressFactory = Callable[[int, int], Callable[[int], None]]

DEFAULT_METADATA = {"format": "pt"}
"""What transformers' ``from_pretrained`` requires of a ``.safetensors`` file's metadata."""
PICKLED_MODEL = re.compile(r"^(torch\.nn\.modules|torch\.jit|transformers\.models|diffusers\.models|__main__)\.")


@dataclass
class FilePlan:
    """One output file: its tensors, its metadata, and what was done to get there."""

    tensors: list[OutTensor]
    metadata: dict[str, str]
    located: dict[str, Located]
    where: str
    aliases: dict[str, str] = field(default_factory=dict)
    """Alias name -> the name its bytes were written under."""
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def open_checkpoint(path: str | Path, **kwargs: Any) -> Source:
    """:func:`~tensorsafe.converter.sources.open_file`, with a refusal that says when the file is a
    whole pickled model rather than its weights."""
    try:
        return open_file(path, **kwargs)
    except UnsafeFileError as exc:
        raise whole_model_refusal(exc) or exc from None


def whole_model_refusal(exc: UnsafeFileError) -> UnsafeFileError | None:
    """For a file refused because it pickles a model object (``torch.save(model)``), the refusal that
    says so and what to do instead; None for any other refusal."""
    found = next((f for f in exc.findings if f.trigger and PICKLED_MODEL.match(f.trigger)), None)
    if found is None:
        return None
    return UnsafeFileError(
        f"refusing to read a file that fails its scan: it is a whole pickled model object ({found.trigger}, "
        f"{found.rule_id}), not a state dict; loading it runs that class's code, so it cannot become weights. In "
        "the code that saved it, save model.state_dict() and convert that", path=exc.path, report=exc.report)


def plan_file(source: Source, *, key: str | None = None, ema: str = "auto", cast: DType | None = None,
              metadata: dict[str, str] | None = None) -> FilePlan:
    """What to write for one source file (``cast``: a :class:`~tensorsafe.tensors.DType` for float tensors)."""
    sel = _selection(source, key)
    located = {name: source.locate(ref) for name, ref in sel.tensors.items()}
    dropped = dict(sel.dropped)
    notes = [f"tensors under {sel.where!r} (unwrapped)" if sel.where and not key else
             f"tensors under {sel.where!r}" if sel.where else "tensors at the top level"]
    if sel.flattened:
        notes.append(f"{sel.flattened} tensors named from nested containers, their keys joined with dots")
    names = _ema_names(sel.tensors, ema, notes, dropped)
    _refuse_unwritable(names, sel.tensors, source)
    aliases = find_aliases({out: sel.tensors[src] for out, src in names.items()})
    _note_views(sel.tensors, names, aliases, notes)
    tensors = [out_tensor(Target("", out, (src,), Op.COPY, sel.tensors[src].shape), located, cast)
               for out, src in names.items() if out not in aliases]
    if cast is not None and any(t.dtype != sel.tensors[names[t.name]].dtype for t in tensors):
        notes.append(f"float tensors cast to {cast.name}")
    own = source.extras.get("__metadata__") if source.root is None else None
    base = {**DEFAULT_METADATA, **(own if isinstance(own, dict) else {})}
    meta = build_metadata(sel.kept, aliases, metadata, dropped, base=base)
    return FilePlan(tensors, meta, located, sel.where, aliases, dropped, notes)


def _selection(source: Source, key: str | None) -> Selection:
    if source.root is None:  # a safetensors file: its tensors and its own metadata, as they are
        if key:
            raise UsageError(f"{option('key', key)} picks an entry of a pickle checkpoint; {source.path} is "
                             "a safetensors file, which is one flat set of tensors", path=source.path)
        return Selection("", {k: v.ref for k, v in source.tensors.items()})
    try:
        return select(source.root, key=key)
    except (ParseError, UsageError) as exc:
        exc.path = exc.path or source.path
        raise


def _ema_names(tensors: dict[str, TensorRef], ema: str, notes: list[str], dropped: dict[str, str]) -> dict[str, str]:
    """Output name -> source name: every tensor as it is, less the SD EMA copy (``no``) or with the EMA
    copy written under the UNet's own names (``yes``, what an ``-emaonly`` file is)."""
    if ema not in EMA_CHOICES:
        raise UsageError(f"{option('ema', None)} must be one of {', '.join(EMA_CHOICES)}, not {ema!r}")
    names = {k: k for k in tensors}
    ema_names = [k for k in tensors if k.startswith(EMA_PREFIX)]
    if ema == "auto":
        if ema_names:
            notes.append(f"the EMA copy ({len(ema_names)} {EMA_PREFIX}* tensors) is kept as it is; "
                         "--ema no drops it, --ema yes writes it in place of the UNet")
        return names
    if ema == "yes":
        info = _ema({k: v.shape for k, v in tensors.items()}, UNET_PREFIX)
        if not info.available:
            why = "no model_ema.* keys" if not info.keys else f"the EMA copy is incomplete: {info.missing} has no twin"
            raise UsageError(f"{option('ema', 'yes')}, but this file has {why}; use {option('ema', 'auto')} or "
                             f"{option('ema', 'no')}")
        for k in tensors:
            if k.startswith(UNET_PREFIX):
                names[k] = ema_key(k)
        notes.append(f"the UNet's weights are its EMA copy ({info.keys} tensors), written under the UNet's names")
    for k in ema_names:
        del names[k]
        dropped[k] = "EMA copy of the UNet (--ema no)" if ema == "no" else "EMA copy, written under the UNet's names"
    if not ema_names:
        notes.append(f"no {EMA_PREFIX}* tensors: --ema {ema} changed nothing")
    return names


def _refuse_unwritable(names: dict[str, str], tensors: dict[str, TensorRef], source: Source) -> None:
    for out, src in names.items():
        dtype = tensors[src].dtype
        if DTYPES.get(dtype.name) is not dtype:
            raise ParseError(f"tensor {src!r} is {dtype.torch}, which safetensors cannot store", path=source.path,
                             location=src)


def find_aliases(tensors: dict[str, TensorRef]) -> dict[str, str]:
    """Alias name -> kept name, for tensors that are the same view of the same storage (the first name in
    file order is kept)."""
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, ref in tensors.items():
        if not ref.numel:
            continue
        ident = (ref.storage, ref.dtype.name, ref.shape, ref.stride, ref.storage_offset)
        if ident in first:
            aliases[name] = first[ident]
        else:
            first[ident] = name
    return aliases


def _note_views(tensors: dict[str, TensorRef], names: dict[str, str], aliases: dict[str, str], notes: list[str]) -> None:
    written = [tensors[src] for out, src in names.items() if out not in aliases]
    per_storage: dict[object, int] = {}
    for ref in written:
        per_storage[ref.storage] = per_storage.get(ref.storage, 0) + 1
    shared = sum(n for n in per_storage.values() if n > 1)
    strided = sum(not ref.is_contiguous for ref in written)
    if shared:
        notes.append(f"{shared} tensors are different views of a shared storage: each written as its own bytes")
    if strided:
        notes.append(f"{strided} non-contiguous tensors written in row-major order")


def build_metadata(kept: dict[str, str], aliases: dict[str, str], given: dict[str, str] | None,
                   dropped: dict[str, str], base: dict[str, str] = DEFAULT_METADATA) -> dict[str, str]:
    """``base`` (``{"format": "pt"}``, with a safetensors source's own metadata), the kept plain values, the
    aliases, then what the caller gave (which wins)."""
    given = check_metadata(given)
    out = dict(base)
    for name, text in kept.items():
        if name in out or name in given or name in aliases:
            dropped[name] = f"its name is already taken in __metadata__ (value {text[:40]})"
        else:
            out[name] = text
    out.update(aliases)
    out.update(given)
    return out


def check_metadata(given: dict[str, str] | None) -> dict[str, str]:
    if given is None:
        return {}
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise UsageError(f"{option('metadata', None)} must map text to text")
    return dict(given)


def file_to_safetensors(src: Path, dst: Path, opts: ConvertOptions,
                        progress_factory: ProgressFactory | None = None) -> ConversionResult:
    """``tensorsafe convert model.ckpt model.safetensors``: one file, staged and verified.

    ``opts`` is a :class:`~tensorsafe.converter.run.ConvertOptions`; returns a
    :class:`~tensorsafe.converter.run.ConversionResult`."""

    _refuse_folder_options(opts)
    with open_checkpoint(src) as source:
        plan = plan_file(source, key=opts.key, ema=opts.ema, cast=opts.cast(), metadata=opts.metadata)
        tick = progress_factory(plan.nbytes, len(plan.tensors)) if progress_factory else None
        with staged(dst, overwrite=opts.overwrite, folder=False) as tmp, sources_unchanged(plan.located):
            write_safetensors(tmp, plan.tensors, plan.metadata, tick, verify=True)  # checked as it is written
        fmt = source.format
    return ConversionResult(str(src), str(dst), f"{fmt} -> safetensors", f"{fmt} file", [], len(plan.tensors),
                            plan.nbytes, 0.0, [], plan.notes, plan.dropped, aliases=plan.aliases,
                            metadata=plan.metadata)


SD_ONLY_OPTIONS = ("vae", "config", "base", "model_type", "prediction_type")


def _refuse_folder_options(opts: ConvertOptions) -> None:
    """Options that only mean something for a diffusers folder are refused, not ignored."""
    given = [name for name in SD_ONLY_OPTIONS if getattr(opts, name)]
    if given:
        raise UsageError(f"{option(given[0], None)} applies to a conversion into a diffusers folder; writing "
                         "safetensors weights keeps the file's own tensors")
