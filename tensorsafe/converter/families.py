"""Which Stable Diffusion family a checkpoint belongs to, read from its keys and shapes.

``detect`` looks at a single file (orig layout, docs/single-file.md §3), ``detect_folder`` at a diffusers
folder. Both return a :class:`Detection` that says what was found, what was assumed, and which
flag changes an assumption, with one evidence line per signal ("key K has shape S -> ...").
Families are data (:data:`FAMILIES`): prefixes, text encoders, defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tensorsafe.converter.model_signatures import other_family
from tensorsafe.errors import UnsupportedModelError, UsageError, option

Shape = tuple[int, ...]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")

SD1, SD2, SDXL, SDXL_REFINER = "sd1", "sd2", "sdxl", "sdxl-refiner"
TEXT2IMG, INPAINT, DEPTH, PIX2PIX = "text2img", "inpaint", "depth", "pix2pix"
EPSILON, V_PREDICTION = "epsilon", "v_prediction"

VARIANT_BY_IN_CHANNELS = {
    4: TEXT2IMG,
    9: INPAINT,   # latent 4 + mask 1 + masked-image latent 4
    5: DEPTH,     # latent 4 + depth 1
    8: PIX2PIX,   # latent 4 + image latent 4
}

MODEL_TYPE_ALIASES = {
    "sd1": SD1, "v1": SD1, "sd15": SD1, "sd1.5": SD1,
    "sd2": SD2, "v2": SD2, "sd21": SD2, "sd2.1": SD2,
    "sdxl": SDXL, "xl": SDXL, "xl_base": SDXL, "sdxl-base": SDXL,
    "sdxl-refiner": SDXL_REFINER, "refiner": SDXL_REFINER, "xl_refiner": SDXL_REFINER,
}


@dataclass(frozen=True)
class TextEncoderSlot:
    component: str          # diffusers subfolder: text_encoder / text_encoder_2
    prefix: str             # orig prefix
    layout: str             # "clip" (already the HF layout) or "openclip"
    hidden_act: str
    with_projection: bool   # CLIPTextModelWithProjection (keeps text_projection)
    projection_dim: int     # written to the config when the weights carry no projection
    pad_token: str          # of the matching tokenizer folder
    max_layers: int | None = None  # SD2 keeps 23 of the 24 OpenCLIP blocks


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    text_encoders: tuple[TextEncoderSlot, ...]
    image_size: int                 # default training resolution (SD2: of the 768-v model)
    vae_scaling_factor: float
    heads_from_width: bool          # attention_head_dim = [c // 64 ...] (SD2, SDXL); SD1: 8 heads
    time_ids: int | None            # SDXL size/crop conditioning: 6 numbers (base), 5 (refiner)
    pipelines: dict[str, str]       # variant -> pipeline class


CLIP_L_SD1 = TextEncoderSlot("text_encoder", "cond_stage_model.transformer.", "clip", "quick_gelu", False, 768,
                             "<|endoftext|>")
OPENCLIP_H = TextEncoderSlot("text_encoder", "cond_stage_model.model.", "openclip", "gelu", False, 512, "!",
                             max_layers=23)
CLIP_L_SDXL = TextEncoderSlot("text_encoder", "conditioner.embedders.0.transformer.", "clip", "quick_gelu", False,
                              768, "<|endoftext|>")
OPENCLIP_BIGG = TextEncoderSlot("text_encoder_2", "conditioner.embedders.1.model.", "openclip", "gelu", True, 1280,
                                "!")
OPENCLIP_BIGG_REFINER = TextEncoderSlot("text_encoder_2", "conditioner.embedders.0.model.", "openclip", "gelu",
                                        True, 1280, "!")

SD_PIPELINES = {TEXT2IMG: "StableDiffusionPipeline", INPAINT: "StableDiffusionInpaintPipeline",
                DEPTH: "StableDiffusionDepth2ImgPipeline", PIX2PIX: "StableDiffusionInstructPix2PixPipeline"}

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family(SD1, "Stable Diffusion 1.x", (CLIP_L_SD1,), 512, 0.18215, False, None, SD_PIPELINES),
    Family(SD2, "Stable Diffusion 2.x", (OPENCLIP_H,), 768, 0.18215, True, None, SD_PIPELINES),
    Family(SDXL, "Stable Diffusion XL base", (CLIP_L_SDXL, OPENCLIP_BIGG), 1024, 0.13025, True, 6,
           {TEXT2IMG: "StableDiffusionXLPipeline", INPAINT: "StableDiffusionXLInpaintPipeline",
            PIX2PIX: "StableDiffusionXLInstructPix2PixPipeline"}),
    Family(SDXL_REFINER, "Stable Diffusion XL refiner", (OPENCLIP_BIGG_REFINER,), 1024, 0.13025, True, 5,
           {TEXT2IMG: "StableDiffusionXLImg2ImgPipeline"}),
]}

# Other model families, by a key that only they have (docs/single-file.md §3): refused with a clear message.
# Their marker keys live in one table, tensorsafe.converter.model_signatures (inspect names them too).
UNSUPPORTED_PREFIXES = (
    ("control_model.", "ControlNet"),
    ("text_encoders.t5xxl.", "Stable Diffusion 3 / 3.5 (T5 text encoder)"),
)
PLAYGROUND_KEYS = ("edm_mean", "edm_std")
DIFFUSERS_LAYOUT_KEYS = ("time_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight",
                         "encoder.down_blocks.0.resnets.0.conv1.weight", "text_model.embeddings.token_embedding.weight")


@dataclass(frozen=True)
class Ema:
    keys: int          # tensors under model_ema.* (without decay/num_updates)
    complete: bool     # every UNet tensor has an EMA twin of the same shape
    missing: str | None = None  # the first UNet key without a twin, when incomplete

    @property
    def available(self) -> bool:
        return self.keys > 0 and self.complete


@dataclass
class Detection:
    family: str
    variant: str
    in_channels: int | None
    components: tuple[str, ...]     # diffusers subfolders with weights in the source
    prediction_type: str
    prediction_reason: str          # what decided it, and which flag changes it
    sample_size: int                # latent size (image size / 8)
    upcast_attention: bool = False
    rescale_betas_zero_snr: bool = False   # `ztsnr` marker
    ema: Ema = field(default_factory=lambda: Ema(0, False))
    unet_prefix: str = UNET_PREFIX  # "" for ComfyUI UNet-only files
    vae_prefix: str = VAE_PREFIXES[0]
    evidence: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def image_size(self) -> int:
        return self.sample_size * 8

    @property
    def pipeline(self) -> str:
        return self.spec.pipelines[self.variant]

    def tokenizers(self) -> dict[str, str]:
        """Tokenizer folder -> pad token, one per text encoder of the family (docs/single-file.md §9)."""
        return {("tokenizer" if s.component == "text_encoder" else "tokenizer_2"): s.pad_token
                for s in self.spec.text_encoders}

    def describe(self) -> str:
        """One line for the summary: family, variant, prediction type, size, components."""
        channels = f", {self.in_channels} input channels" if self.in_channels is not None else ""
        return (f"{self.family} ({self.spec.title}), {self.variant}{channels}, {self.prediction_type}, "
                f"{self.image_size} px; components: {', '.join(self.components) or 'none'}")


def _show(key: str, shapes: dict[str, Shape]) -> str:
    return f"key {key} has shape {list(shapes[key])}"


def _unsupported(shapes: dict[str, Shape]) -> None:
    match = other_family(shapes)
    if match is not None:
        name, key = match.title, match.key
        raise UnsupportedModelError(
            f"this is {name}: {_show(key, shapes)}; tensorsafe converts SD1, SD2 and SDXL only, "
            f"{name} is not supported yet", evidence=key)
    for prefix, name in UNSUPPORTED_PREFIXES:
        key = next((k for k in shapes if k.startswith(prefix)), None)
        if key is not None:
            raise UnsupportedModelError(
                f"this is {name}: {_show(key, shapes)}; {name} is not supported yet", evidence=key)
    for key in PLAYGROUND_KEYS:
        if key in shapes:
            raise UnsupportedModelError(
                f"this is Playground v2.5 (SDXL layout with an EDM schedule and VAE latent statistics): "
                f"{_show(key, shapes)}; not supported yet", evidence=key)


def _unet_prefix(shapes: dict[str, Shape]) -> str | None:
    if any(k.startswith(UNET_PREFIX) for k in shapes):
        return UNET_PREFIX
    if "input_blocks.0.0.weight" in shapes:
        return ""  # ComfyUI diffusion_models/ file without the prefix
    return None


def _text_family(shapes: dict[str, Shape], evidence: list[str]) -> str | None:
    def first(prefix: str) -> str | None:
        return next((k for k in sorted(shapes) if k.startswith(prefix)), None)

    bigg, clip_l = first(OPENCLIP_BIGG.prefix), first(CLIP_L_SDXL.prefix)
    refiner, vit_h, sd1 = first(OPENCLIP_BIGG_REFINER.prefix), first(OPENCLIP_H.prefix), first(CLIP_L_SD1.prefix)
    if bigg:
        evidence.append(f"key {bigg} exists -> OpenCLIP bigG as the second text encoder: SDXL base")
        return SDXL
    if refiner:
        evidence.append(f"key {refiner} exists, no conditioner.embedders.1 -> OpenCLIP bigG alone: SDXL refiner")
        return SDXL_REFINER
    if clip_l:
        evidence.append(f"key {clip_l} exists -> CLIP ViT-L under conditioner.embedders.0: SDXL base")
        return SDXL
    if vit_h:
        evidence.append(f"key {vit_h} exists -> OpenCLIP ViT-H text encoder: SD2")
        return SD2
    if sd1:
        evidence.append(f"key {sd1} exists -> CLIP ViT-L text encoder: SD1")
        return SD1
    return None


def _unet_families(shapes: dict[str, Shape], u: str, evidence: list[str]) -> set[str]:
    """The families the UNet's own shapes allow."""
    label = u + "label_emb.0.0.weight"
    to_k = next((k for k in sorted(shapes) if k.startswith(u) and k.endswith("attn2.to_k.weight")), None)
    context = shapes[to_k][1] if to_k and len(shapes[to_k]) == 2 else None
    if to_k:
        evidence.append(f"{_show(to_k, shapes)} -> cross-attention width {context}")
    if label in shapes:
        width = shapes[label][1] if len(shapes[label]) == 2 else None
        if width == 2816 or context == 2048:
            evidence.append(f"{_show(label, shapes)} -> size conditioning of SDXL base (2816 = 6 x 256 + 1280)")
            return {SDXL}
        if width == 2560 or context == 1280:
            evidence.append(f"{_show(label, shapes)} -> size conditioning of the SDXL refiner (2560 = 5 x 256 + 1280)")
            return {SDXL_REFINER}
        evidence.append(f"{_show(label, shapes)} -> SDXL-style size conditioning (base or refiner)")
        return {SDXL, SDXL_REFINER}
    proj = next((k for k in sorted(shapes) if k.startswith(u) and k.endswith(".proj_in.weight")), None)
    if proj:
        linear = len(shapes[proj]) == 2
        evidence.append(f"{_show(proj, shapes)} -> {'linear' if linear else '1x1 conv'} projection: "
                        f"{'SD2' if linear else 'SD1'} (use_linear_projection {str(linear).lower()})")
        return {SD2} if linear else {SD1}
    return {SD1, SD2}


