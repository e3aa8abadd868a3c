"""LoRA module names: kohya/A1111/ComfyUI ``lora_unet_*`` / ``lora_te*_*`` <-> diffusers module paths.

kohya flattens a module path by replacing every ``.`` with ``_``, which loses where one name ends
and the next begins (``transformer_blocks`` or ``transformer.blocks``?). The path is rebuilt from
the pieces with the vocabulary of multi-word names the UNet and CLIP use, then checked against the
shape of every module path a LoRA may target; a name that is not one is reported, never guessed.

kohya trains SD1.x and SD2.x on the diffusers UNet (``lora_unet_down_blocks_0_...``) and SDXL on the
original (LDM) UNet (``lora_unet_input_blocks_4_1_...``); the LDM names are read through the
checkpoint converter's own UNet key map (:mod:`tensorsafe.converter.keymaps.unet`), with the block
layout of the family. Text encoders always use the Hugging Face CLIP names.
"""
from __future__ import annotations

import re

from tensorsafe.converter.keymaps.clip import with_text_model_prefix
from tensorsafe.converter.keymaps.rules import RuleSet
from tensorsafe.converter.keymaps.unet import Layout, Level, rules

UNET, TE, TE2 = "unet", "text_encoder", "text_encoder_2"
SD, SDXL = "sd", "sdxl"
KOHYA_PREFIXES = {"lora_unet_": UNET, "lora_te_": TE, "lora_te1_": TE, "lora_te2_": TE2}

# Names with an underscore inside, as pieces: the longest match wins when a flattened name is rebuilt.
COMPOUNDS = tuple(tuple(name.split("_")) for name in sorted({
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in",
    "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "linear_1", "linear_2", "add_embedding", "input_blocks", "middle_block", "output_blocks", "in_layers",
    "out_layers", "emb_layers", "skip_connection", "time_embed", "label_emb", "text_model", "self_attn", "q_proj",
    "k_proj", "v_proj", "out_proj", "layer_norm1", "layer_norm2", "final_layer_norm", "text_projection",
}, key=lambda n: -n.count("_")))

BLOCK = r"(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)"
UNET_MODULE = re.compile(
    r"conv_in|conv_out|time_embedding\.linear_[12]|add_embedding\.linear_[12]"
    rf"|{BLOCK}\.resnets\.\d+\.(?:conv1|conv2|time_emb_proj|conv_shortcut)"
    rf"|{BLOCK}\.attentions\.\d+\.(?:proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.(?:0\.proj|2)))"
    r"|(?:down_blocks|up_blocks)\.\d+\.(?:downsamplers|upsamplers)\.0\.conv")
TEXT_MODULE = re.compile(r"text_model\.encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])"
                         r"|text_projection")
LDM_HEADS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")

# The UNet block layouts of the families (docs/single-file.md §4): what the LDM names are read with.
SD_LAYOUT = Layout(down=(Level(2, True, True), Level(2, True, True), Level(2, True, True), Level(2, False, False)),
                   up=(Level(3, False, True), Level(3, True, True), Level(3, True, True), Level(3, True, False)),
                   mid_attention=True)
SDXL_LAYOUT = Layout(down=(Level(2, False, True), Level(2, True, True), Level(2, True, False)),
                     up=(Level(3, True, True), Level(3, True, True), Level(3, False, False)),
                     mid_attention=True)
_TABLES: dict[str, RuleSet] = {}


def ldm_table(family: str) -> RuleSet:
    if family not in _TABLES:
        _TABLES[family] = RuleSet(rules(SDXL_LAYOUT if family == SDXL else SD_LAYOUT))
    return _TABLES[family]


def rebuild_path(flat: str) -> str:
    """``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` -> the dotted module path."""
    pieces = flat.split("_")
    out, i = [], 0
    while i < len(pieces):
        for compound in COMPOUNDS:
            if tuple(pieces[i:i + len(compound)]) == compound:
                out.append("_".join(compound))
                i += len(compound)
                break
        else:
            out.append(pieces[i])
            i += 1
    return ".".join(out)


def is_ldm(path: str) -> bool:
    return path.startswith(LDM_HEADS)


def kohya_to_module(lora_name: str, family: str) -> tuple[str, str] | None:
    """``lora_unet_...`` / ``lora_te1_...`` -> (component, diffusers module path), or None if it is none."""
    prefix = next((p for p in KOHYA_PREFIXES if lora_name.startswith(p)), None)
    if prefix is None:
        return None
    component, path = KOHYA_PREFIXES[prefix], rebuild_path(lora_name[len(prefix):])
    if component != UNET:
        path = with_text_model_prefix(path)
        return (component, path) if TEXT_MODULE.fullmatch(path) else None
    if is_ldm(path):
        mapped = ldm_table(family).to_diff(path + ".weight")
        if mapped is None:
            return None
        path = mapped[: -len(".weight")]
    return (component, path) if UNET_MODULE.fullmatch(path) else None


def module_to_kohya(component: str, path: str, family: str) -> str:
    """(component, diffusers module path) -> the kohya name: LDM UNet names for SDXL, as kohya writes."""
    if component == UNET:
        if family == SDXL:
            ldm = ldm_table(family).to_orig(path + ".weight")
            if ldm is None:
                raise ValueError(f"no original-layout name for the UNet module {path!r}")
            path = ldm[: -len(".weight")]
        return "lora_unet_" + path.replace(".", "_")
    prefix = {TE: "lora_te1_" if family == SDXL else "lora_te_", TE2: "lora_te2_"}[component]
    return prefix + with_text_model_prefix(path).replace(".", "_")


def is_module(component: str, path: str) -> bool:
    return bool((UNET_MODULE if component == UNET else TEXT_MODULE).fullmatch(path))
