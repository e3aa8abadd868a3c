"""What a model file is: a checkpoint (and of which family), an adapter, an embedding, a component.

Two entry points::

    identify(path) -> Identification
    identify_tensors(tensors: Mapping[str, tuple[str, Sequence[int]]],   # name -> (dtype, shape)
                     metadata: Mapping[str, str] | None = None,          # safetensors __metadata__
                     *, scalars: Mapping[str, float] | None = None,      # values of one-element "*.alpha" tensors
                     extras: Mapping[str, object] | None = None,         # plain values beside a checkpoint's tensors
                     ) -> Identification

``identify_tensors`` is pure (no I/O): the converter and the render pipeline call it on tensors they
already hold. ``identify`` reads a ``.safetensors`` header or a torch checkpoint through the
restricted reader (scanned first), lists every tensor wherever it sits, reads the kohya alphas and
calls ``identify_tensors``.

The checks run from the most specific shape of file to the least: a textual inversion (a handful of
vectors), an adapter (every key ends in an adapter suffix), a ControlNet, a family the converter does
not cover (:mod:`tensorsafe.converter.model_signatures`), a Stable Diffusion single file
(:func:`tensorsafe.converter.families.detect`), then single components. Every answer carries one
evidence line per signal: the key (and shape) that showed it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from tensorsafe.converter import component_facts
from tensorsafe.converter.adapter_facts import AdapterFacts, adapter_facts, base_family, with_denoiser_named
from tensorsafe.converter.embedding_facts import EmbeddingFacts, embedding_facts
from tensorsafe.converter.families import FAMILIES, detect
from tensorsafe.converter.model_signatures import other_family
from tensorsafe.converter.tensor_listing import list_tensors
from tensorsafe.converter.training_facts import TrainingFacts, training_facts
from tensorsafe.errors import TensorsafeError, UnsupportedModelError
from tensorsafe.report import printable
from tensorsafe.tensors import DTYPES

CHECKPOINT, TEXTUAL_INVERSION, UNKNOWN = "checkpoint", "textual-inversion", "unknown"
# adapter algorithm -> (kind, what it is called)
ADAPTER_KINDS = {
    "lora": ("lora", "LoRA"), "locon": ("lycoris-locon", "LyCORIS LoCon (LoRA on convolution layers too)"),
    "loha": ("lycoris-loha", "LyCORIS LoHa"), "lokr": ("lycoris-lokr", "LyCORIS LoKr"),
    "full": ("lycoris-full", "LyCORIS full-rank difference"), "oft": ("lycoris-oft", "LyCORIS OFT / BOFT"),
    "norm": ("lycoris-norm", "LyCORIS norm-layer fine-tune"),
}
SPELLINGS = {
    "kohya": "kohya sd-scripts / A1111 spelling: lora_unet_* / lora_te*_* with .lora_down / .lora_up / .alpha",
    "peft": "PEFT spelling: .lora_A / .lora_B", "diffusers": "diffusers spelling: .lora.down / .lora.up",
    "diffusers-attn-procs": "old diffusers attention-processor spelling: *_lora.down / *_lora.up",
    "xlabs": "XLabs spelling: *_lora1.down / *_lora1.up", "lycoris": "LyCORIS spelling",
    "unknown": "unknown spelling",
}
FAMILY_TITLES = {
    "sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "Stable Diffusion XL",
    "sdxl-refiner": "Stable Diffusion XL refiner", "sd3": "Stable Diffusion 3 / 3.5", "flux1": "Flux.1",
    "flux1-dev": "Flux.1 dev", "flux1-schnell": "Flux.1 schnell", "flux2": "Flux.2",
}


@dataclass(frozen=True)
class Identification:
    kind: str                       # checkpoint, lora, lycoris-locon/-loha/-lokr, dora, textual-inversion, vae, ...
    title: str                      # one line for people
    family: str | None              # base model family id (sd1, sdxl, flux1-dev, svd, ...) or None
    family_title: str | None
    evidence: tuple[str, ...]       # "key K has shape S -> ..." per signal
    tensors: int
    parameters: int                 # elements over all tensors
    data_bytes: int
    adapter: AdapterFacts | None = None
    embedding: EmbeddingFacts | None = None
    training: TrainingFacts | None = None
    details: dict = field(default_factory=dict)   # kind-specific facts (VAE latent channels, SD detection, ...)
    notes: tuple[str, ...] = ()                   # what could not be told, disagreements with the metadata

    def to_dict(self) -> dict:
        return {"kind": self.kind, "title": self.title, "family": self.family, "family_title": self.family_title,
                "evidence": list(self.evidence), "notes": list(self.notes),
                "totals": {"tensors": self.tensors, "parameters": self.parameters, "data_bytes": self.data_bytes},
                "adapter": self.adapter.to_dict() if self.adapter else None,
                "embedding": self.embedding.to_dict() if self.embedding else None,
                "training": self.training.to_dict() if self.training and not self.training.empty else None,
                "details": self.details}


def identify(path: str | os.PathLike) -> Identification:
    """What the model file at ``path`` is (``.safetensors`` or a torch checkpoint, scanned first)."""
    listing = list_tensors(path)
    return identify_tensors(listing.dtypes(), listing.metadata, scalars=listing.scalars, extras=listing.extras)


def identify_tensors(tensors: Mapping[str, tuple[str, Sequence[int]]], metadata: Mapping[str, str] | None = None,
                     *, scalars: Mapping[str, float] | None = None,
                     extras: Mapping[str, object] | None = None) -> Identification:
    """What a file holding ``tensors`` (name -> (dtype, shape)) is; see the module docstring."""
    shapes = {name: tuple(int(d) for d in shape) for name, (_, shape) in tensors.items()}
    given = _Given(shapes, dict(metadata or {}), dict(scalars or {}), dict(extras or {}), training_facts(metadata),
                   _totals(tensors))
    if not shapes:
        return given.answer(UNKNOWN, "no tensors", None, None, ("the file holds no tensors",))
    for step in (_embedding, _adapter, _controlnet, _other_family, _sd_checkpoint, _component):
        found = step(given)
        if found is not None:
            return found
    return given.answer(UNKNOWN, "not a model file tensorsafe can name", None, None,
                        (f"no known marker key (first key: {sorted(shapes)[0]!r})",))


@dataclass(frozen=True)
class _Given:
    """What every identification step reads."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    scalars: dict[str, float]
    extras: dict[str, object]
    training: TrainingFacts
    totals: tuple[int, int, int]

    def answer(self, kind: str, title: str, family: str | None, family_title: str | None,
               evidence: Sequence[str], **facts: Any) -> Identification:
        tensors, parameters, data = self.totals
        return Identification(kind, title, family, family_title, tuple(evidence), tensors, parameters, data,
                               training=self.training, **facts)


