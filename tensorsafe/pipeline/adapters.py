"""LoRAs, textual-inversion embeddings and a replacement VAE, applied to a loaded pipeline as diffusers does.

- LoRA (either format, read by :mod:`tensorsafe.converter.adapters.lora_file`): fused into the weights as
  ``load_lora_weights`` + ``set_adapters`` + ``fuse_lora`` do, ``W += scale * alpha / rank * up @ down``
  (a convolution's update is ``up`` applied after ``down``).
- Embedding: its token (``token_1``, ``token_2``... for more vectors) is added to each tokenizer and its
  vectors as new rows of the text encoder's token embedding, as ``load_textual_inversion`` does; a prompt
  naming the token of a multi-vector embedding gets the extra tokens after it.
- VAE: the weights of a VAE file (original or diffusers layout, :func:`tensorsafe.converter.keymaps.plan_vae`)
  replace the folder's, under the folder's VAE config.

Every file is read with the safe readers (scanned or validated first; no pickle code runs).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Union

import torch
from torch import nn

if TYPE_CHECKING:
    from tensorsafe.converter.adapters.lora_file import LoraModule
    from tensorsafe.pipeline.pipeline import Pipeline, TextEncoderSlot

from tensorsafe.errors import ParseError, UsageError

SPEC = re.compile(r"(?P<path>.+?)(?::(?P<scale>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?")
MAX_SCALE = 100.0


LoraItem = Union[str, os.PathLike, tuple, "LoraSpec"]


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0


def lora_spec(value: LoraItem) -> LoraSpec:
    """``FILE``, ``FILE:SCALE``, ``(FILE, SCALE)`` or a :class:`LoraSpec`; the scale defaults to 1."""
    if isinstance(value, LoraSpec):
        spec = value
    elif isinstance(value, tuple):
        spec = LoraSpec(Path(value[0]), float(value[1]))
    elif isinstance(value, os.PathLike) or Path(str(value)).exists():
        spec = LoraSpec(Path(value))
    else:
        m = SPEC.fullmatch(str(value))
        if m is None:
            raise UsageError(f"not FILE or FILE:SCALE: {value!r}")
        spec = LoraSpec(Path(m.group("path")), float(m.group("scale")) if m.group("scale") else 1.0)
    if not spec.path.is_file():
        raise UsageError(f"LoRA file {spec.path} does not exist", path=spec.path)
    if not abs(spec.scale) <= MAX_SCALE:
        raise UsageError(f"LoRA scale {spec.scale} is outside [-{MAX_SCALE:g}, {MAX_SCALE:g}]", path=spec.path)
    return spec


def apply_adapters(pipe: Pipeline, *, loras: Iterable[LoraItem] = (), embeddings: Iterable[str | os.PathLike] = (),
                   vae: str | os.PathLike | None = None) -> list[str]:
    """Apply each to ``pipe`` in place; returns one line per adapter for the summary and the PNG."""
    loras = [loras] if isinstance(loras, (str, os.PathLike, LoraSpec)) else loras  # one given alone
    embeddings = [embeddings] if isinstance(embeddings, (str, os.PathLike)) else embeddings
    lines = []
    if vae is not None:
        lines.append(apply_vae(pipe, Path(vae)))
    for item in loras:
        lines.append(apply_lora(pipe, lora_spec(item)))
    for path in embeddings:
        lines.append(apply_embedding(pipe, Path(path)))
    return lines


# ---- LoRA ------------------------------------------------------------------------------------------------

def _models(pipe: Pipeline) -> dict[str, nn.Module]:
    return {"unet": pipe.unet, **{slot.name: slot.model for slot in pipe.encoders}}


@torch.inference_mode()
def apply_lora(pipe: Pipeline, spec: LoraSpec) -> str:
    from tensorsafe.converter.adapters.lora_convert import module_alphas
    from tensorsafe.converter.adapters.lora_file import read_lora
    from tensorsafe.converter.sources import open_file

    models = _models(pipe)
    with open_file(spec.path) as source:
        metadata: Any = source.extras.get("__metadata__") or {}
        lora = read_lora(source.shapes(), metadata, path=source.path)
        if lora.unmapped:
            raise ParseError(f"{len(lora.unmapped)} keys are not LoRA modules: {', '.join(lora.unmapped[:4])}",
                             path=spec.path)
        alphas = module_alphas(lora, source.tensors)
        for m in lora.modules:
            model = models.get(m.component)
            if model is None:
                raise ParseError(f"this {lora.describe()} adapts {m.component}, which the model lacks",
                                 path=spec.path)
            weight = _weight(model, m, spec.path)
            down = _tensor(source.tensors[m.down]).float()
            up = _tensor(source.tensors[m.up]).float()
            delta = _update(down, up, weight.shape, m, spec.path) * (spec.scale * alphas[m] / m.rank)
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return f"LoRA {spec.path.name} x{spec.scale:g}: {lora.describe()}"


def _tensor(located: Any) -> torch.Tensor:
    from tensorsafe.load import to_torch

    return to_torch(located.ref, located.buf)


def _weight(model: nn.Module, m: LoraModule, path: Path) -> torch.Tensor:
    try:
        weight = model.get_submodule(m.path).weight
        assert isinstance(weight, torch.Tensor)
        return weight
    except AttributeError:
        raise ParseError(f"the LoRA adapts {m.component} module {m.path}, which this model does not have (a LoRA "
                         "for another family?)", path=path) from None


def _update(down: torch.Tensor, up: torch.Tensor, shape: torch.Size, m: LoraModule, path: Path) -> torch.Tensor:
    """``up @ down`` in the weight's shape (a linear's ``[out, in]``, a convolution's ``[out, in, kh, kw]``)."""
    if down.dim() == 2 and up.dim() == 2:
        delta = up @ down
    elif down.dim() == 4 and up.dim() == 4:
        delta = torch.einsum("or,rihw->oihw", up[:, :, 0, 0], down)
    else:
        delta = None
    if delta is None or delta.shape != shape:
        raise ParseError(f"the LoRA for {m.component} {m.path} (down {list(down.shape)}, up {list(up.shape)}) does "
                         f"not fit its weight {list(shape)} (a LoRA for another family?)", path=path)
    return delta


