"""VAE key map (docs/single-file.md §5): ``first_stage_model.*`` <-> ``vae/``.

The decoder's up list is numbered the other way round in diffusers (``up.i`` is
``up_blocks.(M-1-i)``), with ``M`` read from the keys. The mid-block attention's q/k/v/proj_out are
1x1 convolutions ``[C, C, 1, 1]`` in the original and linears ``[C, C]`` in diffusers: a RESHAPE,
the same bytes under another shape.
"""
from __future__ import annotations

from dataclasses import dataclass

from tensorsafe.converter.keymaps.rules import PartPlan, PartTarget, Rule, RuleSet, Shapes, copy_or_unmapped, indices
from tensorsafe.converter.plan import Op

RESNET = (("nin_shortcut", "conv_shortcut"),)

ATTENTION = (
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
    # diffusers folders saved before ~0.14 spell them query/key/value/proj_attn: accepted on the way back
    ("q", "query"),
    ("k", "key"),
    ("v", "value"),
    ("proj_out", "proj_attn"),
)
LINEAR_WEIGHTS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight",
                  "query.weight", "key.weight", "value.weight", "proj_attn.weight")

FIXED = tuple(
    Rule(f"{side}.{o}.", f"{side}.{d}.")
    for side in ("encoder", "decoder")
    for o, d in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("norm_out", "conv_norm_out"))
) + (Rule("quant_conv.", "quant_conv."), Rule("post_quant_conv.", "post_quant_conv."))


@dataclass(frozen=True)
class Layout:
    encoder: tuple[tuple[int, bool], ...]
    """(resnets, has a downsampler) per encoder level, in order."""
    decoder: tuple[tuple[int, bool], ...]
    """(resnets, has an upsampler) per decoder level, in the diffusers order (``up_blocks.b``)."""


def rules(layout: Layout) -> list[Rule]:
    """The rename rules for one VAE layout; both directions read this list."""
    out = list(FIXED)
    for i, (n, sample) in enumerate(layout.encoder):
        out += [Rule(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.", RESNET) for j in range(n)]
        if sample:
            out.append(Rule(f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv."))
    m = len(layout.decoder)
    for b, (n, sample) in enumerate(layout.decoder):
        i = m - 1 - b
        out += [Rule(f"decoder.up.{i}.block.{j}.", f"decoder.up_blocks.{b}.resnets.{j}.", RESNET) for j in range(n)]
        if sample:
            out.append(Rule(f"decoder.up.{i}.upsample.conv.", f"decoder.up_blocks.{b}.upsamplers.0.conv."))
    for side in ("encoder", "decoder"):
        out.append(Rule(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", RESNET))
        out.append(Rule(f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", RESNET))
        out.append(Rule(f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0.", ATTENTION))
    return out


def _levels(keys, prefix: str, block: str, sampler: str) -> list[tuple[int, bool]]:
    found = indices(keys, prefix)
    return [(len(indices(found.get(i, ()), block)), any(r.startswith(sampler) for r in found.get(i, ())))
            for i in range(max(found, default=-1) + 1)]


def layout_from_orig(keys) -> Layout:
    keys = list(keys)
    decoder = _levels(keys, "decoder.up.", "block.", "upsample.")
    return Layout(tuple(_levels(keys, "encoder.down.", "block.", "downsample.")), tuple(reversed(decoder)))


def layout_from_diff(keys) -> Layout:
    keys = list(keys)
    return Layout(tuple(_levels(keys, "encoder.down_blocks.", "resnets.", "downsamplers.")),
                  tuple(_levels(keys, "decoder.up_blocks.", "resnets.", "upsamplers.")))


def _is_attention_linear(diff_key: str) -> bool:
    head, sep, tail = diff_key.partition(".mid_block.attentions.0.")
    return bool(sep) and tail in LINEAR_WEIGHTS


def to_diffusers(shapes: Shapes) -> PartPlan:
    plan = PartPlan()
    table = RuleSet(rules(layout_from_orig(shapes)))
    for src, dst, shape in copy_or_unmapped(shapes, table.to_diff, plan):
        if _is_attention_linear(dst) and len(shape) > 2:
            if any(d != 1 for d in shape[2:]):
                plan.unmapped.append(src)
                plan.notes.append(f"{src} has shape {shape}: a 1x1 convolution was expected")
                continue
            plan.targets.append(PartTarget(dst, (src,), Op.RESHAPE, shape[:2]))
        else:
            plan.targets.append(PartTarget(dst, (src,), Op.COPY, shape))
    return plan


def to_single_file(shapes: Shapes) -> PartPlan:
    plan = PartPlan()
    table = RuleSet(rules(layout_from_diff(shapes)))
    for src, dst, shape in copy_or_unmapped(shapes, table.to_orig, plan):
        if _is_attention_linear(src) and len(shape) == 2:
            plan.targets.append(PartTarget(dst, (src,), Op.RESHAPE, shape + (1, 1)))
        else:
            plan.targets.append(PartTarget(dst, (src,), Op.COPY, shape))
    return plan
