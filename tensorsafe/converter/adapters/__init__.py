"""Adapters and parts: LoRA files, textual-inversion embeddings and VAEs, converted between the formats
tools use (docs/conversion.md, "Adapters").

``convert`` hands every source to :func:`route` first: a LoRA, an embedding or a VAE is converted here,
anything else (``None``) by the checkpoint converter. What a file is comes from its key names alone
(:func:`adapter_kind`), read from the safetensors header or, for a pickle, through the restricted
reader after its scan.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from tensorsafe.converter.adapters.write import ProgressFactory
    from tensorsafe.converter.options import ConversionResult, ConvertOptions
    from tensorsafe.converter.sources import Source

from tensorsafe.checkpoint import read_checkpoint
from tensorsafe.converter.adapters.embedding import convert_embedding, convert_embedding_source, embedding_kind
from tensorsafe.converter.adapters.lora_convert import DIFFUSERS_FILE, convert_lora, convert_lora_source
from tensorsafe.converter.adapters.lora_file import is_diffusers, is_kohya
from tensorsafe.converter.adapters.vae import convert_vae, convert_vae_source, is_vae, is_vae_folder
from tensorsafe.converter.sources import open_file, safetensors_refs
from tensorsafe.errors import TensorsafeError, UsageError
from tensorsafe.paths import contained
from tensorsafe.readers.blob import MappedFile
from tensorsafe.readers.sniff import Kind, sniff

LORA, EMBEDDING, VAE = "lora", "embedding", "vae"
PICKLE_ADAPTER_MAX_BYTES = 1 << 30
"""Pickle sources larger than this are never taken for adapters without a look (a full SD checkpoint is
2 GB or more; an SD VAE pickle 335 MB): opening one costs a scan, which the checkpoint converter repeats."""


def adapter_kind(tensors: Iterable[str], root: object = None) -> str | None:
    """``lora``, ``embedding``, ``vae`` or None (a checkpoint, or something else), from the key names
    (``tensors``: names, or a mapping of names to tensor references, whose shapes tell a lone embedding)."""
    keys = list(tensors)
    if is_kohya(keys) or is_diffusers(keys):
        return LORA
    if embedding_kind(tensors, root) is not None:
        return EMBEDDING
    if is_vae(keys):
        return VAE
    return None


def route(src: str | os.PathLike, dst: str | os.PathLike, options: ConvertOptions,
          progress_factory: ProgressFactory = None) -> ConversionResult | None:
    """Convert ``src`` here when it is an adapter or a VAE and return the ``ConversionResult``; else None."""
    dst = Path(dst)
    src_path = Path(src)
    to_file = dst.suffix.lower() == ".safetensors"
    if src_path.is_dir():
        if is_vae_folder(src_path) and to_file:
            return convert_vae(src_path, dst, dtype=options.dtype, model_type=options.model_type,
                               overwrite=options.overwrite, progress_factory=progress_factory)
        lora = _lora_in_folder(src_path, options)
        if lora is None:
            return None
        src_path = lora
    source = _open_if_adapter(src_path)
    if source is None:
        return None
    with source:
        kind = adapter_kind(source.tensors, source.root)
        if kind is None or (kind == VAE and to_file):  # a VAE to .safetensors: the same keys, the checkpoint path
            return None
        if kind != VAE and not (to_file or dst.is_dir()):
            what = "a LoRA" if kind == LORA else "a textual-inversion embedding"
            raise UsageError(f"this is {what}: it converts to a .safetensors file or into an existing folder, "
                             f"not {dst}", path=src_path)
        cast = options.cast()
        if kind == LORA:
            return convert_lora_source(source, dst, to=options.to, cast=cast, options=options,
                                       progress_factory=progress_factory)
        if kind == EMBEDDING:
            return convert_embedding_source(source, dst, cast=cast, options=options, progress_factory=progress_factory)
        return convert_vae_source(source, dst, cast=cast, options=options, progress_factory=progress_factory)


def _lora_in_folder(folder: Path, options: ConvertOptions) -> Path | None:
    """The ``pytorch_lora_weights.safetensors`` of a folder that holds a diffusers LoRA (what
    ``save_lora_weights`` writes and ``load_lora_weights(folder)`` reads), else None."""
    if (folder / "model_index.json").exists() or (folder / "config.json").exists():
        return None
    path = contained(folder, allow_symlinks=options.allow_symlinks).resolve(DIFFUSERS_FILE)
    return path if path.is_file() else None


def _open_if_adapter(src: Path) -> Source | None:
    """The file opened (scanned or validated first) when its key names are an adapter's, else None: a
    safetensors header is read alone first, a pickle up to ``PICKLE_ADAPTER_MAX_BYTES`` through the
    restricted reader (its root object holds an A1111 embedding's nested tensors)."""
    with MappedFile(src) as mf:
        kind = sniff(mf.span)
        if kind is Kind.SAFETENSORS:
            try:
                refs, _ = safetensors_refs(mf, str(src))
            except TensorsafeError:
                return None  # the checkpoint converter validates it and names the problem
            if adapter_kind(refs) is None:
                return None
    if kind is not Kind.SAFETENSORS and not _pickle_adapter(src, kind):
        return None
    return open_file(src)


def _pickle_adapter(src: Path, kind: object) -> bool:
    """A small torch pickle whose keys are an adapter's, looked at through the restricted reader without
    holding the file (no read lease: the checkpoint converter opens and watches it for itself)."""
    if kind not in (Kind.PICKLE, Kind.ZIP) or src.stat().st_size > PICKLE_ADAPTER_MAX_BYTES:
        return False
    try:
        ckpt = read_checkpoint(src)
    except TensorsafeError:
        return False  # not a torch checkpoint, or unsafe: the checkpoint converter says so
    return adapter_kind(ckpt.tensors, ckpt.root) is not None


__all__ = ["route", "adapter_kind", "convert_lora", "convert_embedding", "convert_vae"]
