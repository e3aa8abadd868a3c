"""Which UNet a LoRA was trained for (SD1.x/SD2.x or SDXL), from the module names it targets alone.

A minimal key-pattern check for the adapter converter (the general identification of files lives
elsewhere): it decides how LDM names are read (their block numbering differs by family) and how
kohya names are written (SDXL in LDM names, SD1.x/SD2.x in diffusers names), and says why.
"""
from __future__ import annotations

import re

from tensorsafe.converter.adapters.lora_names import SD, SDXL, TE2
from tensorsafe.errors import UsageError, option

MODEL_TYPES = {"sd1": SD, "sd2": SD, "sdxl": SDXL}
TITLES = {SD: "SD1.x/SD2.x", SDXL: "SDXL"}

# (pattern on the dotted name, family, why): the first pattern that any name matches decides
DIFFUSERS_SIGNS = (
    (re.compile(r"down_blocks\.0\.attentions\."), SD, "attention in the first down block (SDXL has none there)"),
    (re.compile(r"(down|up)_blocks\.3\."), SD, "a fourth down/up block (SDXL has three)"),
    (re.compile(r"transformer_blocks\.[1-9]"), SDXL, "more than one transformer block per attention"),
    (re.compile(r"up_blocks\.0\.attentions\."), SDXL, "attention in the first up block (SD1.x/SD2.x has none there)"),
    (re.compile(r"add_embedding\."), SDXL, "the size-conditioning embedding add_embedding"),
)
LDM_SIGNS = (
    (re.compile(r"input_blocks[._][12][._]1[._]"), SD, "attention at input_blocks 1-2 (SDXL has none there)"),
    (re.compile(r"(input|output)_blocks[._](9|1[01])[._]"), SD, "input/output blocks past 8 (SDXL has 9)"),
    (re.compile(r"transformer_blocks[._][1-9]"), SDXL, "more than one transformer block per attention"),
    (re.compile(r"output_blocks[._][0-2][._]1[._]"), SDXL, "attention at output_blocks 0-2"),
    (re.compile(r"label_emb[._]"), SDXL, "the size-conditioning embedding label_emb"),
)


def lora_family(unet_names: list[str], components: set[str], *, ldm: bool,
                model_type: str | None = None) -> tuple[str, str]:
    """(family, why) from the UNet names (dotted diffusers paths, or kohya's flat LDM names when ``ldm``)."""
    if model_type is not None:
        try:
            return MODEL_TYPES[model_type.lower()], f"{option('model_type', model_type)} given"
        except KeyError:
            raise UsageError(f"{option('model_type', None)} for a LoRA must be one of sd1, sd2, sdxl, "
                             f"not {model_type!r}") from None
    if TE2 in components:
        return SDXL, "it has weights for a second text encoder (SDXL's OpenCLIP bigG)"
    for pattern, family, why in LDM_SIGNS if ldm else DIFFUSERS_SIGNS:
        hit = next((n for n in unet_names if pattern.search(n)), None)
        if hit is not None:
            return family, f"{why}: {hit}"
    if ldm:
        return SDXL, "UNet in original (LDM) names, which kohya writes for SDXL; nothing contradicts it " \
                     f"({option('model_type', 'sd1')} if it is not)"
    return SD, f"nothing SDXL-specific in its names ({option('model_type', 'sdxl')} if it is SDXL)"
