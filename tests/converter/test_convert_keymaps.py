"""Key maps, both directions, against tiny diffusers models and diffusers' own converter as oracle.

For each family a tiny random-weight diffusers folder (real block structure, small widths) is
mapped to the single-file layout with ``plan_to_single_file``; then

- round trip: ``plan_to_diffusers`` of that key set gives back exactly the folder's keys, shapes
  and (run through a torch stand-in for the writer) values;
- oracle: diffusers' ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
  ``convert_ldm_clip_checkpoint`` and ``convert_open_clip_checkpoint`` (written independently of
  us) turn the same single-file tensors into the same diffusers keys, shapes and values. Where
  diffusers does something we deliberately do not (docs/single-file.md §11), the test says so.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests import sd_tiny  # noqa: E402
from tensorsafe.converter import families, keymaps  # noqa: E402
from tensorsafe.converter.keymaps import openclip, unet, vae  # noqa: E402
from tensorsafe.converter.keymaps.rules import Rule, RuleSet  # noqa: E402
from tensorsafe.converter.plan import Op  # noqa: E402
from tensorsafe.errors import UsageError  # noqa: E402

CASES, CASE_IDS = sd_tiny.CASES, sd_tiny.CASE_IDS
folder_detection, to_single_file, orig_shapes = sd_tiny.folder_detection, sd_tiny.to_single_file, sd_tiny.orig_shapes


# ---- round trip ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family,in_channels", CASES, ids=CASE_IDS)
def test_round_trip_keys_shapes_and_values(family, in_channels):
    back, orig = to_single_file(family, in_channels)
    assert back.unmapped == [] and back.dropped == {}
    assert all(t.component == "" for t in back.targets)

    det = families.detect(orig_shapes(orig), {})
    assert (det.family, det.in_channels) == (family, in_channels)
    forward = keymaps.plan_to_diffusers(orig_shapes(orig), det)
    assert forward.unmapped == [] and forward.dropped == {}
    assert keymaps.shapes_by_component(forward) == sd_tiny.folder_shapes(family, in_channels)
    assert [(t.component, t.key) for t in forward.targets] == sorted((t.component, t.key) for t in forward.targets)

    again = sd_tiny.execute(forward, orig)
    folder = sd_tiny.folder_tensors(family, in_channels)
    assert len(again) == len(folder)
    for (component, key), value in again.items():
        assert torch.equal(value, folder[f"{component}/{key}"]), f"{component}/{key}"


def test_reverse_plan_sources_are_component_qualified():
    plan, _ = to_single_file("sdxl")
    te2 = {t.key: t for t in plan.targets if t.key.startswith("conditioner.embedders.1.")}
    qkv = te2["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert qkv.op is Op.CONCAT_ROWS
    assert qkv.sources == tuple(f"text_encoder_2/text_model.encoder.layers.0.self_attn.{x}_proj.weight"
                                for x in "qkv")
    assert qkv.shape == (3 * sd_tiny.TE2_WIDTH, sd_tiny.TE2_WIDTH)
    proj = te2["conditioner.embedders.1.model.text_projection"]
    assert proj.op is Op.TRANSPOSE and proj.shape == (sd_tiny.TE2_WIDTH, sd_tiny.TE2_PROJECTION)
    assert keymaps.split_source(proj.sources[0]) == ("text_encoder_2", "text_projection.weight")
    vq = next(t for t in plan.targets if t.key == "first_stage_model.decoder.mid.attn_1.q.weight")
    assert vq.op is Op.RESHAPE and vq.shape[2:] == (1, 1)


def test_real_single_file_names_for_sdxl():
    """Spot checks of the original names the tiny SDXL folder maps to (docs/single-file.md §4)."""
    keys = set(orig_shapes(to_single_file("sdxl")[1]))
    u = "model.diffusion_model."
    # down level 0 has no attention; its downsampler is input_blocks.3; level 1's attention is input_blocks.4.1
    assert u + "input_blocks.3.0.op.weight" in keys and u + "input_blocks.1.1.norm.weight" not in keys
    assert u + "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight" in keys
    # up level 0 has attention, so its upsampler is output_blocks.2.2.conv; the last level none
    assert u + "output_blocks.2.2.conv.weight" in keys and u + "output_blocks.8.1.norm.weight" not in keys
    assert u + "label_emb.0.0.weight" in keys and u + "middle_block.1.transformer_blocks.2.norm1.weight" in keys
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in keys  # = up_blocks.0 (reversed)
    assert "first_stage_model.decoder.up.0.block.2.conv1.weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert "conditioner.embedders.1.model.positional_embedding" in keys


def test_rules_are_one_table_read_both_ways():
    table = RuleSet(unet.rules(unet.layout_from_diff(sd_tiny.folder_shapes("sd1")["unet"])))
    for key in sd_tiny.folder_shapes("sd1")["unet"]:
        assert table.to_diff(table.to_orig(key)) == key
    with pytest.raises(ValueError, match="two rules"):
        RuleSet([Rule("a.", "b."), Rule("c.", "b.")])


def test_layout_is_read_from_keys_not_assumed():
    """Three resnets per down level and two levels: the index arithmetic follows the keys."""
    orig = {
        "input_blocks.0.0.weight": (8, 4, 3, 3),
        **{f"input_blocks.{k}.0.in_layers.0.weight": (8,) for k in (1, 2, 3, 5, 6, 7)},
        "input_blocks.4.0.op.weight": (8, 8, 3, 3),
        **{f"input_blocks.{k}.1.proj_in.weight": (8, 8) for k in (5, 6, 7)},
        **{f"output_blocks.{k}.0.in_layers.0.weight": (8,) for k in range(8)},
        **{f"output_blocks.{k}.1.proj_in.weight": (8, 8) for k in range(4)},
        "output_blocks.3.2.conv.weight": (8, 8, 3, 3),
        "middle_block.1.proj_in.weight": (8, 8),
    }
    layout = unet.layout_from_orig(orig)
    assert layout.down == (unet.Level(3, False, True), unet.Level(3, True, False))
    assert layout.up == (unet.Level(4, True, True), unet.Level(4, False, False))
    plan = unet.to_diffusers(orig)
    names = {t.sources[0]: t.key for t in plan.targets}
    assert plan.unmapped == []
    assert names["input_blocks.4.0.op.weight"] == "down_blocks.0.downsamplers.0.conv.weight"
    assert names["input_blocks.7.1.proj_in.weight"] == "down_blocks.1.attentions.2.proj_in.weight"
    assert names["output_blocks.3.2.conv.weight"] == "up_blocks.0.upsamplers.0.conv.weight"
    assert names["output_blocks.7.0.in_layers.0.weight"] == "up_blocks.1.resnets.3.norm1.weight"
    assert unet.layout_from_diff([t.key for t in plan.targets]) == layout


# ---- diffusers as oracle ---------------------------------------------------------------------------------

def diffusers_conversion(orig: dict, family: str, ms: dict, extract_ema: bool = False) -> dict:
    """diffusers 0.42's own single-file conversion functions: (component, key) -> tensor."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)

    out = {}
    parts = {
        "unet": convert_ldm_unet_checkpoint(orig, dict(ms["unet"].config), extract_ema=extract_ema),
        "vae": convert_ldm_vae_checkpoint(orig, dict(ms["vae"].config)),
    }
    if family in ("sd1", "sdxl"):
        parts["text_encoder"] = convert_ldm_clip_checkpoint(orig)
    if family == "sd2":
        parts["text_encoder"] = convert_open_clip_checkpoint(ms["text_encoder"], orig, "cond_stage_model.model.")
    if family == "sdxl":
        parts["text_encoder_2"] = convert_open_clip_checkpoint(ms["text_encoder_2"], orig,
                                                               "conditioner.embedders.1.model.")
    if family == "sdxl-refiner":
        parts["text_encoder_2"] = convert_open_clip_checkpoint(ms["text_encoder_2"], orig,
                                                               "conditioner.embedders.0.model.")
    for component, sd in parts.items():
        out.update({(component, k): v for k, v in sd.items()})
    return out


