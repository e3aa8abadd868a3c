"""Textual-inversion embeddings: the forms tools save, read as (token, vectors per text encoder).

- A1111 ``.pt``: ``{"string_to_param": {"*": [n, d]}, "name": token, ...}`` (read through the
  restricted reader: no pickle code runs);
- A1111 ``.safetensors``: ``{"emb_params": [n, d]}``;
- diffusers ``learned_embeds.bin`` / ``.safetensors``: ``{token: [d] or [n, d]}``;
- SDXL: ``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` (one set of vectors per text encoder).

``convert`` writes the safetensors forms loaders read: ``emb_params`` (SD1.x/SD2.x) or ``clip_l`` and
``clip_g`` (SDXL), with the token in the ``__metadata__`` (``token``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from tensorsafe.converter.options import ConversionResult, ConvertOptions

from tensorsafe.converter.adapters.write import ProgressFactory, write_file
from tensorsafe.converter.embedding_facts import embedding_facts
from tensorsafe.converter.execute import out_tensor
from tensorsafe.converter.options import ConversionResult, ConvertOptions
from tensorsafe.converter.plan import Op, Target
from tensorsafe.converter.source_io import leases_held
from tensorsafe.converter.sources import Located, Source, open_file
from tensorsafe.errors import ParseError
from tensorsafe.paths import require_separate
from tensorsafe.tensors import DType, TensorRef

A1111_PT, A1111_ST, DIFFUSERS_TI, SDXL_TI = "a1111-pt", "a1111-safetensors", "diffusers", "sdxl"
TITLES = {A1111_PT: "A1111 .pt embedding", A1111_ST: "A1111 safetensors embedding (emb_params)",
          DIFFUSERS_TI: "diffusers learned_embeds ({token: vectors})", SDXL_TI: "SDXL embedding (clip_l, clip_g)"}
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
MAX_VECTORS = 75       # a prompt holds 75 tokens between its start and end tokens
MAX_WIDTH = 8192


@dataclass
class Embedding:
    """A textual-inversion embedding: its token and, per text encoder, where its ``[n, d]`` vectors are."""

    token: str
    kind: str
    vectors: dict[str, tuple[str, Located]]   # text encoder -> (source name, tensor)

    def shape(self, encoder: str) -> tuple[int, int]:
        ref = self.vectors[encoder][1].ref
        return (1, ref.shape[0]) if len(ref.shape) == 1 else (ref.shape[0], ref.shape[1])


def embedding_kind(tensors: Iterable[str], root: object = None) -> str | None:
    """The embedding layout of a file's tensors (names, or a mapping of names to tensor references), else None.

    A lone tensor is an embedding only as :func:`~tensorsafe.converter.embedding_facts.embedding_facts`
    tells one: a token-like name or a text encoder's width (``{"w": tensor}`` is not one)."""
    keys = list(tensors)
    if isinstance(root, dict) and isinstance(root.get("string_to_param"), dict):
        return A1111_PT
    if keys == ["emb_params"]:
        return A1111_ST
    if set(keys) == set(SDXL_KEYS):
        return SDXL_TI
    if len(keys) == 1 and "." not in keys[0] and _token_like(keys[0], tensors):
        return DIFFUSERS_TI
    return None


def read_embedding(source: Source, root: Any = None) -> Embedding:
    """The token and vectors of an opened embedding file (``root``: a pickle's root object)."""
    root = source.root if root is None else root
    kind = embedding_kind(source.tensors, root)
    stem = Path(source.path).name.split(".")[0]
    metadata = source.extras.get("__metadata__") or {}
    token = metadata.get("token") if isinstance(metadata, dict) else None
    if kind == A1111_PT:
        param = root["string_to_param"].get("*")
        if not isinstance(param, TensorRef) or len(root["string_to_param"]) != 1:
            raise ParseError("string_to_param must hold one tensor, under '*'", path=source.path)
        name = root.get("name")
        located = source.locate(param)
        emb = Embedding(name if isinstance(name, str) and name else stem, kind, {"text_encoder": ("*", located)})
    elif kind == A1111_ST:
        emb = Embedding(token or stem, kind, {"text_encoder": ("emb_params", source.tensors["emb_params"])})
    elif kind == SDXL_TI:
        emb = Embedding(token or stem, kind, {enc: (k, source.tensors[k]) for k, enc in SDXL_KEYS.items()})
    elif kind == DIFFUSERS_TI:
        key = next(iter(source.tensors))
        emb = Embedding(key, kind, {"text_encoder": (key, source.tensors[key])})
    else:
        raise ParseError("not a textual-inversion embedding: expected string_to_param (A1111 .pt), emb_params, "
                         "clip_l + clip_g (SDXL) or one {token: vectors} tensor (diffusers)", path=source.path)
    _check(emb, source.path)
    return emb


