"""A transformers or diffusers folder with pickle weights to the same folder with safetensors weights.

``tensorsafe convert ./repo ./repo-safetensors``: in the folder and in each subfolder (diffusers
components), every weights file of the Hugging Face layout becomes its safetensors twin, one output
file per input file, so a sharded checkpoint keeps its shards:

- ``pytorch_model.bin`` -> ``model.safetensors``; ``pytorch_model-00001-of-00003.bin`` ->
  ``model-00001-of-00003.safetensors``, with ``pytorch_model.bin.index.json`` rewritten as
  ``model.safetensors.index.json`` (the names the weights were written under; tied aliases are
  not in any file, so not in the index: the loader re-ties them);
- ``diffusion_pytorch_model.bin`` (and other stems, ``adapter_model.bin``) keep their stem.

Every other file (configs, tokenizers, README, weights already in safetensors) is copied byte for
byte, except pickles: any other file that is a pickle by its first bytes, or named like one
(``training_args.bin``, ``optimizer.pt``, ``rng_state.pth``), is left out and listed, so the new
folder holds no pickle at all. Hidden entries (``.git``, ``.cache``) are skipped. Every name is
resolved inside the source folder (:mod:`tensorsafe.paths`); the source is only read.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tensorsafe.converter.options import ConversionResult, ConvertOptions
from tensorsafe.converter.output import staged
from tensorsafe.converter.source_io import sources_unchanged
from tensorsafe.converter.sources import _index_names
from tensorsafe.converter.to_safetensors import SD_ONLY_OPTIONS, ProgressFactory, open_checkpoint, plan_file
from tensorsafe.converter.writer import write_safetensors
from tensorsafe.errors import ParseError, TensorsafeError, UsageError, option
from tensorsafe.paths import Contained
from tensorsafe.readers.blob import MappedFile, Span
from tensorsafe.readers.sniff import Kind, sniff
from tensorsafe.readers.zip import open_zip

SAFETENSORS_STEM = {"pytorch_model": "model"}
"""A pickle weights stem whose safetensors twin has another name (transformers'); others keep theirs."""
WEIGHT_STEMS = ("pytorch_model", "diffusion_pytorch_model", "adapter_model")
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".dill"})
SHARD = re.compile(r"-(\d{5}-of-\d{5})\.bin$")


@dataclass
class WeightGroup:
    """One weights file, or the shards of one index, in one folder (``rel``, relative to the source)."""

    rel: str
    stem: str
    shards: list[str]
    index: str | None = None

    @property
    def new_stem(self) -> str:
        return SAFETENSORS_STEM.get(self.stem, self.stem)

    def new_names(self) -> list[str]:
        if self.index is None:
            return [f"{self.new_stem}.safetensors"]
        n = len(self.shards)
        return [f"{self.new_stem}-{m.group(1)}.safetensors" if (m := SHARD.search(name)) and len(self.shards) > 1
                else f"{self.new_stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i, name in enumerate(self.shards)]

    def taken_by_existing(self, names: set[str]) -> bool:
        """The folder already has this group's safetensors twin (a repository that ships both)."""
        return f"{self.new_stem}.safetensors" in names or f"{self.new_stem}.safetensors.index.json" in names


def folder_to_safetensors(src: Path, dst: Path, opts: ConvertOptions,
                          progress_factory: ProgressFactory | None = None) -> ConversionResult:
    """Convert every pickle weights file of ``src`` into ``dst`` (staged, verified, renamed into place)."""
    _refuse_options(opts)
    box = Contained(src, allow_symlinks=opts.allow_symlinks)
    layout = _survey(box)
    if not any(groups for groups, _, _ in layout.values()):
        raise UsageError("no pickle weights here (pytorch_model.bin, diffusion_pytorch_model.bin, their shards and "
                         ".bin.index.json): nothing to convert; to write a diffusers folder as one single-file "
                         "checkpoint, give a destination ending in .safetensors", path=src)
    result = ConversionResult(str(src), str(dst), "pickle weights folder -> safetensors folder",
                              "transformers/diffusers folder", [], 0, 0, 0.0)
    with staged(dst, overwrite=opts.overwrite, folder=True) as tmp:
        for rel, (groups, copies, left_out) in layout.items():
            out = tmp / rel
            out.mkdir(parents=True, exist_ok=True)
            for group in groups:
                _convert_group(box, group, out, opts, progress_factory, result)
            for name in copies:
                shutil.copyfile(box.resolve(name, under=rel), out / name)
            result.dropped.update({_rel(rel, name): why for name, why in left_out.items()})
    result.components = sorted({_rel(g.rel, "") or "." for gs, _, _ in layout.values() for g in gs})
    result.symlinked = [str(src / name) for name in box.followed]
    return result


def _refuse_options(opts: ConvertOptions) -> None:
    if opts.key:
        raise UsageError(f"{option('key', opts.key)} picks an entry of one checkpoint file; a folder's weights files "
                         "are state dicts already")
    given = [name for name in SD_ONLY_OPTIONS if getattr(opts, name)]
    if given:
        raise UsageError(f"{option(given[0], None)} applies to a conversion into a diffusers folder from one file")


Survey = dict[str, tuple[list[WeightGroup], list[str], dict[str, str]]]


def _survey(box: Contained) -> Survey:
    """For each folder (relative path): its weight groups, the files to copy, the files left out and why."""
    layout: Survey = {}
    for here, dirs, files in os.walk(box.given):
        rel = os.path.relpath(here, box.given)
        rel = "" if rel == "." else rel
        left_out: dict[str, str] = {}
        for d in sorted(dirs):
            if not d.startswith(".") and os.path.islink(os.path.join(here, d)):
                left_out[d] = "a symlinked folder: not followed"
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(here, d)))
        names = sorted(f for f in files if not f.startswith("."))
        groups = _weight_groups(box, rel, names, left_out)
        used = {n for g in groups for n in g.shards} | {g.index for g in groups if g.index}
        copies = []
        for name in names:
            if name in used or name in left_out:
                continue
            why = _pickle_reason(name, box.resolve(name, under=rel))
            if why:
                left_out[name] = why
            else:
                copies.append(name)
        layout[rel] = (groups, copies, left_out)
    return layout