def assert_same(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert ours[k].shape == theirs[k].shape, k
        assert torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("family,in_channels", CASES, ids=CASE_IDS)
def test_diffusers_converter_agrees(family, in_channels):
    _, orig = to_single_file(family, in_channels)
    det = families.detect(orig_shapes(orig), {})
    ours = sd_tiny.execute(keymaps.plan_to_diffusers(orig_shapes(orig), det), orig)
    assert_same(ours, diffusers_conversion(orig, family, sd_tiny.models(family, in_channels)))


@pytest.mark.parametrize("ema", ["auto", "yes", "no"])
def test_ema_choice_matches_diffusers_extract_ema(ema):
    _, orig = to_single_file("sd1")
    gen = torch.Generator().manual_seed(1)
    for key in [k for k in orig if k.startswith("model.diffusion_model.")]:
        orig[families.ema_key(key)] = torch.randn(orig[key].shape, generator=gen)
    orig["model_ema.decay"] = torch.tensor(0.9999)
    orig["model_ema.num_updates"] = torch.tensor(10, dtype=torch.int32)
    det = families.detect(orig_shapes(orig), {})
    assert det.ema.available and det.ema.keys > 100
    plan = keymaps.plan_to_diffusers(orig_shapes(orig), det, ema=ema)
    assert plan.unmapped == []
    used = ema != "no"
    assert any(("used the EMA copy" if used else "non-EMA") in n for n in plan.notes)
    assert plan.dropped["model_ema.decay"].startswith("EMA bookkeeping")
    dropped_unet = [k for k in plan.dropped if k.startswith("model.diffusion_model.")]
    dropped_ema = [k for k in plan.dropped if k.startswith("model_ema.diffusion_model")]
    assert (len(dropped_unet) > 0, len(dropped_ema) > 0) == (used, not used)
    ours = sd_tiny.execute(plan, orig)
    theirs = diffusers_conversion(orig, "sd1", sd_tiny.models("sd1"), extract_ema=used)
    assert_same({k: v for k, v in ours.items() if k[0] == "unet"}, {k: v for k, v in theirs.items() if k[0] == "unet"})


def test_ema_yes_without_ema_is_a_usage_error():
    _, orig = to_single_file("sd1")
    with pytest.raises(UsageError, match="ema='yes'"):
        keymaps.plan_to_diffusers(orig_shapes(orig), families.detect(orig_shapes(orig), {}), ema="yes")


def test_incomplete_ema_falls_back_with_a_note():
    _, orig = to_single_file("sd1")
    shapes = orig_shapes(orig)
    first = sorted(k for k in shapes if k.startswith("model.diffusion_model."))[:1]
    shapes.update({families.ema_key(k): s for k, s in shapes.items() if k.startswith("model.diffusion_model.")
                   and k not in first})
    det = families.detect(shapes, {})
    assert not det.ema.available and det.ema.missing == first[0]
    plan = keymaps.plan_to_diffusers(shapes, det)
    assert any("incomplete" in n for n in plan.notes)
    assert all(v == keymaps.EMA_UNUSED_REASON for k, v in plan.dropped.items() if k.startswith("model_ema."))


def test_position_ids_dropped_where_diffusers_keeps_them():
    """diffusers copies CLIP's position_ids buffer; we drop it with a reason (docs/single-file.md §1, §7.1):
    it is the constant arange(77), not a weight, transformers does not save it, and merges often
    store it as a float with rounding errors."""
    _, orig = to_single_file("sd1")
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    orig[key] = torch.arange(77).unsqueeze(0)
    plan = keymaps.plan_to_diffusers(orig_shapes(orig), families.detect(orig_shapes(orig), {}))
    assert "position_ids" in plan.dropped[key]
    theirs = diffusers_conversion(orig, "sd1", sd_tiny.models("sd1"))
    assert ("text_encoder", "text_model.embeddings.position_ids") in theirs
    ours = sd_tiny.execute(plan, orig)
    del theirs[("text_encoder", "text_model.embeddings.position_ids")]
    assert_same(ours, theirs)


def test_schedule_buffers_markers_and_logit_scale_are_dropped_with_reasons():
    _, orig = to_single_file("sd2")
    shapes = orig_shapes(orig)
    shapes.update({"betas": (1000,), "alphas_cumprod": (1000,), "posterior_mean_coef1": (1000,), "logvar": (1000,),
                   "cond_stage_model.model.logit_scale": (), "cond_stage_model.model.text_projection": (32, 32),
                   "ztsnr": (0,), "embedding_manager.x": (3,)})
    plan = keymaps.plan_to_diffusers(shapes, families.detect(shapes, {}))
    assert plan.dropped["betas"].startswith("diffusion schedule buffer")
    assert "logit_scale" in plan.dropped["cond_stage_model.model.logit_scale"]
    assert "penultimate" in plan.dropped["cond_stage_model.model.text_projection"]
    assert "rescale_betas_zero_snr" in plan.dropped["ztsnr"]
    assert plan.unmapped == ["embedding_manager.x"]  # unknown keys are never dropped silently


def _openclip_shapes(prefix: str, layers: int, h: int, with_projection: bool) -> dict[str, tuple[int, ...]]:
    shapes = {prefix + "token_embedding.weight": (100, h), prefix + "positional_embedding": (77, h),
              prefix + "ln_final.weight": (h,), prefix + "ln_final.bias": (h,), prefix + "logit_scale": ()}
    if with_projection:
        shapes[prefix + "text_projection"] = (h, h)
    for n in range(layers):
        p = f"{prefix}transformer.resblocks.{n}."
        shapes.update({p + "attn.in_proj_weight": (3 * h, h), p + "attn.in_proj_bias": (3 * h,),
                       p + "attn.out_proj.weight": (h, h), p + "attn.out_proj.bias": (h,),
                       p + "ln_1.weight": (h,), p + "ln_1.bias": (h,), p + "ln_2.weight": (h,), p + "ln_2.bias": (h,),
                       p + "mlp.c_fc.weight": (4 * h, h), p + "mlp.c_fc.bias": (4 * h,),
                       p + "mlp.c_proj.weight": (h, 4 * h), p + "mlp.c_proj.bias": (h,)})
    return shapes


def test_sd2_original_24_block_tower_keeps_23_like_diffusers():
    from types import SimpleNamespace

    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    prefix = "cond_stage_model.model."
    shapes = _openclip_shapes(prefix, 24, 8, True)
    plan = openclip.to_diffusers({k[len(prefix):]: s for k, s in shapes.items()}, keep_projection=False,
                                 max_layers=23)
    assert plan.unmapped == []
    assert sorted(k for k in plan.dropped if "resblocks.23." in k) == sorted(
        k[len(prefix):] for k in shapes if "resblocks.23." in k)
    assert set(plan.dropped) >= {"text_projection", "logit_scale"}
    assert any("kept 23 of 24" in n for n in plan.notes)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    theirs = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=8)), meta, prefix)
    assert {t.key: t.shape for t in plan.targets} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_openclip_rows_and_transpose_ops():
    prefix = "conditioner.embedders.1.model."
    shapes = _openclip_shapes(prefix, 2, 8, True)
    plan = openclip.to_diffusers({k[len(prefix):]: s for k, s in shapes.items()}, keep_projection=True)
    by_key = {t.key: t for t in plan.targets}
    k = by_key["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    assert (k.op, k.rows, k.shape) == (Op.ROWS, (8, 16), (8, 8))
    assert k.sources == ("transformer.resblocks.1.attn.in_proj_weight",)
    assert by_key["text_model.encoder.layers.1.self_attn.v_proj.bias"].rows == (16, 24)
    assert by_key["text_projection.weight"].op is Op.TRANSPOSE


def test_reverse_accepts_transformers5_spelling_and_old_vae_names():
    sbc = {c: dict(s) for c, s in sd_tiny.folder_shapes("sdxl").items()}
    det = folder_detection("sdxl")
    expected = {t.key: (t.shape, t.op) for t in keymaps.plan_to_single_file(sbc, det).targets}
    # transformers >= 5.6 saves CLIPTextModel without text_model.
    sbc["text_encoder"] = {k.removeprefix("text_model."): s for k, s in sbc["text_encoder"].items()}
    # diffusers folders before ~0.14 name the VAE attention query/key/value/proj_attn
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, s in sbc["vae"].items():
        for new, legacy in old.items():
            if ".attentions.0." + new + "." in k:
                k = k.replace(".attentions.0." + new + ".", ".attentions.0." + legacy + ".")
        renamed[k] = s
    sbc["vae"] = renamed
    plan = keymaps.plan_to_single_file(sbc, det)
    assert plan.unmapped == []
    assert {t.key: (t.shape, t.op) for t in plan.targets} == expected


def test_vae_attention_reshape_both_ways():
    layout = vae.Layout(((1, False),), ((1, False),))
    table = RuleSet(vae.rules(layout))
    assert table.to_diff("encoder.mid.attn_1.proj_out.weight") == "encoder.mid_block.attentions.0.to_out.0.weight"
    assert table.to_orig("decoder.mid_block.attentions.0.proj_attn.bias") == "decoder.mid.attn_1.proj_out.bias"
    plan = vae.to_diffusers({"encoder.mid.attn_1.q.weight": (8, 8, 1, 1), "encoder.mid.attn_1.q.bias": (8,)})
    assert [(t.op, t.shape) for t in plan.targets] == [(Op.COPY, (8,)), (Op.RESHAPE, (8, 8))]
    plan = vae.to_single_file({"encoder.mid_block.attentions.0.to_q.weight": (8, 8)})
    assert [(t.key, t.op, t.shape) for t in plan.targets] == [("encoder.mid.attn_1.q.weight", Op.RESHAPE, (8, 8, 1, 1))]


def test_comfyui_unet_only_file_without_prefix():
    _, orig = to_single_file("sdxl")
    u = "model.diffusion_model."
    shapes = {k[len(u):]: tuple(v.shape) for k, v in orig.items() if k.startswith(u)}
    det = families.detect(shapes, {}, model_type="sdxl")
    assert det.unet_prefix == "" and det.components == ("unet",)
    plan = keymaps.plan_to_diffusers(shapes, det)
    assert plan.unmapped == [] and plan.components() == ["unet"]
    assert keymaps.shapes_by_component(plan)["unet"] == sd_tiny.folder_shapes("sdxl")["unet"]
    assert plan.targets[0].sources[0] in shapes


def test_markers_for_v_prediction_sdxl():
    det = folder_detection("sdxl")
    assert keymaps.marker_keys(det) == []
    det.prediction_type, det.rescale_betas_zero_snr = "v_prediction", True
    assert keymaps.marker_keys(det) == ["v_pred", "ztsnr"]
    plan = keymaps.plan_to_single_file(sd_tiny.folder_shapes("sdxl"), det)
    assert any("'v_pred'" in n for n in plan.notes) and any("'ztsnr'" in n for n in plan.notes)


@pytest.mark.parametrize("form", ["whole checkpoint", "vae. prefix", "no prefix + loss", "diffusers layout"])
def test_separate_vae_file(form):
    _, orig = to_single_file("sd1")
    shapes = orig_shapes(orig)
    p = "first_stage_model."
    vae_only = {k[len(p):]: s for k, s in shapes.items() if k.startswith(p)}
    given = {
        "whole checkpoint": shapes,
        "vae. prefix": {"vae." + k: s for k, s in vae_only.items()},
        "no prefix + loss": {**vae_only, "loss.logvar": (), "loss.discriminator.main.0.weight": (64, 3, 4, 4)},
        "diffusers layout": sd_tiny.folder_shapes("sd1")["vae"],
    }[form]
    plan = keymaps.plan_vae(given)
    assert plan.unmapped == []
    assert keymaps.shapes_by_component(plan) == {"vae": sd_tiny.folder_shapes("sd1")["vae"]}
    assert all(s in given for t in plan.targets for s in t.sources)
    if form == "whole checkpoint":
        assert plan.dropped["model.diffusion_model.out.2.weight"].startswith("not a VAE tensor")
    if form == "no prefix + loss":
        assert set(plan.dropped) == {"loss.logvar", "loss.discriminator.main.0.weight"}
