"""Model families the converter does not cover, each known by a key (and sometimes a shape) only it has.

This table is the one place these markers live: :mod:`tensorsafe.converter.families` refuses a file
that matches one with the family's name, and :mod:`tensorsafe.converter.identify` names it in
``inspect``. Each marker cites where the key comes from; the key is looked for bare and under the
denoiser prefixes the tools use (``model.diffusion_model.`` in single files, ``diffusion_model.`` in
ComfyUI and BFL files). Facts: diffusers 0.42 ``single_file_utils.CHECKPOINT_KEY_NAMES`` and ComfyUI
``model_detection.py`` (read, not copied); docs/identification.md lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

Shape = tuple[int, ...]
Shapes = Mapping[str, Shape]
Variant = tuple[str, str, str] | None   # (family id, title, evidence line)
DENOISER_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.")


@dataclass(frozen=True)
class Marker:
    key: str                        # the key after a denoiser prefix; with ``contains``: a substring of a key
    contains: bool = False
    dim: tuple[int, int] | None = None   # (axis, size): the key counts only with this size on that axis

    def find(self, shapes: Mapping[str, Shape]) -> str | None:
        """The first key of ``shapes`` this marker matches, or None."""
        if self.contains:
            hits = (k for k in sorted(shapes) if self.key in k)
        else:
            hits = (p + self.key for p in DENOISER_PREFIXES if p + self.key in shapes)
        for key in hits:
            if self.dim is None:
                return key
            axis, size = self.dim
            shape = shapes[key]
            if len(shape) > axis and shape[axis] == size:
                return key
        return None


@dataclass(frozen=True)
class Signature:
    family: str                     # stable id used in JSON (``flux1``, ``svd``, ...)
    title: str                      # what a person calls it
    markers: tuple[Marker, ...]     # any one of them is enough
    variant: Callable[[Shapes], Variant] | None = None
    """Refines the family from other keys: (family id, title, evidence line), or None."""


@dataclass(frozen=True)
class FamilyMatch:
    family: str
    title: str
    key: str                        # the key that shows it
    evidence: tuple[str, ...]


def _has(shapes: Shapes, key: str) -> str | None:
    return next((p + key for p in DENOISER_PREFIXES if p + key in shapes), None)


def _sd3_variant(shapes: Shapes) -> Variant:
    large = _has(shapes, "joint_blocks.37.x_block.mlp.fc1.weight")
    if large:
        return "sd3.5-large", "Stable Diffusion 3.5 Large", f"key {large} exists -> 38 MMDiT blocks: 3.5 Large"
    medium = _has(shapes, "joint_blocks.0.x_block.attn2.qkv.weight")
    if medium:
        return "sd3.5-medium", "Stable Diffusion 3.5 Medium", \
            f"key {medium} exists -> MMDiT-X (second self-attention in the x blocks): 3.5 Medium"
    return None


def _flux_variant(shapes: Shapes) -> Variant:
    img_in = _has(shapes, "img_in.weight")
    width = shapes[img_in][1] if img_in and len(shapes[img_in]) == 2 else 0
    kind = {384: " Fill", 128: " Depth/Canny"}.get(width, "")
    extra = f"; {_show(str(img_in), shapes)} -> {width // 4} latent + condition channels:{kind}" if kind else ""
    guidance = _has(shapes, "guidance_in.in_layer.weight") or _has(shapes, "guidance_in.in_layer.bias")
    if guidance:
        return "flux1-dev", f"Flux.1 dev{kind}", f"key {guidance} exists -> guidance-distilled: dev{extra}"
    return "flux1-schnell", f"Flux.1 schnell{kind}", f"no guidance_in.in_layer.* key -> schnell{extra}"


def _cascade_c_variant(shapes: Shapes) -> Variant:
    key = _has(shapes, "clip_txt_mapper.weight")
    if key is not None and shapes[key][:1] == (1536,):
        return "stable-cascade-c-lite", "Stable Cascade stage C lite", f"{_show(key, shapes)} -> width 1536: lite"
    return None


def _pixart_variant(shapes: Shapes) -> Variant:
    key = _has(shapes, "y_embedder.y_embedding")
    rows = shapes[key][0] if key and shapes[key] else -1
    names = {120: ("pixart-alpha", "PixArt-α"), 300: ("pixart-sigma", "PixArt-Σ")}
    if rows not in names:
        return None
    family, title = names[rows]
    return family, title, f"{_show(str(key), shapes)} -> {rows} caption tokens: {title}"


# Checked in order: the first signature with a matching marker names the family. Families that share
# keys come most specific first (Chroma and Flux.2 before Flux.1, Sana before PixArt).
SIGNATURES: tuple[Signature, ...] = (
    Signature("sd3", "Stable Diffusion 3 / 3.5 (MMDiT)",
              (Marker("joint_blocks.0.context_block.adaLN_modulation.1.bias"),), _sd3_variant),
    Signature("flux2", "Flux.2", (Marker("single_stream_modulation.lin.weight"),)),
    Signature("chroma", "Chroma (Flux.1-based)", (Marker("distilled_guidance_layer.in_proj.bias"),)),
    Signature("flux1", "Flux.1", (Marker("double_blocks.0.img_attn.norm.key_norm.scale"),), _flux_variant),
    Signature("stable-cascade-c", "Stable Cascade stage C", (Marker("clip_txt_mapper.weight"),), _cascade_c_variant),
    Signature("stable-cascade-b", "Stable Cascade stage B", (Marker("down_blocks.1.0.channelwise.0.weight"),)),
    Signature("auraflow", "AuraFlow", (Marker("double_layers.0.attn.w1q.weight"), Marker("cond_seq_linear.weight"))),
    Signature("hunyuan-dit", "HunyuanDiT", (Marker("mlp_t5.0.weight"),)),
    Signature("hidream", "HiDream-I1", (Marker("double_stream_blocks.0.block.adaLN_modulation.1.bias"),)),
    Signature("hunyuan-video", "HunyuanVideo",
              (Marker("txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.bias"),)),
    Signature("sana", "Sana", (Marker("blocks.0.mlp.inverted_conv.conv.weight"), Marker("attention_y_norm.weight"))),
    Signature("pixart", "PixArt", (Marker("t_block.1.weight"),), _pixart_variant),
    Signature("mochi", "Mochi 1", (Marker("blocks.0.attn.qkv_x.weight"), Marker("t5_yproj.weight"))),
    Signature("ltx-video", "LTX-Video", (Marker("patchify_proj.weight"),)),
    Signature("wan", "Wan", (Marker("head.modulation"),)),
    Signature("lumina2", "Lumina 2", (Marker("cap_embedder.0.weight"),)),
    # SDXL-layout UNets that are not SDXL, which the UNet keys alone would read as SDXL: SVD by its
    # temporal layers (time_stack / time_mixer), Kolors by its 4096-wide ChatGLM conditioning.
    Signature("svd", "Stable Video Diffusion",
              (Marker(".time_mixer.mix_factor", contains=True), Marker(".time_stack.", contains=True))),
    Signature("kolors", "Kolors",
              (Marker("label_emb.0.0.weight", dim=(1, 5632)), Marker("encoder_hid_proj.weight", dim=(1, 4096)))),
    Signature("sd-x4-upscaler", "the Stable Diffusion x4 upscaler",
              (Marker("input_blocks.10.0.skip_connection.bias"),)),
    Signature("sd-x4-upscaler", "the Stable Diffusion x4 upscaler (class-embedded noise level)",
              (Marker("label_emb.weight"),)),
)


def _show(key: str, shapes: Mapping[str, Shape]) -> str:
    return f"key {key} has shape {list(shapes[key])}"


def other_family(shapes: Mapping[str, Shape]) -> FamilyMatch | None:
    """The first family of :data:`SIGNATURES` whose marker is in ``shapes``, with its evidence."""
    for sig in SIGNATURES:
        key = next((k for k in (m.find(shapes) for m in sig.markers) if k is not None), None)
        if key is None:
            continue
        evidence = [f"{_show(key, shapes)} -> {sig.title}"]
        family, title = sig.family, sig.title
        refined = sig.variant(shapes) if sig.variant else None
        if refined is not None:
            family, title, line = refined
            evidence.append(line)
        return FamilyMatch(family, title, key, tuple(evidence))
    return None
