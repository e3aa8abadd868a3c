"""Textual-inversion embeddings: which spelling, how many vectors, for which text encoder.

Four layouts are in use (diffusers ``loaders/textual_inversion.py`` reads the same ones):
A1111 ``.pt`` (``string_to_param`` -> ``{"*": [n, width]}`` with ``name`` and ``step`` beside it),
A1111 ``.safetensors`` (``emb_params`` ``[n, width]``), diffusers ``learned_embeds`` (one tensor named
by its token, ``[width]`` or ``[n, width]``) and SDXL (``clip_l`` ``[n, 768]`` with ``clip_g``
``[n, 1280]``). The width names the text encoder: 768 CLIP ViT-L (SD1), 1024 OpenCLIP ViT-H (SD2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

Shape = tuple[int, ...]
A1111_PREFIX = "string_to_param."
TOKEN_WIDTHS = (768, 1024, 1280, 4096)   # text encoder widths a lone token vector may have
WIDTH_FAMILY = {768: ("sd1", "CLIP ViT-L (768): SD1"), 1024: ("sd2", "OpenCLIP ViT-H (1024): SD2"),
                1280: ("sdxl", "OpenCLIP ViT-bigG (1280): SDXL")}


@dataclass(frozen=True)
class EmbeddingFacts:
    spelling: str                   # a1111-pt, a1111-safetensors, diffusers, sdxl
    vectors: int                    # embedding vectors per prompt token
    widths: dict[str, int]          # tensor key -> width
    token: str | None               # the token or name the file gives
    family: str | None
    evidence: tuple[str, ...]
    step: int | None = None
    trained_on: str | None = None   # A1111 sd_checkpoint_name

    def to_dict(self) -> dict:
        return {"spelling": self.spelling, "vectors": self.vectors, "widths": self.widths, "token": self.token,
                "family": self.family, "step": self.step, "trained_on": self.trained_on}


def _vectors(shape: Shape) -> int:
    return shape[0] if len(shape) == 2 else 1


def _plain(extras: Mapping[str, object], key: str) -> str | int | None:
    value = extras.get(key)
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def embedding_facts(shapes: Mapping[str, Shape], extras: Mapping[str, object] | None = None,
                    metadata: Mapping[str, str] | None = None) -> EmbeddingFacts | None:
    """The textual inversion in ``shapes``, or None when the file is not one."""
    extras = {**(metadata or {}), **(extras or {})}
    if not shapes or any(len(s) not in (1, 2) for s in shapes.values()):
        return None
    keys = sorted(shapes)
    a1111 = [k for k in keys if k.startswith(A1111_PREFIX)]
    if a1111 and len(a1111) == len(keys):
        return _single(shapes, a1111[0], "a1111-pt", f"key {a1111[0]} -> A1111 textual inversion (string_to_param)",
                       _plain(extras, "name"), extras)
    if keys == ["emb_params"]:
        return _single(shapes, "emb_params", "a1111-safetensors", "key emb_params -> A1111 textual inversion "
                       "(safetensors)", _plain(extras, "name"), extras)
    if set(keys) in ({"clip_l", "clip_g"}, {"clip_l", "clip_g", "t5"}):
        n, g = _vectors(shapes["clip_l"]), _vectors(shapes["clip_g"])
        widths = {k: shapes[k][-1] for k in keys}
        family = "sdxl" if "t5" not in keys else "sd3"
        ev = (f"keys clip_l {list(shapes['clip_l'])} and clip_g {list(shapes['clip_g'])} -> an embedding for "
              f"both SDXL text encoders", )
        return EmbeddingFacts("sdxl", max(n, g), widths, None, family, ev)
    if len(keys) == 1 and "." not in keys[0] and (shapes[keys[0]][-1] in TOKEN_WIDTHS or keys[0].startswith("<")):
        return _single(shapes, keys[0], "diffusers", f"one tensor named {keys[0]!r} -> diffusers learned_embeds "
                       f"(the key is the token)", keys[0], extras)
    return None


def _single(shapes: Mapping[str, Shape], key: str, spelling: str, why: str, token: object,
            extras: Mapping[str, object]) -> EmbeddingFacts:
    shape = shapes[key]
    width = shape[-1]
    family, label = WIDTH_FAMILY.get(width, (None, f"width {width}: no known text encoder"))
    if family == "sdxl":
        family, label = None, "width 1280 alone: OpenCLIP ViT-bigG (SDXL's second encoder, without clip_l)"
    evidence = (why, f"key {key} has shape {list(shape)} -> {_vectors(shape)} vectors of {label}")
    step = _plain(extras, "step")
    trained_on = _plain(extras, "sd_checkpoint_name")
    return EmbeddingFacts(spelling, _vectors(shape), {key: width}, None if token is None else str(token), family,
                          evidence, int(step) if isinstance(step, int) or (isinstance(step, str) and step.isdigit())
                          else None, None if trained_on is None else str(trained_on))
