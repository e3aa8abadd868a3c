"""Files that hold one component of a model: a VAE, a ControlNet, a diffusers-layout UNet or
transformer, a text encoder, an AnimateDiff motion module, an IP-Adapter. Each is told by a key only it has
(diffusers 0.42 ``CHECKPOINT_KEY_NAMES`` and the layouts of docs/single-file.md §2, §5).

Every finder takes ``shapes`` (name -> shape) and returns a :class:`Component` with the evidence,
or None.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

Shape = tuple[int, ...]

VAE_WRAPPERS = ("first_stage_model.", "vae.")
# layout -> (a decoder key, an encoder key); either is enough (decoder-only VAEs exist).
VAE_LAYOUTS = {
    "original (LDM)": ("decoder.up.0.block.0.conv1.weight", "encoder.down.0.block.0.conv1.weight"),
    "diffusers": ("decoder.up_blocks.0.resnets.0.conv1.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"),
}
LATENT_FAMILIES = {4: (None, "4 latent channels: the SD1 / SD2 / SDXL VAE layout (the weights do not tell which)"),
                   16: (None, "16 latent channels: the SD3 / Flux.1 VAE"),
                   32: ("flux2", "32 latent channels: the Flux.2 VAE")}
CONTROLNET_MARKERS = (
    ("control_model.", True, "original (LDM) ControlNet: control_model.*"),
    ("input_hint_block.0.weight", False, "ControlNet without the control_model. prefix (input_hint_block)"),
    ("controlnet_cond_embedding.conv_in.weight", False, "diffusers ControlNet (controlnet_cond_embedding)"),
    ("controlnet_blocks.0.weight", False, "diffusers transformer ControlNet (controlnet_blocks)"),
    ("lora_controlnet", False, "Stability Control-LoRA (lora_controlnet)"),
)
CONTEXT_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class Component:
    kind: str                       # vae, controlnet, diffusers-component, text-encoder, motion-module, ip-adapter
    title: str
    family: str | None
    evidence: tuple[str, ...]
    details: dict = field(default_factory=dict)


def _show(key: str, shapes: Mapping[str, Shape]) -> str:
    return f"key {key} has shape {list(shapes[key])}"


def _unwrapped(shapes: Mapping[str, Shape], wrappers: tuple[str, ...]) -> tuple[dict[str, Shape], str]:
    for w in wrappers:
        if shapes and all(k.startswith(w) for k in shapes):
            return {k[len(w):]: v for k, v in shapes.items()}, w
    return dict(shapes), ""


def vae(shapes: Mapping[str, Shape]) -> Component | None:
    """A standalone VAE, bare or under ``first_stage_model.`` / ``vae.`` (and nothing else in the file)."""
    inner, wrapper = _unwrapped(shapes, VAE_WRAPPERS)
    for layout, markers in VAE_LAYOUTS.items():
        key = next((k for k in markers if k in inner), None)
        if key is None:
            continue
        if sum(1 for k in inner if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))) * 10 \
                < len(inner) * 9:
            return None  # a VAE inside a bigger file: not a standalone VAE
        evidence = [f"key {wrapper}{key} -> a VAE in the {layout} layout"]
        conv_in = "decoder.conv_in.weight"
        channels = inner[conv_in][1] if conv_in in inner and len(inner[conv_in]) == 4 else 0
        family, label = LATENT_FAMILIES.get(channels, (None, f"{channels} latent channels"))
        if channels:
            evidence.append(f"{_show(wrapper + conv_in, shapes)} -> {label}")
        parts = [p for p in ("encoder", "decoder") if any(k.startswith(p + ".") for k in inner)]
        return Component("vae", f"VAE ({layout} layout, {' + '.join(parts)})", family, tuple(evidence),
                         {"layout": layout, "latent_channels": channels or None, "parts": parts})
    return None


def _context_family(shapes: Mapping[str, Shape], evidence: list[str]) -> str | None:
    for key in sorted(shapes):
        if key.endswith(("label_emb.0.0.weight", "add_embedding.linear_1.weight")):
            evidence.append(f"{_show(key, shapes)} -> SDXL size conditioning: SDXL")
            return "sdxl"
    to_k = next((k for k in sorted(shapes) if k.endswith("attn2.to_k.weight") and len(shapes[k]) == 2), None)
    if to_k is None:
        return None
    family = CONTEXT_FAMILIES.get(shapes[to_k][1])
    evidence.append(f"{_show(to_k, shapes)} -> cross-attention width {shapes[to_k][1]}: {family or 'unknown family'}")
    return family


def controlnet(shapes: Mapping[str, Shape]) -> Component | None:
    for marker, is_prefix, label in CONTROLNET_MARKERS:
        key = next((k for k in sorted(shapes) if k.startswith(marker)), None) if is_prefix else \
            (marker if marker in shapes else None)
        if key is None:
            continue
        evidence = [f"key {key} -> {label}"]
        family = _context_family(shapes, evidence)
        if family is None and any(k.startswith(("single_transformer_blocks.", "double_blocks.")) for k in shapes):
            family = "flux1"
            evidence.append("Flux block names -> a Flux.1 ControlNet")
        hint = next((k for k in sorted(shapes) if k.endswith(("input_hint_block.0.weight",
                                                               "controlnet_cond_embedding.conv_in.weight"))), None)
        details = {"hint_channels": shapes[hint][1]} if hint and len(shapes[hint]) == 4 else {}
        return Component("controlnet", f"ControlNet ({label})", family, tuple(evidence), details)
    return None


def diffusers_component(shapes: Mapping[str, Shape]) -> Component | None:
    """A diffusers-layout UNet or transformer (``unet/diffusion_pytorch_model.safetensors`` and the like)."""
    if "time_embedding.linear_1.weight" in shapes and "conv_in.weight" in shapes:
        found = ["keys time_embedding.linear_1.weight and conv_in.weight -> a diffusers-layout UNet"]
        family = _context_family(shapes, found)
        in_ch = shapes["conv_in.weight"][1] if len(shapes["conv_in.weight"]) == 4 else None
        return Component("diffusers-component", "UNet in the diffusers layout (unet/ of a diffusers folder)", family,
                         tuple(found), {"component": "unet", "in_channels": in_ch})
    if "single_transformer_blocks.0.attn.to_q.weight" in shapes or "x_embedder.weight" in shapes and \
            "context_embedder.weight" in shapes:
        guidance = "time_text_embed.guidance_embedder.linear_1.weight" in shapes
        family = "flux1-dev" if guidance else "flux1-schnell"
        said = "key time_text_embed.guidance_embedder.linear_1.weight exists -> dev" if guidance else \
            "no time_text_embed.guidance_embedder key -> schnell"
        evidence = ("single_transformer_blocks / x_embedder keys -> a diffusers-layout Flux.1 transformer", said)
        return Component("diffusers-component", "Flux.1 transformer in the diffusers layout", family, evidence,
                         {"component": "transformer"})
    if "pos_embed.proj.weight" in shapes and "transformer_blocks.0.norm1_context.linear.weight" in shapes:
        return Component("diffusers-component", "SD3 transformer in the diffusers layout", "sd3",
                         ("keys pos_embed.proj.weight and transformer_blocks.0.norm1_context.* -> a diffusers-layout "
                          "SD3 (MMDiT) transformer",), {"component": "transformer"})
    return None


TEXT_ENCODER_MARKERS = (
    ("text_model.embeddings.token_embedding.weight", 1, "CLIP text model (Hugging Face layout)"),
    ("embeddings.token_embedding.weight", 1, "CLIP text model (Hugging Face layout, no text_model. prefix)"),
    ("transformer.resblocks.0.attn.in_proj_weight", 1, "OpenCLIP text model (original layout)"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", 1, "T5 encoder"),
)
TEXT_WIDTHS = {768: "CLIP ViT-L (SD1, SDXL text_encoder, SD3/Flux clip_l)", 1024: "OpenCLIP ViT-H (SD2)",
               1280: "OpenCLIP ViT-bigG (SDXL text_encoder_2, SD3 clip_g)", 4096: "T5-XXL (SD3, Flux)"}


def text_encoder(shapes: Mapping[str, Shape]) -> Component | None:
    for key, axis, label in TEXT_ENCODER_MARKERS:
        if key in shapes and len(shapes[key]) > axis:
            width = shapes[key][axis]
            evidence = (f"{_show(key, shapes)} -> a {label}, width {width}: {TEXT_WIDTHS.get(width, 'unknown')}",)
            return Component("text-encoder", f"text encoder: {label}", None, evidence, {"width": width})
    return None


def motion_module(shapes: Mapping[str, Shape]) -> Component | None:
    key = next((k for k in sorted(shapes) if ".motion_modules." in f".{k}" and "temporal_transformer" in k), None)
    if key is None:
        return None
    return Component("motion-module", "AnimateDiff motion module", None,
                     (f"key {key} -> AnimateDiff temporal layers (motion module)",))


def ip_adapter(shapes: Mapping[str, Shape]) -> Component | None:
    """An IP-Adapter: ``image_proj.*`` with ``ip_adapter.N.to_k_ip.weight`` (``[width, context]``)."""
    key = next((k for k in sorted(shapes) if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight")), None)
    if key is None:
        return None
    evidence = [f"key {key} -> IP-Adapter image cross-attention"]
    context = shapes[key][1] if len(shapes[key]) == 2 else 0
    family = CONTEXT_FAMILIES.get(context)
    evidence.append(f"{_show(key, shapes)} -> cross-attention width {context}: {family or 'unknown family'}")
    return Component("ip-adapter", "IP-Adapter (image prompt adapter)", family, tuple(evidence))


FINDERS = (controlnet, vae, diffusers_component, text_encoder, motion_module, ip_adapter)
