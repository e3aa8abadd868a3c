"""A LoRA file read as plain data: which module of which component each down/up pair adapts, and its alpha.

Two formats (docs/conversion.md, "Adapters"):

- kohya / A1111 / ComfyUI: ``lora_unet_<path>.lora_down.weight``, ``.lora_up.weight`` and a scalar
  ``.alpha``; the update is ``multiplier * alpha / rank * up @ down`` (alpha missing: alpha = rank).
- diffusers / PEFT (``pytorch_lora_weights.safetensors``): ``unet.<path>.lora_A.weight`` and
  ``.lora_B.weight`` (also ``text_encoder.`` and ``text_encoder_2.``); alpha comes from the
  ``lora_adapter_metadata`` JSON that ``save_lora_weights`` writes (``lora_alpha``, ``alpha_pattern``,
  ``use_rslora``), and is the rank when there is none (scale 1, as ``load_lora_weights`` reads it).

Down and up have the same shapes in both (``[r, in]``/``[out, r]``, or ``[r, in, kh, kw]``/
``[out, r, 1, 1]`` for convolutions), so converting renames and never changes a weight's bytes.
LyCORIS variants (LoHa ``hada_*``, LoKr ``lokr_*``, ...) are refused by name.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tensorsafe.converter.adapters.lora_family import TITLES, lora_family
from tensorsafe.converter.adapters.lora_names import (KOHYA_PREFIXES, TE, TE2, UNET, is_ldm, is_module,
                                                      kohya_to_module, rebuild_path)
from tensorsafe.converter.keymaps.clip import with_text_model_prefix
from tensorsafe.errors import ParseError, UnsupportedModelError

KOHYA, DIFFUSERS = "kohya", "diffusers"
FORMAT_TITLES = {KOHYA: "kohya/A1111/ComfyUI", DIFFUSERS: "diffusers/PEFT"}
METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = (UNET, TE, TE2)
Shapes = dict[str, tuple[int, ...]]
PathLike = str | Path | None
KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
# legacy diffusers spellings of down/up, before PEFT: (suffix, role)
DIFFUSERS_PARTS = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
                   (".lora.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
                   (".lora_linear_layer.up.weight", "up"))
PROCESSOR = re.compile(r"(.*?)\.(?:processor\.)?(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight")
PROCESSOR_TARGETS = {UNET: {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
                     TE: {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}
# Adapter kinds a plain LoRA file cannot hold: a piece of the key -> what it is
OTHER_KINDS = (("hada_", "LoHa (LyCORIS hada_* weights)"), ("lokr_", "LoKr (LyCORIS lokr_* weights)"),
               ("lora_mid", "LoCon with CP decomposition (LyCORIS lora_mid weights)"),
               ("dora_scale", "DoRA (dora_scale weights)"), ("lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
               ("oft_", "OFT (LyCORIS oft_* weights)"), (".a1.weight", "GLoRA (LyCORIS a1/a2/b1/b2 weights)"),
               (".diff", "a full weight difference (LyCORIS diff weights)"), ("w_norm", "a norm-layer adapter (w_norm)"))


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its down/up source keys and where its alpha comes from."""

    component: str
    path: str            # diffusers module path (text encoders with ``text_model.``)
    down: str
    up: str
    rank: int
    alpha_key: str | None = None   # kohya: the scalar tensor to read
    alpha: float | None = None     # known without reading (diffusers metadata or the rank)


@dataclass
class LoraFile:
    format: str
    family: str
    modules: list[LoraModule]
    evidence: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        counts = Counter(m.component for m in self.modules)
        ranks = sorted({m.rank for m in self.modules})
        rank = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
        parts = ", ".join(f"{c} {counts[c]}" for c in COMPONENTS if counts[c])
        return f"{TITLES[self.family]} LoRA ({FORMAT_TITLES[self.format]}), {rank}, {len(self.modules)} modules: {parts}"


