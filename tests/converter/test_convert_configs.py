"""Component configs read from the shapes: diffusers/transformers build models from them whose
state dicts have exactly the mapped keys and shapes (tiny models), and the real SD1.5 / SD2.1 /
SDXL / refiner shapes give the values of the tables of docs/single-file.md §8. Real-size models are built
on torch's ``meta`` device: shapes only, no memory, well under a second each.
"""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from tests import sd_tiny  # noqa: E402
from tests.sd_tiny import CASE_IDS, CASES, to_single_file  # noqa: E402
from tensorsafe.converter import configs, families, keymaps  # noqa: E402
from tensorsafe.errors import UsageError  # noqa: E402

CROSS, CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"


def build(cfgs: dict, component: str):
    """The model a config describes, on the meta device."""
    cfg = dict(cfgs[configs.CONFIG_FILES[component]])
    with torch.device("meta"):
        if component == "unet":
            return diffusers.UNet2DConditionModel.from_config(cfg)
        if component == "vae":
            return diffusers.AutoencoderKL.from_config(cfg)
        cls = getattr(transformers, cfg.pop("architectures")[0])
        return cls(transformers.CLIPTextConfig(**cfg))


def mapped(family: str, in_channels: int = 4):
    _, orig = to_single_file(family, in_channels)
    shapes = {k: tuple(v.shape) for k, v in orig.items()}
    det = families.detect(shapes, {})
    return det, keymaps.shapes_by_component(keymaps.plan_to_diffusers(shapes, det))


@pytest.mark.parametrize("family,in_channels", CASES, ids=CASE_IDS)
def test_configs_build_models_with_the_mapped_keys(family, in_channels):
    det, sbc = mapped(family, in_channels)
    cfgs = configs.component_configs(det, sbc)
    for component, shapes in sbc.items():
        model = build(cfgs, component)
        assert sd_tiny.shapes_of(model, component.startswith("text_encoder")) == shapes, component
    sched = cfgs["scheduler/scheduler_config.json"]
    getattr(diffusers, sched["_class_name"]).from_config(sched)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_configs_are_complete_as_save_config_writes_them(family, tmp_path):
    det, sbc = mapped(family)
    cfgs = configs.component_configs(det, sbc)
    def saved(path):  # _diffusers_version: the installed release writes its own
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "_diffusers_version"}

    for component in ("unet", "vae"):
        ours = json.loads(json.dumps(cfgs[configs.CONFIG_FILES[component]]))
        del ours["_diffusers_version"]
        build(cfgs, component).save_config(tmp_path / component)
        assert saved(tmp_path / component / "config.json") == ours
    sched = dict(cfgs["scheduler/scheduler_config.json"])
    getattr(diffusers, sched["_class_name"]).from_config(sched).save_config(tmp_path / "scheduler")
    del sched["_diffusers_version"]
    assert saved(tmp_path / "scheduler" / "scheduler_config.json") == sched
    for slot in det.spec.text_encoders:
        cfg = cfgs[configs.CONFIG_FILES[slot.component]]
        assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (0, 2, 1)
        assert cfg["hidden_act"] == slot.hidden_act
        saved = build(cfgs, slot.component).config.to_dict()
        assert all(saved[k] == v for k, v in cfg.items() if k != "architectures"), slot.component


@pytest.mark.parametrize("family,in_channels", CASES, ids=CASE_IDS)
def test_model_index_names_real_classes_and_pipeline_arguments(family, in_channels):
    import inspect

    det, sbc = mapped(family, in_channels)
    index = configs.component_configs(det, sbc)["model_index.json"]
    pipeline = getattr(diffusers, index["_class_name"])
    params = set(inspect.signature(pipeline.__init__).parameters)
    for key, value in index.items():
        if key.startswith("_"):
            continue
        assert key in params, (index["_class_name"], key)
        if isinstance(value, list) and value[0] is not None:
            assert hasattr({"diffusers": diffusers, "transformers": transformers}[value[0]], value[1])
    present = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    assert set(sbc) <= present
    if det.family == "sdxl-refiner":
        assert index["text_encoder"] == [None, None] and index["requires_aesthetics_score"] is True


