"""Writing an adapter conversion: the checkpoint converter's guarantees, for one file or one folder.

The tensors go through the streaming writer and are verified as they are written; the output is
staged beside the destination and renamed into place only when complete, verified, and no source
file changed meanwhile (:mod:`tensorsafe.converter.output`, :mod:`tensorsafe.converter.source_io`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tensorsafe.converter.output import staged
from tensorsafe.converter.source_io import sources_unchanged
from tensorsafe.converter.sources import Located
from tensorsafe.converter.writer import OutTensor, write_safetensors
from tensorsafe.tensors import DType

ProgressFactory = Callable[[int, int], Callable[[int], None]] | None


def write_file(dst: Path, tensors: list[OutTensor], metadata: dict[str, str] | None, sources: dict[str, Located],
               *, overwrite: bool, progress_factory: ProgressFactory = None) -> int:
    """One safetensors file at ``dst``; returns the tensor bytes written."""

    total = sum(t.nbytes for t in tensors)
    tick = progress_factory(total, len(tensors)) if progress_factory else None
    with staged(dst, overwrite=overwrite, folder=False) as tmp, sources_unchanged(sources):
        write_safetensors(tmp, tensors, metadata, tick, verify=True)
    return total


def write_model_folder(dst: Path, stem: str, tensors: list[OutTensor], config: dict, sources: dict[str, Located],
                       *, overwrite: bool, progress_factory: ProgressFactory = None) -> int:
    """A diffusers model folder: ``config.json`` and ``<stem>.safetensors``; returns the tensor bytes."""

    total = sum(t.nbytes for t in tensors)
    tick = progress_factory(total, len(tensors)) if progress_factory else None
    with staged(dst, overwrite=overwrite, folder=True) as tmp, sources_unchanged(sources):
        write_safetensors(tmp / f"{stem}.safetensors", tensors, None, tick, verify=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return total


def bytes_tensor(name: str, dtype: DType, shape: tuple[int, ...], data: bytes) -> OutTensor:
    """A tensor whose bytes the converter made (an alpha, a stacked embedding)."""
    return OutTensor(name, dtype, shape, lambda: iter([memoryview(data)]) if data else iter(()))