def is_kohya(keys: Iterable[str]) -> bool:
    """Most keys are kohya LoRA keys (a checkpoint with a stray ``lora_*`` key is still a checkpoint)."""
    keys = list(keys)
    return 2 * sum(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys) > len(keys)


def is_diffusers(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return 2 * sum(k.split(".", 1)[0] in COMPONENTS and _diffusers_part(k) is not None for k in keys) > len(keys)


def refuse_other_kinds(keys: Iterable[str], path: PathLike) -> None:
    for key in keys:
        for piece, kind in OTHER_KINDS:
            if piece in key:
                raise UnsupportedModelError(f"this adapter is {kind}, which a LoRA file (kohya or diffusers) cannot "
                                            f"hold; it is not converted", evidence=key, path=path)


def read_lora(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], *, model_type: str | None = None,
              path: PathLike = None) -> LoraFile:
    """The modules of a LoRA file (either format), its family and the evidence for both."""
    keys = list(shapes)
    refuse_other_kinds(keys, path)
    if is_kohya(keys):
        return _read_kohya(shapes, model_type, path)
    if is_diffusers(keys):
        return _read_diffusers(shapes, metadata, model_type, path)
    raise ParseError("not a LoRA file: no lora_unet_*/lora_te*_* (kohya) or unet./text_encoder.*.lora_A "
                     "(diffusers) keys", path=path)


# ---- kohya -----------------------------------------------------------------------------------------------

def _read_kohya(shapes: Shapes, model_type: str | None, path: PathLike) -> LoraFile:
    groups: dict[str, dict[str, str]] = {}
    unmapped = []
    for key in shapes:
        name, _, part = key.partition(".")
        role = KOHYA_PARTS.get(part)
        if role is None or not name.startswith(tuple(KOHYA_PREFIXES)):
            unmapped.append(key)
            continue
        groups.setdefault(name, {})[role] = key
    unet_flat = [rebuild_path(n[len("lora_unet_"):]) for n in groups if n.startswith("lora_unet_")]
    components = {KOHYA_PREFIXES[p] for n in groups for p in KOHYA_PREFIXES if n.startswith(p)}
    ldm = any(is_ldm(n) for n in unet_flat)
    family, why = lora_family(unet_flat, components, ldm=ldm, model_type=model_type)
    modules = []
    for name, parts in sorted(groups.items()):
        target = kohya_to_module(name, family)
        if target is None or "down" not in parts or "up" not in parts:
            unmapped += sorted(parts.values())
            continue
        rank = _rank(shapes, parts["down"], parts["up"], path)
        modules.append(LoraModule(target[0], target[1], parts["down"], parts["up"], rank, parts.get("alpha"),
                                  None if "alpha" in parts else float(rank)))
    evidence = [f"kohya keys, e.g. {next(iter(shapes))}", f"family {TITLES[family]}: {why}"]
    notes = ["UNet in original (LDM) names, read with the SDXL block layout"] if ldm else []
    missing_alpha = sum(m.alpha_key is None for m in modules)
    if missing_alpha:
        notes.append(f"{missing_alpha} modules have no alpha: alpha = rank (scale 1), as kohya reads them")
    return _checked(LoraFile(KOHYA, family, modules, evidence, notes, sorted(unmapped)), path)


# ---- diffusers -------------------------------------------------------------------------------------------

def _diffusers_part(key: str) -> tuple[str, str] | None:
    """``unet.<path>.lora_A.weight`` -> (``unet.<path>``, ``down``), legacy spellings included."""
    for suffix, role in DIFFUSERS_PARTS:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    m = PROCESSOR.fullmatch(key)
    if m:
        component = m.group(1).split(".", 1)[0]
        table = PROCESSOR_TARGETS[UNET if component == UNET else TE]
        return f"{m.group(1)}.{table[m.group(2)]}", m.group(3)
    return None


