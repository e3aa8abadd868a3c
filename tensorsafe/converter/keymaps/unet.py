"""UNet key map (docs/single-file.md §4): ``model.diffusion_model.*`` <-> ``unet/``.

The block structure is read from the keys (which ``input_blocks.k`` hold a downsampler, which
``output_blocks.k`` an upsampler, whether ``.1`` holds attention) in either layout, never assumed.
Every tensor is a plain copy: the UNet differs between the layouts only in its names.
"""
from __future__ import annotations

from dataclasses import dataclass

from tensorsafe.converter.keymaps.rules import PartPlan, PartTarget, Rule, RuleSet, Shapes, copy_or_unmapped, indices
from tensorsafe.converter.plan import Op

RESNET = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),  # only where the channel count changes
)

FIXED = (
    Rule("time_embed.0.", "time_embedding.linear_1."),
    Rule("time_embed.2.", "time_embedding.linear_2."),
    Rule("input_blocks.0.0.", "conv_in."),
    Rule("out.0.", "conv_norm_out."),
    Rule("out.2.", "conv_out."),
    # SDXL's size/crop conditioning (addition_embed_type "text_time")
    Rule("label_emb.0.0.", "add_embedding.linear_1."),
    Rule("label_emb.0.2.", "add_embedding.linear_2."),
)


@dataclass(frozen=True)
class Level:
    resnets: int
    attention: bool
    resample: bool  # a downsampler (down path) or an upsampler (up path) ends this level


@dataclass(frozen=True)
class Layout:
    down: tuple[Level, ...]
    up: tuple[Level, ...]
    mid_attention: bool


def rules(layout: Layout) -> list[Rule]:
    """The rename rules for one UNet layout; both directions read this list."""
    out = list(FIXED)
    k = 1
    for b, level in enumerate(layout.down):
        for j in range(level.resnets):
            out.append(Rule(f"input_blocks.{k}.0.", f"down_blocks.{b}.resnets.{j}.", RESNET))
            if level.attention:
                out.append(Rule(f"input_blocks.{k}.1.", f"down_blocks.{b}.attentions.{j}."))
            k += 1
        if level.resample:
            out.append(Rule(f"input_blocks.{k}.0.op.", f"down_blocks.{b}.downsamplers.0.conv."))
            k += 1
    out.append(Rule("middle_block.0.", "mid_block.resnets.0.", RESNET))
    if layout.mid_attention:
        out.append(Rule("middle_block.1.", "mid_block.attentions.0."))
        out.append(Rule("middle_block.2.", "mid_block.resnets.1.", RESNET))
    else:
        out.append(Rule("middle_block.1.", "mid_block.resnets.1.", RESNET))
    k = 0
    for b, level in enumerate(layout.up):
        for j in range(level.resnets):
            out.append(Rule(f"output_blocks.{k}.0.", f"up_blocks.{b}.resnets.{j}.", RESNET))
            if level.attention:
                out.append(Rule(f"output_blocks.{k}.1.", f"up_blocks.{b}.attentions.{j}."))
            if level.resample and j == level.resnets - 1:
                slot = 2 if level.attention else 1
                out.append(Rule(f"output_blocks.{k}.{slot}.conv.", f"up_blocks.{b}.upsamplers.0.conv."))
            k += 1
    return out


def layout_from_orig(keys) -> Layout:
    """Read the levels from ``input_blocks``/``output_blocks`` indices."""
    keys = list(keys)
    down: list[Level] = []
    resnets, attention = 0, False
    blocks = indices(keys, "input_blocks.")
    for k in sorted(i for i in blocks if i >= 1):
        rest = blocks[k]
        if any(r.startswith("0.op.") for r in rest):
            down.append(Level(resnets, attention, True))
            resnets, attention = 0, False
        else:
            resnets += 1
            attention = attention or any(r.startswith("1.") for r in rest)
    if resnets:
        down.append(Level(resnets, attention, False))

    up: list[Level] = []
    resnets, attention = 0, False
    blocks = indices(keys, "output_blocks.")
    for k in sorted(blocks):
        rest = blocks[k]
        resnets += 1
        attention = attention or any(r.startswith("1.") and not r.startswith("1.conv.") for r in rest)
        if any(r.startswith(("1.conv.", "2.conv.")) for r in rest):
            up.append(Level(resnets, attention, True))
            resnets, attention = 0, False
    if resnets:
        up.append(Level(resnets, attention, False))
    mid = indices(keys, "middle_block.")
    mid_attention = any(r.startswith(("transformer_blocks.", "proj_in.")) for r in mid.get(1, ()))
    return Layout(tuple(down), tuple(up), mid_attention)


def layout_from_diff(keys) -> Layout:
    """Read the levels from ``down_blocks``/``up_blocks`` in the diffusers layout."""
    keys = list(keys)

    def levels(prefix: str, sampler: str) -> tuple[Level, ...]:
        out = []
        blocks = indices(keys, prefix)
        for b in range(max(blocks, default=-1) + 1):
            rest = blocks.get(b, set())
            n = len(indices((r for r in rest), "resnets."))
            out.append(Level(n, any(r.startswith("attentions.") for r in rest),
                             any(r.startswith(sampler) for r in rest)))
        return tuple(out)

    mid_attention = any(k.startswith("mid_block.attentions.0.") for k in keys)
    return Layout(levels("down_blocks.", "downsamplers."), levels("up_blocks.", "upsamplers."), mid_attention)


def to_diffusers(shapes: Shapes) -> PartPlan:
    plan = PartPlan()
    table = RuleSet(rules(layout_from_orig(shapes)))
    for src, dst, shape in copy_or_unmapped(shapes, table.to_diff, plan):
        plan.targets.append(PartTarget(dst, (src,), Op.COPY, shape))
    return plan


def to_single_file(shapes: Shapes) -> PartPlan:
    plan = PartPlan()
    table = RuleSet(rules(layout_from_diff(shapes)))
    for src, dst, shape in copy_or_unmapped(shapes, table.to_orig, plan):
        plan.targets.append(PartTarget(dst, (src,), Op.COPY, shape))
    return plan