def _totals(tensors: Mapping[str, tuple[str, Sequence[int]]]) -> tuple[int, int, int]:
    elements = data = 0
    for dtype, shape in tensors.values():
        n = math.prod(int(d) for d in shape)
        elements += n
        data += n * (DTYPES[dtype].itemsize if dtype in DTYPES else 0)
    return len(tensors), elements, data


def _title(family: str | None) -> str | None:
    if family is None:
        return None
    return FAMILY_TITLES.get(family) or (FAMILIES[family].title if family in FAMILIES else family)


def _embedding(g: _Given) -> Identification | None:
    emb = embedding_facts(g.shapes, g.extras, g.metadata)
    if emb is None:
        return None
    name = f" {emb.token!r}" if emb.token else ""
    title = f"textual inversion{name}: {emb.vectors} vector{'s' if emb.vectors != 1 else ''} " \
            f"({emb.spelling} layout)"
    return g.answer(TEXTUAL_INVERSION, title, emb.family, _title(emb.family), emb.evidence, embedding=emb)


def _adapter(g: _Given) -> Identification | None:
    facts = adapter_facts(g.shapes, g.scalars)
    if facts is None:
        return None
    facts = _with_peft_alphas(facts, g.metadata)
    family, evidence = base_family(g.shapes, g.scalars)
    notes: list[str] = []
    family = _reconcile(family, g.training, evidence, notes)
    facts = with_denoiser_named(facts, family)
    kind, name = ADAPTER_KINDS.get(facts.algorithm.split("+")[0], ("lora", "LoRA"))
    if facts.dora:
        kind, name = "dora", f"DoRA (weight-decomposed {name})"
    if "+" in facts.algorithm:
        name += f" (mixed: {facts.algorithm.replace('+', ', ')})"
    if not facts.alphas:
        notes.append("no alpha stored (or not read): the trainer's default applies (kohya: alpha = rank)")
    title = f"{name} for {_title(family) or 'an unknown base model'} ({SPELLINGS.get(facts.spelling, facts.spelling)})"
    return g.answer(kind, title, family, _title(family), (*facts.evidence, *evidence), adapter=facts,
                    notes=tuple(notes))