def _read_diffusers(shapes: Shapes, metadata: dict[str, str], model_type: str | None, path: PathLike) -> LoraFile:
    groups: dict[tuple[str, str], dict[str, str]] = {}
    unmapped = []
    for key in shapes:
        found = _diffusers_part(key)
        component, _, rest = (found[0] if found else key).partition(".")
        if found is None or component not in COMPONENTS:
            unmapped.append(key)
            continue
        module = with_text_model_prefix(rest) if component != UNET else rest
        groups.setdefault((component, module), {})[found[1]] = key
    components = {c for c, _ in groups}
    family, why = lora_family([m for c, m in groups if c == UNET], components, ldm=False, model_type=model_type)
    configs = _adapter_configs(metadata, path)
    notes = []
    modules = []
    for (component, module), parts in sorted(groups.items()):
        if not is_module(component, module) or set(parts) != {"down", "up"}:
            unmapped += sorted(parts.values())
            continue
        rank = _rank(shapes, parts["down"], parts["up"], path)
        modules.append(LoraModule(component, module, parts["down"], parts["up"], rank, None,
                                  peft_alpha(configs.get(component), module, rank)))
    for component in sorted(components - set(configs)):
        if configs:
            notes.append(f"{component}: no {METADATA_KEY} entries, alpha = rank (scale 1)")
    if not configs:
        notes.append(f"no {METADATA_KEY}: alpha = rank (scale 1), as load_lora_weights reads it")
    evidence = [f"diffusers keys, e.g. {next(iter(shapes))}", f"family {TITLES[family]}: {why}"]
    return _checked(LoraFile(DIFFUSERS, family, modules, evidence, notes, sorted(unmapped)), path)


def _adapter_configs(metadata: dict[str, str], path: PathLike) -> dict[str, dict]:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ParseError(f"{METADATA_KEY} is not valid JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise ParseError(f"{METADATA_KEY} is not a JSON object", path=path)
    out: dict[str, dict] = {}
    for key, value in data.items():
        component, _, name = str(key).partition(".")
        if component in COMPONENTS and name:
            out.setdefault(component, {})[name] = value
    for component, cfg in out.items():
        if cfg.get("use_dora"):
            raise UnsupportedModelError("this adapter is DoRA (use_dora in its metadata), which kohya files cannot "
                                        "hold; it is not converted", evidence=f"{component}.use_dora", path=path)
    return out


def peft_alpha(config: dict | None, module: str, rank: int) -> float:
    """The alpha PEFT uses for ``module`` (its scale is alpha / rank), as an alpha over ``rank``:
    ``alpha_pattern`` (PEFT's regex match on the module path), else ``lora_alpha``; ``use_rslora``
    scales by alpha / sqrt(rank), given here as the equivalent alpha * sqrt(rank)."""
    if config is None:
        return float(rank)
    patterns = config.get("alpha_pattern") or {}
    bare = module.removeprefix("text_model.")
    hit = next((p for p in patterns if any(re.match(rf"(.*\.)?({p})$", m) for m in (module, bare))), None)
    alpha = float(patterns[hit] if hit is not None else config.get("lora_alpha", rank))
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


# ---- shared ----------------------------------------------------------------------------------------------

def _rank(shapes: Shapes, down: str, up: str, path: PathLike) -> int:
    d, u = shapes[down], shapes[up]
    if len(d) < 2 or len(u) < 2 or d[0] != u[1] or any(s != 1 for s in u[2:]):
        raise ParseError(f"{down} {list(d)} and {up} {list(u)} are not a LoRA pair (down [r, in, ...], "
                         "up [out, r, 1, 1])", path=path)
    return d[0]


def _checked(lora: LoraFile, path: PathLike) -> LoraFile:
    if not lora.modules:
        raise ParseError(f"no LoRA module could be read; unknown keys: {', '.join(lora.unmapped[:5])}", path=path)
    return lora
