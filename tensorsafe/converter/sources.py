"""Tensor sources for conversion: a single file (pickle or safetensors) or a diffusers folder.

Every file is scanned or validated first and refused unless clean; tensors are references into
the file (offsets), so nothing is loaded until the writer streams it. The converter reads those
bytes with ``pread`` or the kernel's copy, never through the map (see :mod:`.source_io`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tensorsafe.checkpoint import read_checkpoint, require_clean
from tensorsafe.converter.configs import check_component_names, read_json_object
from tensorsafe.converter.source_io import SourceChangedError, Watched
from tensorsafe.errors import ParseError, TensorsafeError
from tensorsafe.paths import Contained, contained
from tensorsafe.pickles.policy import Policy
from tensorsafe.readers.blob import MappedFile
from tensorsafe.readers.safetensors.read import read_tensor_refs
from tensorsafe.readers.sniff import Kind, sniff
from tensorsafe.tensors import TensorRef


@dataclass(frozen=True)
class Located:
    """A tensor and the buffer its offsets point into."""

    ref: TensorRef
    buf: object
    path: str
    fd: int | None = None
    """An open descriptor of the file ``buf`` maps (offsets are file offsets): for in-kernel copies."""
    watch: Watched | None = None
    """The file as it was when opened: the converter checks it did not change before committing."""


@dataclass
class Source:
    path: str
    format: str
    tensors: dict[str, Located] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)
    root: object = None
    """A pickle checkpoint's whole value as the restricted reader rebuilt it (None for safetensors)."""
    _files: list[MappedFile] = field(default_factory=list)
    _watches: list[Watched] = field(default_factory=list)
    _where: tuple | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.ref.shape for k, v in self.tensors.items()}

    def locate(self, ref: TensorRef) -> Located:
        """Any tensor reference of this one file (one found in :attr:`root`, say) as a :class:`Located`."""
        if self._where is None:
            raise ValueError("locate() needs a source opened from one file")
        return Located(ref, *self._where)

    def close(self) -> None:
        for w in self._watches:
            w.release()
        self._watches.clear()
        for f in self._files:
            f.close()
        self._files.clear()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_file(path: str | os.PathLike, policy: Policy | None = None, *, folder: Contained | None = None) -> Source:
    """One checkpoint file, judged by its bytes: safetensors or a torch pickle.

    ``folder``: the file is a path that folder's :meth:`~Contained.resolve` returned, and what is
    opened must still be it."""
    path = os.fspath(path)
    mf = MappedFile(path)
    if folder is not None:
        try:
            folder.check_opened(mf._fh.fileno(), path)
        except BaseException:
            mf.close()
            raise
    watch = Watched.open_fd(path, mf._fh.fileno())
    try:
        kind = sniff(mf.span)
        if kind is Kind.SAFETENSORS:
            require_clean(path)
            source = Source(path, "safetensors")
            refs, extras = safetensors_refs(mf, path)
        else:
            ckpt = read_checkpoint(path, policy=policy)
            source = Source(path, ckpt.format)
            refs, extras = ckpt.tensors, ckpt.extras
            source.root = ckpt.root
    except TensorsafeError as exc:
        changed = watch.change()
        watch.release()
        mf.close()
        if changed is not None:
            raise SourceChangedError(path, changed) from exc
        raise
    except BaseException:
        watch.release()
        mf.close()
        raise
    fd = mf._fh.fileno() if mf.span.size else None  # the mapped file itself, not the path opened again
    source.tensors = {k: Located(r, mf.span.buf, path, fd, watch) for k, r in refs.items()}
    source.extras = extras
    source._where = (mf.span.buf, path, fd, watch)
    source._files.append(mf)
    source._watches.append(watch)
    return source


def safetensors_refs(mf: MappedFile, path: str) -> tuple[dict[str, TensorRef], dict[str, object]]:
    """Tensor references from a safetensors header (absolute file offsets) through the one header reader."""
    try:
        header, refs = read_tensor_refs(mf.span)
    except ParseError as exc:
        raise ParseError(f"not a valid safetensors file: {exc.message}", path=path) from None
    extras: dict[str, object] = {"__metadata__": header.metadata} if header.metadata else {}
    extras.update(_counters(header.metadata or {}))
    return refs, extras