def _with_peft_alphas(facts: AdapterFacts, metadata: Mapping[str, str]) -> AdapterFacts:
    """Alphas from diffusers' ``lora_adapter_metadata`` (``{"unet.lora_alpha": 8, ...}``) when no tensor has one."""
    if facts.alphas or "lora_adapter_metadata" not in metadata:
        return facts
    try:
        doc = json.loads(metadata["lora_adapter_metadata"])
    except ValueError:
        return facts
    if not isinstance(doc, dict):
        return facts
    by_part = {"unet": "denoiser", "transformer": "denoiser", "text_encoder": "text_encoder",
               "text_encoder_2": "text_encoder_2"}
    alphas = {by_part[k.split(".")[0]]: float(v) for k, v in doc.items()
              if k.endswith(".lora_alpha") and k.split(".")[0] in by_part and isinstance(v, (int, float))}
    if not alphas:
        return facts
    blocks = tuple(replace(b, alphas=(alphas[b.part],)) if b.part in alphas else b for b in facts.blocks)
    return replace(facts, alphas=tuple(sorted(set(alphas.values()))), blocks=blocks,
                   evidence=(*facts.evidence, "metadata lora_adapter_metadata -> lora_alpha per part (PEFT config)"))


def _reconcile(family: str | None, training: TrainingFacts, evidence: list[str], notes: list[str]) -> str | None:
    """The weights' family, refined or filled in by what the metadata names."""
    hint, key = training.base_model, training.base_model_key
    if hint is None:
        return family
    if family is None:
        evidence.append(f"metadata {key} names {_title(hint)} (the weights cannot tell)")
        return hint
    if hint.startswith(family) or family.startswith(hint):
        longer = hint if len(hint) > len(family) else family
        if longer != family:
            evidence.append(f"metadata {key} -> {_title(longer)}")
        return longer
    notes.append(f"metadata {key} says {_title(hint)}, but the weights look like {_title(family)}")
    return family


def _controlnet(g: _Given) -> Identification | None:
    found = component_facts.controlnet(g.shapes)
    return _from_component(g, found) if found else None


def _other_family(g: _Given) -> Identification | None:
    match = other_family(g.shapes)
    if match is None:
        return None
    return g.answer(CHECKPOINT, f"{match.title} model (tensorsafe convert does not cover it yet)", match.family,
                    match.title, match.evidence, details={"marker_key": match.key, "convertible": False})