def _family(shapes, u, model_type, evidence) -> str:
    text = _text_family(shapes, evidence)
    unet = _unet_families(shapes, u, evidence) if u is not None else set(FAMILIES)
    if model_type is not None:
        family = MODEL_TYPE_ALIASES.get(model_type.lower())
        if family is None:
            raise UsageError(f"unknown {option('model_type', None)} {model_type!r}; use one of {', '.join(FAMILIES)}")
        evidence.append(f"--model-type {model_type} -> {family} (overrides the keys)")
        if text is not None and text != family or family not in unet:
            evidence.append(f"note: the keys suggest {text or '/'.join(sorted(unet))}, not {family}")
        return family
    if text is not None:
        if text not in unet:
            raise UsageError(f"the text encoder keys say {text} but the UNet looks like {'/'.join(sorted(unet))} "
                             f"({evidence[-1]}); pass {option('model_type', 'FAMILY')} if you know which it is")
        return text
    if len(unet) == 1:
        return unet.pop()
    raise UsageError(f"cannot tell {' from '.join(sorted(unet))} from this file's keys "
                     f"({'; '.join(evidence) or 'no UNet or text encoder keys'}); pass {option('model_type', 'FAMILY')}")


def _parameterization(sidecar: dict | None) -> str | None | bool:
    """``parameterization`` anywhere in a parsed sidecar yaml; False when there is no sidecar."""
    if sidecar is None:
        return False
    stack: list[object] = [sidecar]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "parameterization" in node:
                return str(node["parameterization"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _prediction(family: str, variant: str, shapes, extras, prediction_type, sidecar) -> tuple[str, str]:
    if prediction_type is not None:
        if prediction_type not in (EPSILON, V_PREDICTION):
            raise UsageError(f"{option('prediction_type', None)} must be {EPSILON} or {V_PREDICTION}, not {prediction_type!r}")
        return prediction_type, "--prediction-type"
    param = _parameterization(sidecar)
    if param == "v":
        return V_PREDICTION, "the sidecar .yaml says parameterization: \"v\" (--prediction-type overrides)"
    if param is not False:
        return EPSILON, "the sidecar .yaml has no parameterization: \"v\" (--prediction-type overrides)"
    if "v_pred" in shapes:
        return V_PREDICTION, "the file carries the `v_pred` marker key (--prediction-type overrides)"
    if family != SD2:
        return EPSILON, f"{FAMILIES[family].title} models predict noise; a v-prediction fine-tune needs " \
                        f"--prediction-type v_prediction"
    if variant != TEXT2IMG:
        return EPSILON, f"the SD2 {variant} model is a 512 px epsilon model (--prediction-type overrides)"
    step = extras.get("global_step")
    if step is not None:
        if step == 875000:
            return EPSILON, "global_step is 875000: the SD2 512-base model (diffusers' rule; --prediction-type " \
                            "overrides)"
        return V_PREDICTION, f"global_step is {step}, not 875000: the SD2 768-v model (diffusers' rule; " \
                             f"--prediction-type overrides)"
    return V_PREDICTION, "assumed: SD2 768-v (v_prediction, 768 px); the keys cannot tell it from the 512-base " \
                         "model, which needs --prediction-type epsilon (or a sidecar .yaml)"


def _ema(shapes: dict[str, Shape], u: str | None) -> Ema:
    ema_keys = [k for k in shapes if k.startswith(EMA_PREFIX) and k not in EMA_BOOKKEEPING]
    if not ema_keys or u != UNET_PREFIX:
        return Ema(len(ema_keys), False)
    for key in sorted(k for k in shapes if k.startswith(UNET_PREFIX)):
        twin = ema_key(key)
        if shapes.get(twin) != shapes[key]:
            return Ema(len(ema_keys), False, key)
    return Ema(len(ema_keys), True)


def ema_key(unet_key: str) -> str:
    """``model.diffusion_model.a.b.c`` -> ``model_ema.diffusion_modelabc`` (docs/single-file.md §6)."""
    return EMA_PREFIX + "".join(unet_key.split(".")[1:])


def detect(shapes: dict[str, Shape], extras: dict, *, model_type: str | None = None,
           prediction_type: str | None = None, sidecar: dict | None = None) -> Detection:
    """Family, variant, components and assumptions of one single-file checkpoint."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    _unsupported(shapes)
    u = _unet_prefix(shapes)
    known = (*VAE_PREFIXES, *(s.prefix for f in FAMILIES.values() for s in f.text_encoders))
    if u is None and not any(k.startswith(known) for k in shapes):
        diffusers_key = next((k for k in DIFFUSERS_LAYOUT_KEYS if k in shapes), None)
        if diffusers_key is not None:
            raise UnsupportedModelError(
                f"key {diffusers_key} is a diffusers-layout name: this file is already in the diffusers layout "
                f"(convert a diffusers folder with its model_index.json instead)", evidence=diffusers_key)
        sample = sorted(shapes)[0] if shapes else None
        raise UnsupportedModelError(
            f"no Stable Diffusion UNet, VAE or text encoder keys found (first key: {sample!r}); "
            f"this model family is not supported yet", evidence=sample)
    evidence: list[str] = []
    assumptions: list[str] = []
    if u == "":
        evidence.append("key input_blocks.0.0.weight has no model.diffusion_model. prefix -> a UNet-only "
                        "(ComfyUI diffusion_models/) file")
    family = _family(shapes, u, model_type, evidence)

    in_channels = None
    variant = TEXT2IMG
    if u is not None:
        conv_in = u + "input_blocks.0.0.weight"
        if conv_in not in shapes or len(shapes[conv_in]) != 4:
            raise UsageError(f"the UNet has no 4-D {conv_in}: cannot read its input channels")
        in_channels = shapes[conv_in][1]
        if in_channels == 7:
            raise UnsupportedModelError(f"{_show(conv_in, shapes)}: 7 input channels (latent + RGB) is the "
                                        f"Stable Diffusion x4 upscaler, not supported yet", evidence=conv_in)
        variant = VARIANT_BY_IN_CHANNELS.get(in_channels)
        if variant is None:
            raise UnsupportedModelError(f"{_show(conv_in, shapes)}: {in_channels} input channels match no "
                                        f"known variant (4, 5, 8, 9)", evidence=conv_in)
        evidence.append(f"{_show(conv_in, shapes)} -> {in_channels} input channels: {variant}")
    else:
        assumptions.append("no UNet in the file: variant text2img assumed")
    spec = FAMILIES[family]
    if variant not in spec.pipelines:
        raise UnsupportedModelError(f"{spec.title} has no {variant} variant that tensorsafe knows "
                                    f"({in_channels} input channels)", evidence=u and u + "input_blocks.0.0.weight")

    components = []
    if u is not None:
        components.append("unet")
    vae_prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in shapes)), VAE_PREFIXES[0])
    if any(k.startswith(vae_prefix) for k in shapes):
        components.append("vae")
    for slot in spec.text_encoders:
        if any(k.startswith(slot.prefix) for k in shapes):
            components.append(slot.component)
    missing = [c for c in ("unet", "vae", *(s.component for s in spec.text_encoders)) if c not in components]
    if missing:
        assumptions.append(f"components not in the file: {', '.join(missing)} (take them from a base folder)")

    pred, reason = _prediction(family, variant, shapes, extras, prediction_type, sidecar)
    if not reason.startswith(("--prediction-type", "the sidecar", "the file carries")):
        assumptions.append(f"prediction type {pred}: {reason}")
    sample_size = spec.image_size // 8
    if family == SD2:
        sample_size = 96 if pred == V_PREDICTION and variant == TEXT2IMG else 64
        assumptions.append(f"SD2 image size {sample_size * 8} px follows the prediction type "
                           f"({'768-v' if sample_size == 96 else '512'} model)")
    upcast = family == SD2 and pred == V_PREDICTION
    ztsnr = "ztsnr" in shapes
    if "v_pred" in shapes:
        evidence.append("key v_pred exists -> v-prediction (A1111/ComfyUI marker)")
    if ztsnr:
        evidence.append("key ztsnr exists -> zero-terminal-SNR schedule (rescale_betas_zero_snr)")
    ema = _ema(shapes, u)
    if ema.keys:
        evidence.append(f"{ema.keys} model_ema.* keys -> an EMA copy of the UNet"
                        f"{'' if ema.complete else ' (incomplete: ' + str(ema.missing) + ' has no twin)'}")
    return Detection(family, variant, in_channels, tuple(components), pred, reason, sample_size, upcast, ztsnr,
                     ema, u if u is not None else UNET_PREFIX, vae_prefix, evidence, assumptions)


def _component_present(model_index: dict, name: str, shapes_by_component: dict) -> bool:
    entry = model_index.get(name)
    listed = isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None
    return listed or bool(shapes_by_component.get(name))


def detect_folder(model_index: dict, configs: dict[str, dict], shapes_by_component: dict[str, dict[str, Shape]]
                  ) -> Detection:
    """Family and settings of a diffusers folder (``configs``: component -> its config.json, and
    ``scheduler`` -> scheduler_config.json)."""
    evidence: list[str] = []
    unet = configs.get("unet") or {}
    te = configs.get("text_encoder") or {}
    sched = configs.get("scheduler") or {}
    has_te = _component_present(model_index, "text_encoder", shapes_by_component)
    has_te2 = _component_present(model_index, "text_encoder_2", shapes_by_component)
    if unet.get("addition_embed_type") == "text_time" or has_te2:
        family = SDXL if has_te else SDXL_REFINER
        evidence.append(f"text_encoder_2 {'with' if has_te else 'without'} text_encoder -> {family}")
    elif te.get("hidden_act") == "gelu" or unet.get("use_linear_projection") is True:
        family = SD2
        evidence.append("text encoder hidden_act gelu / UNet use_linear_projection true -> SD2")
    else:
        family = SD1
        evidence.append("text encoder hidden_act quick_gelu / conv projections -> SD1")
    in_channels = unet.get("in_channels", 4)
    variant = VARIANT_BY_IN_CHANNELS.get(in_channels, TEXT2IMG)
    evidence.append(f"unet/config.json in_channels {in_channels} -> {variant}")
    pred = sched.get("prediction_type", EPSILON)
    components = tuple(c for c in ("unet", "vae", "text_encoder", "text_encoder_2") if shapes_by_component.get(c))
    spec = FAMILIES[family]
    return Detection(family, variant if variant in spec.pipelines else TEXT2IMG, in_channels, components, pred,
                     "scheduler/scheduler_config.json prediction_type", int(unet.get("sample_size") or
                                                                            spec.image_size // 8),
                     bool(unet.get("upcast_attention")), bool(sched.get("rescale_betas_zero_snr")),
                     evidence=evidence, assumptions=[])
