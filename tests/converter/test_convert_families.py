"""Family detection: tiny single files of every family, edge cases, and refused families."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests import sd_tiny  # noqa: E402
from tests.sd_tiny import CASE_IDS, CASES, folder_detection, orig_shapes, to_single_file  # noqa: E402
from tensorsafe.converter import families  # noqa: E402
from tensorsafe.converter.families import detect  # noqa: E402
from tensorsafe.errors import TensorsafeError, UnsupportedModelError, UsageError  # noqa: E402

U = "model.diffusion_model."
VARIANTS = {4: "text2img", 9: "inpaint", 5: "depth", 8: "pix2pix"}
PIPELINES = {("sd1", 4): "StableDiffusionPipeline", ("sd2", 4): "StableDiffusionPipeline",
             ("sdxl", 4): "StableDiffusionXLPipeline", ("sdxl-refiner", 4): "StableDiffusionXLImg2ImgPipeline",
             ("sd1", 9): "StableDiffusionInpaintPipeline", ("sd2", 5): "StableDiffusionDepth2ImgPipeline",
             ("sd1", 8): "StableDiffusionInstructPix2PixPipeline", ("sdxl", 9): "StableDiffusionXLInpaintPipeline"}
COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
              "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
              "sdxl-refiner": ("unet", "vae", "text_encoder_2")}


def shapes(family: str, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    return orig_shapes(to_single_file(family, in_channels)[1])


def unet_only(family: str) -> dict[str, tuple[int, ...]]:
    return {k: s for k, s in shapes(family).items() if k.startswith(U)}


@pytest.mark.parametrize("family,in_channels", CASES, ids=CASE_IDS)
def test_tiny_families_and_variants(family, in_channels):
    det = detect(shapes(family, in_channels), {})
    assert (det.family, det.variant, det.in_channels) == (family, VARIANTS[in_channels], in_channels)
    assert det.components == COMPONENTS[family]
    assert det.unet_prefix == U and det.vae_prefix == "first_stage_model."
    assert not det.ema.keys
    assert any(f"{in_channels} input channels" in line and line.startswith("key ") for line in det.evidence)
    assert det.pipeline == PIPELINES[(family, in_channels)]


def test_prediction_defaults_per_family():
    sd1, sdxl, refiner = detect(shapes("sd1"), {}), detect(shapes("sdxl"), {}), detect(shapes("sdxl-refiner"), {})
    assert (sd1.prediction_type, sd1.sample_size) == ("epsilon", 64)
    assert (sdxl.prediction_type, sdxl.sample_size, refiner.sample_size) == ("epsilon", 128, 128)
    assert "--prediction-type" in sd1.prediction_reason


@pytest.mark.parametrize("extras,sidecar,flag,expected", [
    ({}, None, None, ("v_prediction", 96, True)),                      # safetensors: no global_step
    ({"global_step": 875000}, None, None, ("epsilon", 64, False)),      # the 512-base model
    ({"global_step": 140000}, None, None, ("v_prediction", 96, True)),
    ({}, {"model": {"params": {"parameterization": "v"}}}, None, ("v_prediction", 96, True)),
    ({}, {"model": {"params": {"linear_start": 0.00085}}}, None, ("epsilon", 64, False)),
    ({"global_step": 875000}, None, "v_prediction", ("v_prediction", 96, True)),
    ({}, None, "epsilon", ("epsilon", 64, False)),
])
def test_sd2_prediction_type_rules(extras, sidecar, flag, expected):
    det = detect(shapes("sd2"), extras, sidecar=sidecar, prediction_type=flag)
    assert (det.prediction_type, det.sample_size, det.upcast_attention) == expected
    if flag:
        assert det.prediction_reason == "--prediction-type"
    elif not extras and sidecar is None:
        assert any("--prediction-type epsilon" in a for a in det.assumptions)  # says what was assumed


def test_sd2_inpaint_and_depth_are_epsilon_512():
    det = detect(shapes("sd2", 5), {})
    assert (det.variant, det.prediction_type, det.sample_size) == ("depth", "epsilon", 64)


def test_sdxl_markers():
    s = shapes("sdxl")
    det = detect({**s, "v_pred": (0,), "ztsnr": (0,)}, {})
    assert det.prediction_type == "v_prediction" and det.rescale_betas_zero_snr
    assert any(line.startswith("key v_pred") for line in det.evidence)
    assert detect({**s, "v_pred": (0,)}, {}, prediction_type="epsilon").prediction_type == "epsilon"


def test_unet_only_files():
    det = detect(unet_only("sd1"), {})
    assert (det.family, det.components) == ("sd1", ("unet",))
    assert any("vae" in a and "not in the file" in a for a in det.assumptions)
    assert detect(unet_only("sd2"), {}).family == "sd2"  # linear proj_in
    with pytest.raises(UsageError, match="model_type=FAMILY"):
        detect(unet_only("sdxl"), {})  # tiny widths: base or refiner cannot be told
    assert detect(unet_only("sdxl"), {}, model_type="sdxl").family == "sdxl"
    comfy = {k[len(U):]: s for k, s in unet_only("sdxl-refiner").items()}
    det = detect(comfy, {}, model_type="refiner")
    assert (det.family, det.unet_prefix) == ("sdxl-refiner", "")
    assert any("ComfyUI" in line for line in det.evidence)


def test_real_sdxl_label_emb_widths_tell_base_from_refiner():
    base = {U + "input_blocks.0.0.weight": (320, 4, 3, 3), U + "label_emb.0.0.weight": (1280, 2816)}
    refiner = {U + "input_blocks.0.0.weight": (384, 4, 3, 3), U + "label_emb.0.0.weight": (1536, 2560)}
    assert detect(base, {}).family == "sdxl"
    det = detect(refiner, {})
    assert det.family == "sdxl-refiner"
    assert any(line.startswith("key model.diffusion_model.label_emb.0.0.weight has shape [1536, 2560] -> ")
               for line in det.evidence)


def test_ema_detection():
    s = shapes("sd1")
    s.update({families.ema_key(k): v for k, v in list(s.items()) if k.startswith(U)})
    s["model_ema.decay"] = ()
    det = detect(s, {})
    assert det.ema.available and det.ema.keys == len([k for k in s if k.startswith(U)])
    assert families.ema_key(U + "input_blocks.1.0.in_layers.0.weight") == \
        "model_ema.diffusion_modelinput_blocks10in_layers0weight"


def test_model_type_override_and_conflicts():
    det = detect(shapes("sd1"), {}, model_type="v2")
    assert det.family == "sd2" and any(line.startswith("note: the keys suggest sd1") for line in det.evidence)
    with pytest.raises(UsageError, match="unknown model_type"):
        detect(shapes("sd1"), {}, model_type="sd9")
    mixed = {**unet_only("sd2"), **{k: v for k, v in shapes("sd1").items() if k.startswith("cond_stage_model.")}}
    with pytest.raises(UsageError, match="text encoder keys say sd1"):
        detect(mixed, {})


def test_vae_prefix_variant():
    s = {("vae." + k[len("first_stage_model."):] if k.startswith("first_stage_model.") else k): v
         for k, v in shapes("sd1").items()}
    det = detect(s, {})
    assert det.vae_prefix == "vae." and "vae" in det.components


@pytest.mark.parametrize("key,name", [
    ("model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias", "Stable Diffusion 3"),
    ("joint_blocks.0.context_block.adaLN_modulation.1.bias", "Stable Diffusion 3"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux.1"),
    ("model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale", "Flux.1"),
    ("single_stream_modulation.lin.weight", "Flux.2"),
    ("distilled_guidance_layer.in_proj.bias", "Chroma"),
    ("model.diffusion_model.input_blocks.10.0.skip_connection.bias", "x4 upscaler"),
    ("control_model.time_embed.0.weight", "ControlNet"),
    ("edm_mean", "Playground"),
])
def test_unsupported_families_are_refused_naming_the_key(key, name):
    s = {**shapes("sd1"), key: (4,)} if not key.startswith(("joint", "double", "single", "distilled")) else {key: (4,)}
    with pytest.raises(UnsupportedModelError, match="not supported yet") as info:
        detect(s, {})
    assert name in str(info.value) and key in str(info.value) and info.value.evidence == key
    assert isinstance(info.value, TensorsafeError)


def test_x4_upscaler_by_in_channels_and_unknown_channels():
    s = shapes("sd2")
    with pytest.raises(UnsupportedModelError, match="x4 upscaler"):
        detect({**s, U + "input_blocks.0.0.weight": (32, 7, 3, 3)}, {})
    with pytest.raises(UnsupportedModelError, match="6 input channels"):
        detect({**s, U + "input_blocks.0.0.weight": (32, 6, 3, 3)}, {})
    with pytest.raises(UnsupportedModelError, match="no depth variant"):
        detect({**shapes("sdxl"), U + "input_blocks.0.0.weight": (32, 5, 3, 3)}, {})


def test_diffusers_layout_and_unknown_files_are_refused():
    with pytest.raises(UnsupportedModelError, match="already in the diffusers layout"):
        detect(sd_tiny.folder_shapes("sd1")["unet"], {})
    with pytest.raises(UnsupportedModelError, match="no Stable Diffusion"):
        detect({"foo.weight": (3,)}, {})


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_detect_folder(family):
    det = folder_detection(family)
    assert det.family == family and det.variant == "text2img"
    assert det.components == COMPONENTS[family]
    assert det.sample_size == 8  # from unet/config.json


def test_detect_folder_reads_scheduler_and_variant():
    det = families.detect_folder({"text_encoder": ["transformers", "CLIPTextModel"]},
                                 {"unet": {"in_channels": 9, "use_linear_projection": True, "sample_size": 96},
                                  "scheduler": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}},
                                 {})
    assert (det.family, det.variant, det.prediction_type, det.rescale_betas_zero_snr, det.sample_size) == \
        ("sd2", "inpaint", "v_prediction", True, 96)


def test_summary_helpers():
    det = detect(shapes("sdxl"), {})
    assert det.tokenizers() == {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}
    assert det.describe() == ("sdxl (Stable Diffusion XL base), text2img, 4 input channels, epsilon, 1024 px; "
                              "components: unet, vae, text_encoder, text_encoder_2")
    assert detect(shapes("sd2"), {}).tokenizers() == {"tokenizer": "!"}
    assert detect(shapes("sdxl-refiner"), {}).tokenizers() == {"tokenizer_2": "!"}