def _sd_checkpoint(g: _Given) -> Identification | None:
    shapes = g.shapes
    vae = component_facts.vae(shapes)
    if vae is not None:
        return _from_component(g, vae)
    known = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.",
             "input_blocks.0.0.weight", "control_model.", "text_encoders.", "edm_mean")
    if not any(k.startswith(known) for k in shapes):
        return None
    try:
        d = detect(shapes, dict(g.extras))
    except UnsupportedModelError as exc:
        if "diffusers layout" in exc.message:
            return None
        return g.answer(CHECKPOINT, f"model not covered by the converter: {exc.message}", None, None,
                        (exc.message,), details={"convertible": False})
    except TensorsafeError as exc:
        return g.answer(CHECKPOINT, "Stable Diffusion checkpoint of an undetermined family", None, None,
                        (exc.message,), details={"convertible": False})
    kind = CHECKPOINT if "unet" in d.components or len(d.components) > 1 else \
        ("vae" if d.components == ("vae",) else "text-encoder")
    what = "checkpoint" if "unet" in d.components else f"checkpoint without a UNet ({', '.join(d.components)})"
    return g.answer(kind, f"{FAMILIES[d.family].title} {what}", d.family, FAMILIES[d.family].title, d.evidence,
                    notes=tuple(d.assumptions),
                    details={"convertible": True, "description": d.describe(), "components": list(d.components)})


def _component(g: _Given) -> Identification | None:
    for finder in component_facts.FINDERS:
        found = finder(g.shapes)
        if found is not None:
            return _from_component(g, found)
    return None


def _from_component(g: _Given, c: component_facts.Component) -> Identification:
    return g.answer(c.kind, c.title, c.family, _title(c.family), c.evidence, details=dict(c.details))


def identification_lines(ident: Identification, *, evidence: bool = True) -> list[str]:
    """Readable lines for ``tensorsafe inspect`` (``evidence=False``: where the family report shows it)."""
    lines = ["", f"identified: {printable(ident.title)}", f"  kind: {ident.kind}"]
    if ident.family:
        lines.append(f"  base family: {ident.family} ({ident.family_title})")
    if evidence:
        lines += [f"  evidence: {printable(e)}" for e in ident.evidence]
        lines += [f"  note: {printable(n)}" for n in ident.notes]
    if ident.adapter:
        lines += _adapter_lines(ident.adapter)
    if ident.embedding:
        e = ident.embedding
        lines.append(f"  vectors: {e.vectors} ({', '.join(f'{k}: width {w}' for k, w in e.widths.items())})")
        if e.step is not None or e.trained_on:
            lines.append(f"  trained: step {e.step}, on {printable(str(e.trained_on))}")
    if ident.training and not ident.training.empty:
        lines += _training_lines(ident.training)
    return lines


def _number(x: float) -> str:
    return f"{x:g}"


def _adapter_lines(a: AdapterFacts) -> list[str]:
    alphas = ", ".join(map(_number, a.alphas)) or "none stored"
    lines = [f"  modules: {a.modules} ({', '.join(f'{p}: {n}' for p, n in a.parts.items())})",
             f"  rank: {', '.join(map(str, a.ranks)) or 'n/a'}; alpha: {alphas}"
             + (f"; {a.conv_modules} convolution modules" if a.conv_modules else ""),
             "  blocks:"]
    for b in a.blocks:
        lines.append(f"    {b.part} {b.block}: {b.modules} module{'s' if b.modules != 1 else ''}, "
                     f"rank {'/'.join(map(str, b.ranks)) or 'n/a'}"
                     + (f", alpha {'/'.join(map(_number, b.alphas))}" if b.alphas else ""))
    return lines


def _training_lines(t: TrainingFacts) -> list[str]:
    lines = []
    if t.trigger_words:
        lines.append(f"  trigger words: {printable(', '.join(t.trigger_words))} (from {t.trigger_source})")
    if t.top_tags:
        lines.append("  top tags: " + printable(", ".join(f"{tag} ({n})" for tag, n in t.top_tags[:10])))
    lines += [f"  {label}: {printable(value)}" for label, value in t.facts.items()]
    return lines