def test_tokenizer_folders_per_family():
    det, _ = mapped("sdxl")
    files = configs.tokenizer_folders(det)
    assert sorted(files) == sorted(f"{d}/{n}" for d in ("tokenizer", "tokenizer_2") for n in
                                   ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"))
    assert json.loads(files["tokenizer/special_tokens_map.json"])["pad_token"] == "<|endoftext|>"
    assert json.loads(files["tokenizer_2/tokenizer_config.json"])["pad_token"] == "!"
    sd2, _ = mapped("sd2")
    assert json.loads(configs.tokenizer_folders(sd2)["tokenizer/tokenizer_config.json"])["pad_token"] == "!"


# ---- configs from a folder (--config FOLDER) ---------------------------------------------------------------

def write_folder(tmp_path, family: str):
    det, sbc = mapped(family)
    for rel, cfg in configs.component_configs(det, sbc).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(cfg))
    return det, sbc


def test_folder_configs_load_and_validate(tmp_path):
    det, sbc = write_folder(tmp_path, "sdxl")
    loaded = configs.load_folder_configs(tmp_path, det, sbc)
    assert loaded == json.loads(json.dumps(configs.component_configs(det, sbc)))


def test_folder_configs_saved_by_diffusers_itself_validate(tmp_path):
    """The tiny models' own configs, as diffusers and transformers save them, fit their weights."""
    det, sbc = mapped("sdxl")
    for component, model in sd_tiny.models("sdxl").items():
        model.save_config(tmp_path / component) if component in ("unet", "vae") else \
            model.config.save_pretrained(tmp_path / component)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text("{}")
    loaded = configs.load_folder_configs(tmp_path, det, sbc)
    assert loaded["unet/config.json"]["attention_head_dim"] == [1, 2, 2]  # the folder's, not derived


@pytest.mark.parametrize("rel,field,value,named", [
    ("unet/config.json", "cross_attention_dim", 768, "attn2.to_k.weight has shape [64, 72]"),
    ("unet/config.json", "block_out_channels", [32, 64, 128], "key down_blocks.2.resnets.0.conv1.weight has shape"),
    ("unet/config.json", "transformer_layers_per_block", 1, "transformer_blocks"),
    ("unet/config.json", "use_linear_projection", False, "proj_in.weight has shape [64, 64]"),
    ("vae/config.json", "latent_channels", 16, "key decoder.conv_in.weight has shape [64, 4, 3, 3]"),
    ("text_encoder_2/config.json", "hidden_size", 1280, "key text_model.embeddings.token_embedding.weight has shape"),
])
def test_folder_configs_that_do_not_fit_are_refused(tmp_path, rel, field, value, named):
    det, sbc = write_folder(tmp_path, "sdxl")
    cfg = json.loads((tmp_path / rel).read_text())
    cfg[field] = value
    (tmp_path / rel).write_text(json.dumps(cfg))
    with pytest.raises(UsageError) as info:
        configs.load_folder_configs(tmp_path, det, sbc)
    message = str(info.value)
    assert rel in message and f"{field} = {value!r}" in message and named in message and "leave out config" in message


def test_folder_without_a_needed_config_is_refused(tmp_path):
    det, sbc = write_folder(tmp_path, "sd1")
    (tmp_path / "vae" / "config.json").unlink()
    with pytest.raises(UsageError, match="no vae/config.json"):
        configs.load_folder_configs(tmp_path, det, sbc)


# ---- real sizes (meta device) -------------------------------------------------------------------------------

REAL_UNET = {
    "sd1": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True),
    "sdxl": dict(block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", CROSS, CROSS),
                 up_block_types=(CROSS_UP, CROSS_UP, "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
                 cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
    "sdxl-refiner": dict(block_out_channels=(384, 768, 1536, 1536),
                         down_block_types=("DownBlock2D", CROSS, CROSS, "DownBlock2D"),
                         up_block_types=("UpBlock2D", CROSS_UP, CROSS_UP, "UpBlock2D"), transformer_layers_per_block=4,
                         cross_attention_dim=1280, attention_head_dim=(6, 12, 24, 24), use_linear_projection=True,
                         addition_embed_type="text_time", addition_time_embed_dim=256,
                         projection_class_embeddings_input_dim=2560),
}
VIT_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             hidden_act="quick_gelu", projection_dim=768)
VIT_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
             projection_dim=512)
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
             projection_dim=1280)
