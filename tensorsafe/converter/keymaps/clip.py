"""CLIP ViT-L text encoder (docs/single-file.md §7.1): SD1 ``cond_stage_model.transformer.*`` and SDXL
``conditioner.embedders.0.transformer.*`` <-> ``text_encoder/``.

The single file already holds the Hugging Face layout, so the map is the prefix alone. We write
``text_model.*`` names (what transformers 4.x and every hub repo use; transformers 5 loads them
too). On the way back both spellings are accepted, because transformers >= 5.6 saves
``CLIPTextModel`` without the ``text_model.`` prefix.
"""
from __future__ import annotations

from tensorsafe.converter.keymaps.rules import PartPlan, PartTarget, Rule, RuleSet, Shapes, copy_or_unmapped
from tensorsafe.converter.plan import Op

POSITION_IDS = "text_model.embeddings.position_ids"
POSITION_IDS_REASON = ("CLIP position_ids: the constant buffer arange(77), rebuilt by transformers "
                       "(not a weight; often stored with a wrong dtype by merges)")

RULES = [Rule(f"text_model.{name}.", f"text_model.{name}.")
         for name in ("embeddings.token_embedding", "embeddings.position_embedding", "encoder.layers",
                      "final_layer_norm")]


def with_text_model_prefix(key: str) -> str:
    """transformers >= 5.6 spelling -> the ``text_model.`` spelling."""
    return key if key.startswith("text_model.") or key.startswith("text_projection") else "text_model." + key


def to_diffusers(shapes: Shapes) -> PartPlan:
    return _convert(shapes, forward=True)


def to_single_file(shapes: Shapes) -> PartPlan:
    return _convert(shapes, forward=False)


def _convert(shapes: Shapes, forward: bool) -> PartPlan:
    plan = PartPlan()
    table = RuleSet(RULES)
    translate = table.to_diff if forward else table.to_orig
    for key in shapes:
        if with_text_model_prefix(key) == POSITION_IDS:
            plan.dropped[key] = POSITION_IDS_REASON
    for src, dst, shape in copy_or_unmapped(shapes, lambda k: translate(with_text_model_prefix(k)), plan):
        plan.targets.append(PartTarget(dst, (src,), Op.COPY, shape))
    return plan
