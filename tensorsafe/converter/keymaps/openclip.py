"""OpenCLIP text encoders (docs/single-file.md §7.2, §7.3): SD2 ViT-H ``cond_stage_model.model.*``, SDXL
bigG ``conditioner.embedders.1.model.*`` (refiner: ``conditioner.embedders.0.model.*``) <->
``text_encoder/`` or ``text_encoder_2/``.

Two things are more than a rename: the fused attention input ``attn.in_proj_weight`` ``[3H, H]``
becomes q, k, v (row ranges ``[0, H)``, ``[H, 2H)``, ``[2H, 3H)``: contiguous bytes, op ROWS; back:
CONCAT_ROWS), and ``text_projection`` ``[H, P]`` (used as ``x @ P``) becomes the linear weight
``text_projection.weight`` ``[P, H]``, its transpose.
"""
from __future__ import annotations

from tensorsafe.converter.keymaps.clip import with_text_model_prefix
from tensorsafe.converter.keymaps.rules import (PartPlan, PartTarget, Rule, RuleSet, Shapes, copy_or_unmapped,
                                              indices)
from tensorsafe.converter.plan import Op

LAYER = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)
QKV = (
    ("attn.in_proj_weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    ("attn.in_proj_bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
)
FIXED = (
    Rule("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    Rule("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    Rule("ln_final.", "text_model.final_layer_norm."),
)
PROJECTION = ("text_projection", "text_projection.weight")

DROP = {
    "logit_scale": "OpenCLIP logit_scale: the image-text contrastive temperature, unused by the text encoder",
    "attn_mask": "OpenCLIP causal attention mask buffer, rebuilt by the model",
}
SD2_PROJECTION_REASON = ("SD2 conditions on the penultimate hidden states, never the projection; diffusers' "
                         "SD2 text encoder is a CLIPTextModel without text_projection")
SD2_LAST_LAYER_REASON = ("SD2 uses the penultimate layer of the 24-block OpenCLIP tower; the 24th block "
                         "(resblocks.23) is never used and diffusers keeps 23 (num_hidden_layers 23)")
POSITION_IDS_REASON = "CLIP position_ids: the constant buffer arange(77), rebuilt by transformers"


def rules(layers: int) -> list[Rule]:
    return list(FIXED) + [Rule(f"transformer.resblocks.{n}.", f"text_model.encoder.layers.{n}.", LAYER)
                          for n in range(layers)]


def _qkv_names(layers: int) -> list[tuple[str, tuple[str, str, str]]]:
    return [(f"transformer.resblocks.{n}.{fused}", tuple(f"text_model.encoder.layers.{n}.{s}" for s in split))
            for n in range(layers) for fused, split in QKV]


def to_diffusers(shapes: Shapes, *, keep_projection: bool, max_layers: int | None = None) -> PartPlan:
    """``keep_projection``: SDXL's CLIPTextModelWithProjection; ``max_layers``: SD2 keeps 23 blocks."""
    plan = PartPlan()
    blocks = indices(shapes, "transformer.resblocks.")
    layers = max(blocks, default=-1) + 1
    kept = layers if max_layers is None else min(layers, max_layers)
    for key in shapes:
        if key in DROP:
            plan.dropped[key] = DROP[key]
        elif key == PROJECTION[0] and not keep_projection:
            plan.dropped[key] = SD2_PROJECTION_REASON
    for n in range(kept, layers):
        for rest in sorted(blocks.get(n, ())):
            plan.dropped[f"transformer.resblocks.{n}.{rest}"] = SD2_LAST_LAYER_REASON
    if kept < layers:
        plan.notes.append(f"text encoder: kept {kept} of {layers} OpenCLIP blocks (SD2 rule)")
    consumed: set[str] = set()
    for fused, split in _qkv_names(kept):
        shape = shapes.get(fused)
        if shape and shape[0] % 3 == 0:
            h = shape[0] // 3
            consumed.add(fused)
            for i, name in enumerate(split):
                plan.targets.append(PartTarget(name, (fused,), Op.ROWS, (h,) + shape[1:], (i * h, (i + 1) * h)))
    shape = shapes.get(PROJECTION[0])
    if keep_projection and shape is not None and len(shape) == 2:
        consumed.add(PROJECTION[0])
        plan.targets.append(PartTarget(PROJECTION[1], (PROJECTION[0],), Op.TRANSPOSE, (shape[1], shape[0])))
    table = RuleSet(rules(kept))
    rest = {k: v for k, v in shapes.items() if k not in consumed}
    for src, dst, shape in copy_or_unmapped(rest, table.to_diff, plan):
        plan.targets.append(PartTarget(dst, (src,), Op.COPY, shape))
    return plan


def to_single_file(shapes: Shapes, *, keep_projection: bool) -> PartPlan:
    """Accepts both spellings of the folder (with or without transformers' ``text_model.`` prefix)."""
    plan = PartPlan()
    spelled = {with_text_model_prefix(k): k for k in shapes}  # canonical name -> name in the folder
    canon = {c: shapes[k] for c, k in spelled.items()}
    layers = max(indices(canon, "text_model.encoder.layers."), default=-1) + 1
    for c, k in spelled.items():
        if c == "text_model.embeddings.position_ids":
            plan.dropped[k] = POSITION_IDS_REASON
    consumed: set[str] = set()
    for fused, split in _qkv_names(layers):
        if all(s in canon for s in split):
            consumed.update(split)
            rows = sum(canon[s][0] for s in split)
            plan.targets.append(PartTarget(fused, tuple(spelled[s] for s in split), Op.CONCAT_ROWS,
                                           (rows,) + canon[split[0]][1:]))
    shape = canon.get(PROJECTION[1])
    if shape is not None:
        consumed.add(PROJECTION[1])
        if keep_projection:
            plan.targets.append(PartTarget(PROJECTION[0], (PROJECTION[1],), Op.TRANSPOSE, (shape[1], shape[0])))
        else:
            plan.dropped[PROJECTION[1]] = SD2_PROJECTION_REASON
    table = RuleSet(rules(layers))
    rest = {c: v for c, v in canon.items() if c not in consumed and spelled[c] not in plan.dropped}
    for src, dst, shape in copy_or_unmapped(rest, table.to_orig, plan):
        plan.targets.append(PartTarget(dst, (spelled[src],), Op.COPY, shape))
    plan.unmapped = [spelled[c] for c in plan.unmapped]
    return plan