# ---- textual inversion -----------------------------------------------------------------------------------

@torch.inference_mode()
def apply_embedding(pipe: Pipeline, path: Path) -> str:
    from tensorsafe.converter.adapters.embedding import read_embedding
    from tensorsafe.converter.adapters.values import float_array
    from tensorsafe.converter.sources import open_file

    if not path.is_file():
        raise UsageError(f"embedding file {path} does not exist", path=path)
    slots = {slot.name: slot for slot in pipe.encoders}
    with open_file(path) as source:
        emb = read_embedding(source)
        if len(emb.vectors) == 1 and len(slots) == 2:
            raise ParseError(f"{emb.token!r} has vectors for one text encoder; an SDXL model needs clip_l and clip_g",
                             path=path)
        vectors = {}
        for encoder, (name, located) in emb.vectors.items():
            if encoder not in slots:
                raise ParseError(f"the embedding has vectors for {encoder}, which the model lacks", path=path)
            vectors[encoder] = torch.from_numpy(float_array(located, name)).reshape(emb.shape(encoder))
    for encoder, values in vectors.items():
        _add_token(slots[encoder], emb.token, values, path)
    shapes = ", ".join(f"{e} {tuple(v.shape)}" for e, v in vectors.items())
    return f"embedding {emb.token!r} ({shapes}) from {path.name}"


def _add_token(slot: TextEncoderSlot, token: str, values: torch.Tensor, path: Path) -> None:
    table = slot.model.text_model.embeddings.token_embedding
    if values.shape[1] != table.embedding_dim:
        raise ParseError(f"{token!r} has {values.shape[1]}-wide vectors; {slot.name} embeds tokens in "
                         f"{table.embedding_dim} (an embedding for another model?)", path=path)
    first = slot.tokenizer.add_embedding_tokens(token, values.shape[0], path)
    if first != table.num_embeddings:
        raise ParseError(f"{slot.name}: the tokenizer has {first} tokens but the text encoder {table.num_embeddings} "
                         "embeddings; a new token would not get its own row", path=path)
    grown = nn.Embedding(first + values.shape[0], table.embedding_dim, device=table.weight.device,
                         dtype=table.weight.dtype)
    grown.weight.copy_(torch.cat([table.weight, values.to(table.weight)]))
    slot.model.text_model.embeddings.token_embedding = grown.requires_grad_(False)


# ---- VAE -------------------------------------------------------------------------------------------------

def apply_vae(pipe: Pipeline, path: Path) -> str:
    from tensorsafe.converter import keymaps
    from tensorsafe.converter.sources import open_file
    from tensorsafe.pipeline.vae import AutoencoderKL, canonical_state
    from tensorsafe.pipeline.weights import load_module

    if not path.is_file():
        raise UsageError(f"VAE file {path} does not exist", path=path)
    with open_file(path) as source:
        plan = keymaps.plan_vae(source.shapes())
        if plan.unmapped:
            raise ParseError(f"{len(plan.unmapped)} keys are not VAE weights: {', '.join(plan.unmapped[:4])}", path=path)
        state = {}
        for t in plan.targets:
            located = source.tensors[t.sources[0]]
            state[t.key] = _tensor(located).reshape(t.shape)
    config = pipe.vae.config
    vae = load_module(lambda: AutoencoderKL(config), canonical_state(state), component="vae", source=str(path),
                      device=pipe.device, dtype=pipe.vae_dtype)
    assert isinstance(vae, AutoencoderKL)
    pipe.vae = vae
    return f"VAE {path.name} ({len(state)} tensors)"