COUNTERS = ("global_step", "epoch")


def _counters(metadata: dict) -> dict[str, int]:
    """``global_step`` and ``epoch`` kept in ``__metadata__`` as JSON integers (a pickle checkpoint converted to
    safetensors carries them so), read back like the pickle's own top-level values: family detection (SD2's
    prediction type) then sees the same file."""
    out = {}
    for name in COUNTERS:
        text = metadata.get(name)
        if isinstance(text, str) and text.isascii() and text.isdigit():
            out[name] = int(text)
    return out


WEIGHT_NAMES = ("diffusion_pytorch_model", "model")


def open_folder_component(folder: str | os.PathLike, policy: Policy | None = None, *,
                          root: str | os.PathLike | Contained | None = None) -> Source | None:
    """The weights of one diffusers component folder (single or sharded, safetensors or .bin).

    Every file, and every name a shard index gives, must resolve inside ``root`` (the model
    folder; default ``folder`` itself): see :mod:`tensorsafe.paths`."""
    folder = Path(folder)
    box = contained(root if root is not None else folder)
    under = os.path.relpath(folder, box.given) if root is not None else ""
    files = component_weight_files(box, under)
    if files is None:
        return None
    parts: list[Source] = []
    try:
        for f in files:
            parts.append(open_file(f, policy, folder=box))
    except BaseException:
        for p in parts:
            p.close()
        raise
    return _merge(parts, str(folder))


def component_weight_files(box: Contained, under: str = "") -> list[Path] | None:
    """The files a component's weights are read from, in order of preference: a safetensors shard
    index, one ``.safetensors`` file, one ``.bin`` (for each stem of :data:`WEIGHT_NAMES`); ``None``
    when none is complete. The converter and the render's memory estimate both ask here."""
    for stem in WEIGHT_NAMES:
        index = box.resolve(f"{stem}.safetensors.index.json", under=under)
        if index.is_file():
            files = [box.resolve(name, under=under) for name in _index_names(index)]
        else:
            files = [box.resolve(f"{stem}.safetensors", under=under)]
        if not all(f.is_file() for f in files):
            files = [box.resolve(f"{stem}.bin", under=under)]
        if all(f.is_file() for f in files):
            return files
    return None


def check_folder(root: str | os.PathLike, *, allow_symlinks: bool = False) -> Contained:
    """Check a whole diffusers folder before any reader that knows only fixed names touches it (the
    render's preflight and pipeline): every symlink in it, every name a shard index or
    ``model_index.json`` gives, must stay inside. Hidden entries (``.git``, ``.cache``) are skipped."""
    box = contained(root, allow_symlinks=allow_symlinks)
    for here, dirs, files in os.walk(box.given):
        rel = os.path.relpath(here, box.given)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in [*dirs, *sorted(files)]:
            if not name.startswith(".") and os.path.islink(os.path.join(here, name)):
                box.resolve(name, under="" if rel == "." else rel)
        for name in sorted(files):
            if name.endswith(".index.json") and not name.startswith("."):
                index = box.resolve(name, under="" if rel == "." else rel)
                for entry in _index_names(index):
                    box.resolve(entry, under="" if rel == "." else rel)
    index = box.resolve("model_index.json")
    if index.is_file():
        check_component_names(box, read_json_object(index))
    return box


def _index_names(index: Path) -> list[str]:
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ParseError("bad shard index: no weight_map object", path=index)
    names = sorted(set(weight_map.values()), key=str)
    if not all(isinstance(n, str) for n in names):
        raise ParseError("bad shard index: weight_map must map tensor names to file names", path=index)
    return names


def _merge(parts: list[Source], path: str) -> Source:
    merged = Source(path, parts[0].format)
    for p in parts:
        dup = set(merged.tensors) & set(p.tensors)
        if dup:
            raise ParseError(f"tensor {sorted(dup)[0]!r} appears in two shards", path=p.path)
        merged.tensors.update(p.tensors)
        merged._files.extend(p._files)
        merged._watches.extend(p._watches)
    return merged