def _weight_groups(box: Contained, rel: str, names: list[str], left_out: dict[str, str]) -> list[WeightGroup]:
    present = set(names)
    groups: list[WeightGroup] = []
    for name in names:
        if name.endswith(".bin.index.json"):
            shards = _index_names(box.resolve(name, under=rel))
            for shard in shards:
                box.resolve(shard, under=rel)  # refused unless inside
                if shard not in present:
                    raise ParseError(f"the shard index names {shard!r}, which is not in the folder",
                                     path=box.given / rel / name)
            groups.append(WeightGroup(rel, name[:-len(".bin.index.json")], shards, name))
    indexed = {s for g in groups for s in g.shards}
    groups += [WeightGroup(rel, stem, [f"{stem}.bin"]) for stem in WEIGHT_STEMS
               if f"{stem}.bin" in present and f"{stem}.bin" not in indexed]
    kept = []
    for g in groups:
        if g.taken_by_existing(present):
            for name in [*g.shards, *([g.index] if g.index else [])]:
                left_out[name] = f"not converted: {g.new_stem}.safetensors is already in the folder (copied)"
        else:
            kept.append(g)
    return kept


def _pickle_reason(name: str, path: Path) -> str | None:
    """Why a file that is not a converted weights file is left out, or None to copy it (``name``: its name in
    the folder; ``path``: the file it resolves to, a Hub cache blob without a suffix, say)."""
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        return "named like a pickle and not a weights file of this layout: not copied (convert it on its own)"
    if not path.is_file():
        return "not a regular file"
    with MappedFile(path) as mf:
        kind = sniff(mf.span)
        if kind is Kind.PICKLE or (kind is Kind.ZIP and _holds_pickle(mf.span)):
            return "a pickle, not a weights file of this layout: not copied (convert it on its own)"
    return None


def _holds_pickle(span: Span) -> bool:
    """A zip archive with a ``.pkl`` member (a ``torch.save`` file under another name); an unreadable zip counts."""
    try:
        return any(m.name.endswith(".pkl") for m in open_zip(span).members)
    except (TensorsafeError, ValueError):
        return True


def _convert_group(box: Contained, group: WeightGroup, out: Path, opts: ConvertOptions,
                   progress_factory: ProgressFactory | None, result: ConversionResult) -> None:
    weight_map: dict[str, str] = {}
    total = 0
    for shard, new_name in zip(group.shards, group.new_names()):
        path = box.resolve(shard, under=group.rel)
        with open_checkpoint(path, folder=box) as source:
            plan = plan_file(source, ema=opts.ema, cast=opts.cast(), metadata=opts.metadata)
            tick = progress_factory(plan.nbytes, len(plan.tensors)) if progress_factory else None
            with sources_unchanged(plan.located):
                write_safetensors(out / new_name, plan.tensors, plan.metadata, tick, verify=True)
        dup = next((t.name for t in plan.tensors if t.name in weight_map), None)
        if dup is not None:
            raise ParseError(f"tensor {dup!r} appears in two shards", path=path)
        weight_map.update({t.name: new_name for t in plan.tensors})
        total += plan.nbytes
        new_rel, old_rel = _rel(group.rel, new_name), _rel(group.rel, shard)
        result.files[new_rel] = old_rel
        result.aliases.update({f"{new_rel}:{a}": k for a, k in plan.aliases.items()})
        result.dropped.update({f"{old_rel}:{k}": why for k, why in plan.dropped.items()})
        result.notes += [f"{old_rel}: {n}" for n in plan.notes[1:]]  # the first says where the tensors were
        result.tensors += len(plan.tensors)
        result.bytes_written += plan.nbytes
    if group.index is not None:
        old = json.loads(box.resolve(group.index, under=group.rel).read_text(encoding="utf-8"))
        meta = old.get("metadata") if isinstance(old.get("metadata"), dict) else {}
        index = {"metadata": {**meta, "total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / f"{group.new_stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n",
                                                                      encoding="utf-8")


def _rel(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel and name else rel or name
