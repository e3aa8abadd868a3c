"""What an adapter file holds: its algorithm (LoRA, LyCORIS LoCon/LoHa/LoKr, DoRA), the spelling of
the trainer that wrote it, and per module and per block its rank, alpha and the part it targets.

An adapter is a set of *modules* (one per layer of the base model it changes); each module is a few
tensors whose names end in a suffix that says its role. The suffixes are data (:data:`SUFFIXES`),
taken from the files each ecosystem writes: kohya sd-scripts and A1111 (``lora_unet_*`` /
``lora_te{,1,2,3}_*`` with ``.lora_down`` / ``.lora_up`` / ``.alpha``), LyCORIS (``.hada_*``,
``.lokr_*``, ``.dora_scale``), PEFT and diffusers (``.lora_A`` / ``.lora_B``, ``.lora.down``,
``_lora.down``, ``.lora_linear_layer.down``, ``.lora_magnitude_vector``) and XLabs (``*_lora1.down``).
The base family is read from widths (a cross-attention ``to_k`` takes the text encoder's width:
768 SD1, 1024 SD2, 2048 SDXL; a Flux block is 3072 wide) and from block names (docs/identification.md).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

Shape = tuple[int, ...]
DENOISER, TE1, TE2, TE3 = "denoiser", "text_encoder", "text_encoder_2", "text_encoder_3"

LORA, LOCON, LOHA, LOKR, FULL, OFT, NORM = "lora", "locon", "loha", "lokr", "full", "oft", "norm"
DOWN, UP, MID, ALPHA, MAGNITUDE, PART = "down", "up", "mid", "alpha", "magnitude", "part"

# suffix -> (algorithm, role, spelling). The longest matching suffix wins.
SUFFIXES: dict[str, tuple[str, str, str]] = {
    ".lora_down.weight": (LORA, DOWN, "kohya"), ".lora_up.weight": (LORA, UP, "kohya"),
    ".lora_mid.weight": (LORA, MID, "kohya"),              # LoCon with Tucker decomposition
    ".alpha": (LORA, ALPHA, "kohya"),                      # scalar: the update is scaled by alpha / rank
    ".lora_A.weight": (LORA, DOWN, "peft"), ".lora_B.weight": (LORA, UP, "peft"),
    ".lora_A.default.weight": (LORA, DOWN, "peft"), ".lora_B.default.weight": (LORA, UP, "peft"),
    ".lora.down.weight": (LORA, DOWN, "diffusers"), ".lora.up.weight": (LORA, UP, "diffusers"),
    "_lora.down.weight": (LORA, DOWN, "diffusers-attn-procs"), "_lora.up.weight": (LORA, UP, "diffusers-attn-procs"),
    ".lora_linear_layer.down.weight": (LORA, DOWN, "diffusers"),
    ".lora_linear_layer.up.weight": (LORA, UP, "diffusers"),
    "_lora1.down.weight": (LORA, DOWN, "xlabs"), "_lora1.up.weight": (LORA, UP, "xlabs"),
    "_lora2.down.weight": (LORA, DOWN, "xlabs"), "_lora2.up.weight": (LORA, UP, "xlabs"),
    ".hada_w1_a": (LOHA, UP, "lycoris"), ".hada_w1_b": (LOHA, DOWN, "lycoris"),
    ".hada_w2_a": (LOHA, PART, "lycoris"), ".hada_w2_b": (LOHA, PART, "lycoris"),
    ".hada_t1": (LOHA, MID, "lycoris"), ".hada_t2": (LOHA, MID, "lycoris"),
    ".lokr_w1": (LOKR, PART, "lycoris"), ".lokr_w1_a": (LOKR, PART, "lycoris"), ".lokr_w1_b": (LOKR, PART, "lycoris"),
    ".lokr_w2": (LOKR, PART, "lycoris"), ".lokr_w2_a": (LOKR, UP, "lycoris"), ".lokr_w2_b": (LOKR, DOWN, "lycoris"),
    ".lokr_t2": (LOKR, MID, "lycoris"),
    ".dora_scale": (LORA, MAGNITUDE, "kohya"),            # DoRA magnitude, kohya / LyCORIS spelling
    ".lora_magnitude_vector": (LORA, MAGNITUDE, "peft"),   # DoRA magnitude, PEFT spelling
    ".lora_magnitude_vector.weight": (LORA, MAGNITUDE, "peft"),
    ".diff": (FULL, PART, "lycoris"), ".diff_b": (FULL, PART, "lycoris"),
    ".oft_blocks": (OFT, PART, "lycoris"), ".oft_diag": (OFT, PART, "lycoris"), ".oft_R": (OFT, PART, "lycoris"),
    ".w_norm": (NORM, PART, "lycoris"), ".b_norm": (NORM, PART, "lycoris"),
}
_BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)
_ADAPTER_ROLES = (DOWN, UP)   # a file is an adapter only if some module has a low-rank factor or a LyCORIS part

# name prefix -> part of the base model. kohya flattens module paths with "_" (lora_unet_*: kohya, A1111,
# OneTrainer's lora_transformer_*, Stable Cascade's lora_prior_unet_*); diffusers keeps dots (unet.*,
# transformer.*); ComfyUI and BFL files use the checkpoint's own prefixes.
PART_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lora_unet_", DENOISER), ("lora_transformer_", DENOISER), ("lora_prior_unet_", DENOISER),
    ("lora_te1_", TE1), ("lora_te2_", TE2), ("lora_te3_", TE3), ("lora_te_", TE1),
    ("unet.", DENOISER), ("transformer.", DENOISER),
    ("model.diffusion_model.", DENOISER), ("diffusion_model.", DENOISER),
    ("text_encoder_2.", TE2), ("text_encoder_3.", TE3), ("text_encoder.", TE1),
    ("text_encoders.clip_l.", TE1), ("text_encoders.clip_g.", TE2), ("text_encoders.t5xxl.", TE3),
)
PEFT_WRAPPER = "base_model.model."   # PEFT's own save of a wrapped model
BLOCK = re.compile(r"(?:^|[._])((?:single_transformer_blocks|transformer_blocks|down_blocks|up_blocks|input_blocks|"
                   r"output_blocks|double_blocks|single_blocks|joint_blocks|layers|blocks)[._]\d+|mid_block|"
                   r"middle_block)(?=[._]|$)")
TRANSFORMER_FAMILIES = ("flux", "sd3", "chroma", "auraflow", "pixart", "hunyuan", "sana", "hidream")
CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}
TE_WIDTHS = {768: "CLIP ViT-L (768)", 1024: "OpenCLIP ViT-H (1024)", 1280: "OpenCLIP ViT-bigG (1280)",
             4096: "T5-XXL (4096)"}


@dataclass
class Module:
    name: str                       # the key prefix shared by the module's tensors
    part: str
    path: str                       # the module path inside its part (kohya: with "_")
    algorithms: set[str] = field(default_factory=set)
    roles: dict[str, str] = field(default_factory=dict)   # role -> key
    spellings: set[str] = field(default_factory=set)
    rank: int | None = None
    alpha: float | None = None
    conv_kernel: tuple[int, ...] | None = None

    @property
    def dora(self) -> bool:
        return MAGNITUDE in self.roles


@dataclass(frozen=True)
class BlockFacts:
    part: str
    block: str
    modules: int
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]


@dataclass(frozen=True)
class AdapterFacts:
    algorithm: str                  # lora, locon, loha, lokr, full, oft, or "a+b" when mixed
    dora: bool
    spelling: str                   # kohya, peft, diffusers, diffusers-attn-procs, xlabs, lycoris, ...
    modules: int
    parts: dict[str, int]           # part -> modules
    ranks: tuple[int, ...]          # distinct ranks, ascending
    alphas: tuple[float, ...]       # distinct alphas (empty when the file stores none)
    blocks: tuple[BlockFacts, ...]
    conv_modules: int               # modules on k x k convolutions (k > 1): LoCon
    unmatched: tuple[str, ...]      # keys that are not adapter tensors (at most a few shown)
    evidence: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "dora": self.dora, "spelling": self.spelling, "modules": self.modules,
                "parts": self.parts, "ranks": list(self.ranks), "alphas": list(self.alphas),
                "conv_modules": self.conv_modules, "unmatched_keys": list(self.unmatched),
                "blocks": [{"part": b.part, "block": b.block, "modules": b.modules, "ranks": list(b.ranks),
                            "alphas": list(b.alphas)} for b in self.blocks]}


def with_denoiser_named(facts: AdapterFacts, family: str | None) -> AdapterFacts:
    """``facts`` with the denoiser part called what the family calls it: ``unet`` or ``transformer``."""
    label = "transformer" if family and family.startswith(TRANSFORMER_FAMILIES) else "unet"
    parts = {(label if p == DENOISER else p): n for p, n in sorted(facts.parts.items(), key=lambda i: i[0] != DENOISER)}
    blocks = tuple(replace(b, part=label) if b.part == DENOISER else b for b in facts.blocks)
    return replace(facts, parts=parts, blocks=blocks)


def split_key(key: str) -> tuple[str, str, str, str, str] | None:
    """``key`` -> (module name, suffix, algorithm, role, spelling), or None when no suffix matches."""
    for suffix in _BY_LENGTH:
        if key.endswith(suffix) and len(key) > len(suffix):
            algo, role, spelling = SUFFIXES[suffix]
            return key[: -len(suffix)], suffix, algo, role, spelling
    return None


def _part(name: str) -> tuple[str, str]:
    """(part, path inside it) of a module name."""
    if name.startswith(PEFT_WRAPPER):
        name = name[len(PEFT_WRAPPER):]
    for prefix, part in PART_PREFIXES:
        if name.startswith(prefix):
            return part, name[len(prefix):]
    return (TE1 if name.startswith("text_model.") else DENOISER), name


def modules_of(shapes: Mapping[str, Shape], scalars: Mapping[str, float]) -> tuple[dict[str, Module], list[str]]:
    """The adapter modules of a file, and the keys that belong to none."""
    modules: dict[str, Module] = {}
    unmatched: list[str] = []
    for key in sorted(shapes):
        parts = split_key(key)
        if parts is None:
            unmatched.append(key)
            continue
        name, _, algo, role, spelling = parts
        if role == ALPHA and len(shapes[key]) > 1:
            unmatched.append(key)
            continue
        module = modules.get(name)
        if module is None:
            part, path = _part(name)
            module = modules[name] = Module(name, part, path)
        if role not in (ALPHA, MAGNITUDE):
            module.algorithms.add(algo)
        module.roles[role] = key
        module.spellings.add(spelling)
    for module in modules.values():
        _measure(module, shapes, scalars)
    return modules, unmatched


def _measure(m: Module, shapes: Mapping[str, Shape], scalars: Mapping[str, float]) -> None:
    down = m.roles.get(DOWN)
    if LOKR in m.algorithms:
        factor = m.roles.get(DOWN) or m.name + ".lokr_w1_b"
        m.rank = shapes[factor][0] if factor in shapes and shapes[factor] else None
    elif down is not None and shapes[down]:
        m.rank = shapes[down][0]
        if len(shapes[down]) == 4 and tuple(shapes[down][2:]) != (1, 1):
            m.conv_kernel = tuple(shapes[down][2:])
    if ALPHA in m.roles:
        m.alpha = scalars.get(m.roles[ALPHA])


def _factor_key(m: Module) -> str:
    """A key of the module that holds weights (not its alpha), for evidence lines."""
    return next((k for role, k in m.roles.items() if role != ALPHA), next(iter(m.roles.values())))


def _distinct(values: Iterable[Any]) -> tuple:
    return tuple(sorted({v for v in values if v is not None}))


def _blocks(modules: list[Module]) -> tuple[BlockFacts, ...]:
    groups: dict[tuple[str, str], list[Module]] = {}
    for m in modules:
        hit = BLOCK.search(m.path)
        block = re.sub(r"_(\d+)$", r".\1", hit.group(1)) if hit else "(other)"
        groups.setdefault((m.part, block), []).append(m)

    def order(item: tuple[tuple[str, str], list[Module]]) -> tuple[bool, str, str, int]:
        (part, block), _ = item
        num = re.search(r"\d+$", block)
        return part != DENOISER, part, re.sub(r"[._]\d+$", "", block), int(num.group()) if num else -1

    return tuple(BlockFacts(part, block, len(ms), _distinct(m.rank for m in ms), _distinct(m.alpha for m in ms))
                 for (part, block), ms in sorted(groups.items(), key=order))


def _algorithm(modules: list[Module], evidence: list[str]) -> str:
    algos = Counter(a for m in modules for a in m.algorithms)
    conv = [m for m in modules if m.conv_kernel]
    if LORA in algos and conv:
        example = conv[0]
        kernel = "x".join(map(str, example.conv_kernel or ()))
        evidence.append(f"key {example.roles[DOWN]} is a {kernel} convolution "
                        f"factor -> LoRA on convolution layers too: LyCORIS LoCon ({len(conv)} modules)")
        algos[LOCON] = algos.pop(LORA)
    for algo, label in ((LOHA, "LoHa (Hadamard product)"), (LOKR, "LoKr (Kronecker product)")):
        if algo in algos:
            key = next(_factor_key(m) for m in modules if algo in m.algorithms)
            evidence.append(f"key {key} -> LyCORIS {label}")
    return "+".join(sorted(algos, key=lambda a: -algos[a])) or LORA


def _spelling(modules: list[Module]) -> str:
    """The trainer's spelling, by the tensors' suffixes (a ``unet.`` / ``transformer.`` prefix goes with several)."""
    counts = Counter(SUFFIXES[k[len(m.name):]][2] for m in modules for k in m.roles.values())
    if LOHA in {a for m in modules for a in m.algorithms} or LOKR in {a for m in modules for a in m.algorithms}:
        return "lycoris"
    for name in ("xlabs", "diffusers-attn-procs", "diffusers", "peft", "kohya"):
        if name in counts:
            return name
    return "unknown"


def adapter_facts(shapes: Mapping[str, Shape], scalars: Mapping[str, float] | None = None) -> AdapterFacts | None:
    """The adapter in ``shapes`` (name -> shape), or None when most keys are not adapter tensors.

    ``scalars``: values of one-element tensors (the ``.alpha`` of kohya / LyCORIS files) where the
    caller read them; alphas are unknown otherwise.
    """
    modules, unmatched = modules_of(shapes, scalars or {})
    real = [m for m in modules.values() if m.algorithms and (set(m.roles) & {DOWN, UP, PART})]
    if not real or len(unmatched) * 2 > len(shapes):
        return None
    evidence: list[str] = []
    first = real[0]
    evidence.append(f"key {_factor_key(first)} -> adapter tensors ({', '.join(sorted(first.spellings))} "
                    f"spelling): {len(real)} modules")
    algorithm = _algorithm(real, evidence)
    dora = [m for m in real if m.dora]
    if dora:
        evidence.append(f"key {dora[0].roles[MAGNITUDE]} -> DoRA magnitude vector ({len(dora)} modules)")
    if unmatched:
        evidence.append(f"{len(unmatched)} keys are not adapter tensors (first: {unmatched[0]})")
    return AdapterFacts(algorithm, bool(dora), _spelling(real), len(real), dict(Counter(m.part for m in real)),
                        _distinct(m.rank for m in real), _distinct(m.alpha for m in real), _blocks(real),
                        sum(1 for m in real if m.conv_kernel), tuple(unmatched[:5]), tuple(evidence))


def _in_width(m: Module, shapes: Mapping[str, Shape]) -> int:
    """Input features of the layer a module changes (from its down factor); 0 when the factors do not say."""
    down = m.roles.get(DOWN)
    if down is None or len(shapes[down]) < 2 or not m.algorithms & {LORA, LOHA}:
        return 0  # a LoKr factor is a factor of the width, not the width
    return shapes[down][1]


def base_family(shapes: Mapping[str, Shape],
                scalars: Mapping[str, float] | None = None) -> tuple[str | None, list[str]]:
    """The base model family an adapter was trained on, with evidence; None when the keys cannot tell."""
    modules, _ = modules_of(shapes, scalars or {})
    ms = [m for m in modules.values() if m.algorithms]
    evidence: list[str] = []
    denoiser = [m for m in ms if m.part == DENOISER]
    dit = _dit_family(denoiser, shapes, evidence)
    if dit:
        return dit, evidence
    to_k = next((m for m in denoiser if re.search(r"attn2[._]to_k$|attn2[._]processor[._]to_k$", m.path)
                 and _in_width(m, shapes)), None)
    if to_k is not None:
        width = _in_width(to_k, shapes)
        family = CONTEXT_WIDTHS.get(width)
        evidence.append(f"key {to_k.roles[DOWN]} has shape {list(shapes[to_k.roles[DOWN]])} -> cross-attention "
                        f"width {width}: {family or 'no known family'}")
        if family:
            return family, evidence
    te2 = next((m for m in ms if m.part == TE2), None)
    if te2 is not None:
        width = _in_width(te2, shapes)
        evidence.append(f"key {_factor_key(te2)} -> a second text encoder"
                        f"{f' ({TE_WIDTHS.get(width, width)})' if width else ''}: SDXL")
        return "sdxl", evidence
    te1 = next((m for m in ms if m.part == TE1 and _in_width(m, shapes)), None)
    ldm = next((m for m in denoiser if re.match(r"(input_blocks|output_blocks|middle_block)", m.path)), None)
    if ldm is not None:
        evidence.append(f"key {_factor_key(ldm)} -> kohya's SDXL (original UNet) block names: SDXL")
        return "sdxl", evidence
    if te1 is not None:
        width = _in_width(te1, shapes)
        family = {768: "sd1", 1024: "sd2"}.get(width)
        evidence.append(f"key {te1.roles[DOWN]} -> text encoder width {width} "
                        f"({TE_WIDTHS.get(width, 'unknown')}): {family or 'no known family'}")
        return family, evidence
    return None, evidence


def _dit_family(denoiser: list[Module], shapes: Mapping[str, Shape], evidence: list[str]) -> str | None:
    for m in denoiser:
        if re.match(r"(double_blocks|single_blocks|single_transformer_blocks)[._]", m.path):
            evidence.append(f"key {_factor_key(m)} -> Flux double/single stream blocks: Flux.1")
            return "flux1"
        if re.match(r"joint_blocks[._]", m.path):
            evidence.append(f"key {_factor_key(m)} -> MMDiT joint blocks: SD3")
            return "sd3"
    add_proj = next((m for m in denoiser if re.match(r"transformer_blocks[._]\d+[._]attn[._]add_[qkv]_proj$", m.path)
                     and _in_width(m, shapes)), None)
    if add_proj is not None:
        width = _in_width(add_proj, shapes)
        family = "flux1" if width == 3072 else "sd3"
        evidence.append(f"key {add_proj.roles[DOWN]} has shape {list(shapes[add_proj.roles[DOWN]])} -> joint "
                        f"attention {width} wide: {'Flux.1' if family == 'flux1' else 'SD3'}")
        return family
    return None