REAL_TE = {"sd1": {"text_encoder": VIT_L}, "sd2": {"text_encoder": VIT_H},
           "sdxl": {"text_encoder": VIT_L, "text_encoder_2": BIG_G}, "sdxl-refiner": {"text_encoder_2": BIG_G}}


def real_single_file(family: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        ms = {"unet": diffusers.UNet2DConditionModel(**REAL_UNET[family]),
              "vae": diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                             down_block_types=("DownEncoderBlock2D",) * 4,
                                             up_block_types=("UpDecoderBlock2D",) * 4)}
        for c, kw in REAL_TE[family].items():
            cls = transformers.CLIPTextModelWithProjection if c == "text_encoder_2" else transformers.CLIPTextModel
            ms[c] = cls(transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **kw))
    sbc = {c: sd_tiny.shapes_of(m, c.startswith("text_encoder")) for c, m in ms.items()}
    det = families.detect_folder({}, {"unet": dict(ms["unet"].config)}, sbc)
    plan = keymaps.plan_to_single_file(sbc, det)
    assert plan.unmapped == []
    return {t.key: t.shape for t in plan.targets}


SPEC_UNET = {
    "sd1": dict(attention_head_dim=8, cross_attention_dim=768, use_linear_projection=False, upcast_attention=False,
                transformer_layers_per_block=1, sample_size=64, block_out_channels=[320, 640, 1280, 1280],
                down_block_types=[CROSS] * 3 + ["DownBlock2D"], up_block_types=["UpBlock2D"] + [CROSS_UP] * 3,
                addition_embed_type=None, layers_per_block=2),
    "sd2": dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                upcast_attention=True, sample_size=96, transformer_layers_per_block=1),
    "sdxl": dict(attention_head_dim=[5, 10, 20], cross_attention_dim=2048, transformer_layers_per_block=[1, 2, 10],
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, sample_size=128, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", CROSS, CROSS], up_block_types=[CROSS_UP, CROSS_UP, "UpBlock2D"]),
    "sdxl-refiner": dict(attention_head_dim=[6, 12, 24, 24], transformer_layers_per_block=4, cross_attention_dim=1280,
                         projection_class_embeddings_input_dim=2560, addition_time_embed_dim=256, sample_size=128,
                         block_out_channels=[384, 768, 1536, 1536]),
}
SPEC_TE = {
    "sd1": {"text_encoder": ("CLIPTextModel", "quick_gelu", 768, 3072, 12, 12, 768)},
    "sd2": {"text_encoder": ("CLIPTextModel", "gelu", 1024, 4096, 23, 16, 512)},
    "sdxl": {"text_encoder": ("CLIPTextModel", "quick_gelu", 768, 3072, 12, 12, 768),
             "text_encoder_2": ("CLIPTextModelWithProjection", "gelu", 1280, 5120, 32, 20, 1280)},
    "sdxl-refiner": {"text_encoder_2": ("CLIPTextModelWithProjection", "gelu", 1280, 5120, 32, 20, 1280)},
}
SPEC_ORIG = {
    "sd1": {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
            "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768)},
    "sd2": {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
            "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
            "cond_stage_model.model.positional_embedding": (77, 1024)},
    "sdxl": {"model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
             "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
             "conditioner.embedders.1.model.text_projection": (1280, 1280),
             "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias": (3840,)},
    "sdxl-refiner": {"model.diffusion_model.label_emb.0.0.weight": (1536, 2560),
                     "model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
                     "conditioner.embedders.0.model.text_projection": (1280, 1280)},
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl-refiner"])
def test_real_shapes_give_the_spec_tables(family):
    orig = real_single_file(family)
    for key, shape in SPEC_ORIG[family].items():
        assert orig[key] == shape, key
    if family == "sd2":
        assert not any("resblocks.23." in k for k in orig) and "cond_stage_model.model.text_projection" not in orig
    det = families.detect(orig, {})
    assert det.family == family
    sbc = keymaps.shapes_by_component(keymaps.plan_to_diffusers(orig, det))
    cfgs = configs.component_configs(det, sbc)
    unet = cfgs["unet/config.json"]
    for field, value in SPEC_UNET[family].items():
        assert unet[field] == value, field
    vae = cfgs["vae/config.json"]
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["layers_per_block"] == 2
    assert (vae["scaling_factor"], vae["sample_size"]) == {
        "sd1": (0.18215, 512), "sd2": (0.18215, 768), "sdxl": (0.13025, 1024), "sdxl-refiner": (0.13025, 1024)}[family]
    for component, (arch, act, hidden, inter, layers, heads, proj) in SPEC_TE[family].items():
        te = cfgs[configs.CONFIG_FILES[component]]
        assert (te["architectures"], te["hidden_act"], te["hidden_size"], te["intermediate_size"],
                te["num_hidden_layers"], te["num_attention_heads"], te["projection_dim"]) == \
            ([arch], act, hidden, inter, layers, heads, proj)
        assert (te["vocab_size"], te["max_position_embeddings"]) == (49408, 77)
    sched = cfgs["scheduler/scheduler_config.json"]
    assert (sched["_class_name"], sched["prediction_type"]) == {
        "sd1": ("PNDMScheduler", "epsilon"), "sd2": ("DDIMScheduler", "v_prediction"),
        "sdxl": ("EulerDiscreteScheduler", "epsilon"), "sdxl-refiner": ("EulerDiscreteScheduler", "epsilon")}[family]
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"], sched["steps_offset"]) == \
        (0.00085, 0.012, "scaled_linear", 1)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_shapes_diffusers_converter_agrees(family):
    """diffusers' converter on meta tensors of the real key set: same keys and shapes as our plan."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from types import SimpleNamespace

    orig = real_single_file(family)
    det = families.detect(orig, {})
    ours = {(t.component, t.key): t.shape for t in keymaps.plan_to_diffusers(orig, det).targets}
    meta = {k: torch.empty(s, device="meta") for k, s in orig.items()}
    unet_cfg = {"layers_per_block": 2, "addition_embed_type": "text_time" if family == "sdxl" else None}
    theirs = {("unet", k): v for k, v in convert_ldm_unet_checkpoint(meta, unet_cfg).items()}
    vae_cfg = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    theirs.update({("vae", k): v for k, v in convert_ldm_vae_checkpoint(meta, vae_cfg).items()})
    if family in ("sd1", "sdxl"):
        theirs.update({("text_encoder", k): v for k, v in convert_ldm_clip_checkpoint(meta).items()})
    if family == "sd2":
        te = SimpleNamespace(config=SimpleNamespace(hidden_size=1024))
        theirs.update({("text_encoder", k): v for k, v in
                       convert_open_clip_checkpoint(te, meta, "cond_stage_model.model.").items()})
    if family == "sdxl":
        te = SimpleNamespace(config=SimpleNamespace(hidden_size=1280))
        theirs.update({("text_encoder_2", k): v for k, v in
                       convert_open_clip_checkpoint(te, meta, "conditioner.embedders.1.model.").items()})
    assert ours == {k: tuple(v.shape) for k, v in theirs.items()}


def test_folder_configs_model_index_is_ours(tmp_path):
    """A hub folder's model_index lists a safety checker we never write: model_index is derived,
    with the scheduler class of the folder's scheduler config; a missing scheduler is derived."""
    det, sbc = write_folder(tmp_path, "sd1")
    hub_index = json.loads((tmp_path / "model_index.json").read_text())
    hub_index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (tmp_path / "model_index.json").write_text(json.dumps(hub_index))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    loaded = configs.configs_from_folder(tmp_path, det, sbc)
    assert loaded["model_index.json"]["safety_checker"] == [None, None]
    assert loaded["model_index.json"]["scheduler"] == ["diffusers", "DDIMScheduler"]
    (tmp_path / "scheduler" / "scheduler_config.json").unlink()
    loaded = configs.configs_from_folder(tmp_path, det, sbc)
    assert loaded["scheduler/scheduler_config.json"] == configs.scheduler_config(det)