def _check(emb: Embedding, path: str) -> None:
    for encoder, (name, located) in emb.vectors.items():
        shape = located.ref.shape
        if len(shape) not in (1, 2) or not 1 <= emb.shape(encoder)[0] <= MAX_VECTORS \
                or not 1 <= shape[-1] <= MAX_WIDTH or not located.ref.dtype.name.startswith(("F", "BF")):
            raise ParseError(f"{name} has shape {list(shape)} and dtype {located.ref.dtype.name}: an embedding is "
                             f"[vectors <= {MAX_VECTORS}, width] floats", path=path)
    if not emb.token or any(c.isspace() for c in emb.token):
        raise ParseError(f"the token {emb.token!r} is empty or holds white space", path=path)


def convert_embedding(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str | None = None,
                      overwrite: bool = False, progress_factory: ProgressFactory = None) -> ConversionResult:
    """Write the embedding at ``src`` as the safetensors form loaders read (``emb_params``, or SDXL's
    ``clip_l``/``clip_g``), the token in the metadata. Returns a ``ConversionResult``."""
    options = ConvertOptions(dtype=dtype, overwrite=overwrite)
    require_separate(Path(src), dst)
    with leases_held(), open_file(src) as source:
        return convert_embedding_source(source, Path(dst), cast=options.cast(), options=options,
                                        progress_factory=progress_factory)


def convert_embedding_source(source: Source, dst: Path, *, cast: DType | None, options: ConvertOptions,
                             progress_factory: ProgressFactory = None, root: object = None) -> ConversionResult:

    started = time.perf_counter()
    emb = read_embedding(source, root)
    sdxl = emb.kind == SDXL_TI
    out_names = {v: k for k, v in SDXL_KEYS.items()} if sdxl else {"text_encoder": "emb_params"}
    sources = {name: located for name, located in emb.vectors.values()}
    tensors = []
    for encoder, (name, located) in emb.vectors.items():
        shape = emb.shape(encoder)
        op = Op.COPY if located.ref.shape == shape else Op.RESHAPE
        tensors.append(out_tensor(Target("", out_names[encoder], (name,), op, shape), sources, cast))
    if dst.is_dir():
        dst = dst / f"{emb.token}.safetensors"
    written = write_file(dst, tensors, {"token": emb.token, "format": "pt"}, sources, overwrite=options.overwrite,
                         progress_factory=progress_factory)
    widths = ", ".join(f"{enc} {emb.shape(enc)[0]} x {emb.shape(enc)[1]}" for enc in emb.vectors)
    return ConversionResult(source.path, str(dst), f"{TITLES[emb.kind]} -> {TITLES[SDXL_TI if sdxl else A1111_ST]}",
                            f"textual-inversion embedding {emb.token!r}: {widths}", sorted(emb.vectors), len(tensors),
                            written, time.perf_counter() - started, [f"{TITLES[emb.kind]}: keys {', '.join(sources)}"],
                            [f"token {emb.token!r} kept in the metadata (token)"])


def _token_like(name: str, tensors: Iterable[str]) -> bool:
    """The one rule of identification (:func:`~tensorsafe.converter.embedding_facts.embedding_facts`) for a
    lone tensor: a ``<token>`` name, or one or more vectors as wide as a text encoder's."""
    value = tensors.get(name) if isinstance(tensors, Mapping) else None
    ref = getattr(value, "ref", value)
    shape = getattr(ref, "shape", None)
    if shape is None:
        return name.startswith("<")
    return embedding_facts({name: tuple(shape)}) is not None
