"""Knowing what a model file is (``tensorsafe.identify``, ``inspect``): files built offline with the key
names each ecosystem writes (kohya sd-scripts, LyCORIS, PEFT / diffusers, XLabs, A1111, ComfyUI/BFL)
and tiny tensors; widths that name a family are real (768, 1024, 2048, 3072), the rest tiny."""
from __future__ import annotations

import json

import pytest
from tests.cli_runner import invoke

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import tensorsafe  # noqa: E402
from tensorsafe.converter.families import detect  # noqa: E402
from tensorsafe.converter.identify import identify_tensors  # noqa: E402
from tensorsafe.errors import UnsafeFileError, UnsupportedModelError, UsageError  # noqa: E402


def _save(path, tensors: dict, metadata: dict | None = None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _kohya(name: str, rank: int, width_in: int, width_out: int, alpha: float | None, dtype=torch.float16,
           kernel: tuple[int, ...] = ()) -> dict:
    out = {f"{name}.lora_down.weight": torch.zeros(rank, width_in, *kernel, dtype=dtype),
           f"{name}.lora_up.weight": torch.zeros(width_out, rank, *((1, 1) if kernel else ()), dtype=dtype)}
    if alpha is not None:
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def _shapes(d: dict) -> dict:
    return {k: ("F16", tuple(v)) for k, v in d.items()}


# -- kohya LoRA ----------------------------------------------------------------------------------------
SD1_META = {"ss_output_name": "mychar_v1", "ss_base_model_version": "sd_v1", "ss_network_dim": "4",
            "ss_network_alpha": "2", "ss_steps": "1200", "ss_sd_model_name": "v1-5-pruned.safetensors",
            "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 20, "smile": 7, "outdoors": 3}}),
            "ss_dataset_dirs": json.dumps({"10_mychar": {"n_repeats": 10, "img_count": 20}})}


def _kohya_sd1(tmp_path):
    t = {}
    t.update(_kohya("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 4, 768, 32, 2.0))
    t.update(_kohya("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 4, 32, 32, 2.0))
    t.update(_kohya("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_v", 8, 768, 32, 8.0))
    t.update(_kohya("lora_unet_mid_block_attentions_0_proj_in", 8, 32, 32, 8.0))
    t.update(_kohya("lora_te_text_model_encoder_layers_3_self_attn_q_proj", 4, 768, 768, 1.0))
    return _save(tmp_path / "mychar.safetensors", t, SD1_META)


def test_kohya_sd1_lora_ranks_alphas_blocks_and_training_facts(tmp_path):
    path = _kohya_sd1(tmp_path)
    ident = tensorsafe.identify(path)
    assert (ident.kind, ident.family) == ("lora", "sd1")
    a = ident.adapter
    assert a.spelling == "kohya" and a.modules == 5 and a.parts == {"unet": 4, "text_encoder": 1}
    assert a.ranks == (4, 8) and a.alphas == (1.0, 2.0, 8.0)  # read from the file's bytes
    blocks = {(b.part, b.block): (b.modules, b.ranks, b.alphas) for b in a.blocks}
    assert blocks == {("unet", "down_blocks.0"): (2, (4,), (2.0,)), ("unet", "up_blocks.1"): (1, (8,), (8.0,)),
                      ("unet", "mid_block"): (1, (8,), (8.0,)), ("text_encoder", "layers.3"): (1, (4,), (1.0,))}
    assert any("attn2_to_k.lora_down.weight has shape [4, 768] -> cross-attention width 768: sd1" in e
               for e in ident.evidence)
    t = ident.training
    assert t.trigger_words == ("mychar",) and t.top_tags[0] == ("mychar", 20)
    assert t.facts["output name"] == "mychar_v1" and t.facts["steps"] == "1200" and t.base_model == "sd1"
    assert ident.tensors == 15 and ident.data_bytes == sum(v.numel() * 2 for v in load_file(str(path)).values())


def test_kohya_sdxl_lora_by_block_names_te2_and_bf16_alpha(tmp_path):
    t = {}
    t.update(_kohya("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 16, 2048, 64, 8.0, torch.bfloat16))
    t.update(_kohya("lora_unet_output_blocks_2_1_transformer_blocks_1_attn1_to_out_0", 16, 64, 64, 8.0,
                    torch.bfloat16))
    t.update(_kohya("lora_te1_text_model_encoder_layers_0_mlp_fc1", 4, 768, 32, 4.0, torch.bfloat16))
    t.update(_kohya("lora_te2_text_model_encoder_layers_0_mlp_fc1", 4, 1280, 32, 4.0, torch.bfloat16))
    ident = tensorsafe.identify(_save(tmp_path / "xl.safetensors", t, {"ss_base_model_version": "sdxl_base_v1-0"}))
    assert (ident.kind, ident.family) == ("lora", "sdxl")
    assert ident.adapter.parts == {"unet": 2, "text_encoder": 1, "text_encoder_2": 1}
    assert ident.adapter.alphas == (4.0, 8.0) and ident.adapter.ranks == (4, 16)
    assert [b.block for b in ident.adapter.blocks if b.part == "unet"] == ["input_blocks.4", "output_blocks.2"]


def test_lora_in_a_pickle_reads_its_alphas_through_the_restricted_reader(tmp_path):
    path = tmp_path / "lora.pt"
    torch.save(_kohya("lora_unet_up_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k", 4, 1024, 32, 3.0,
                      torch.float32), path)
    ident = tensorsafe.identify(path)
    assert (ident.kind, ident.family, ident.adapter.alphas, ident.tensors) == ("lora", "sd2", (3.0,), 3)


def test_sd2_lora_by_text_encoder_width_and_metadata_disagreement_is_noted():
    shapes = _shapes({"lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 1024),
                      "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight": (1024, 4)})
    ident = identify_tensors(shapes, {"ss_base_model_version": "sdxl_base_v1-0"})
    assert ident.family == "sd2" and any("text encoder width 1024" in e for e in ident.evidence)
    assert any("metadata ss_base_model_version says Stable Diffusion XL" in n for n in ident.notes)


# -- PEFT / diffusers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_files(tmp_path_factory):
    """Real PEFT adapters on a tiny diffusers UNet (768-wide cross-attention): LoRA and DoRA."""
    pytest.importorskip("peft")
    diffusers = pytest.importorskip("diffusers")
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, norm_num_groups=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8)
    out = {}
    for name, dora in (("lora", False), ("dora", True)):
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], use_dora=dora)
        unet.add_adapter(config, adapter_name=name)
        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}
        meta = {"lora_adapter_metadata": json.dumps({f"unet.{k}": v for k, v in config.to_dict().items()
                                                     if isinstance(v, (int, float, str, bool))})}
        out[name] = _save(tmp_path_factory.mktemp(name) / "pytorch_lora_weights.safetensors", state, meta)
        if not dora:  # the same adapter as diffusers writes it for kohya / A1111
            kohya = diffusers.utils.convert_state_dict_to_kohya(state)
            out["kohya"] = _save(tmp_path_factory.mktemp("kohya") / "kohya.safetensors", kohya)
    return out


def test_peft_lora_on_a_real_unet(peft_files):
    ident = tensorsafe.identify(peft_files["lora"])
    assert (ident.kind, ident.family, ident.adapter.spelling) == ("lora", "sd1", "peft")
    assert ident.adapter.ranks == (4,) and ident.adapter.alphas == (8.0,)  # alpha from lora_adapter_metadata
    assert {b.block for b in ident.adapter.blocks} == {"down_blocks.0", "mid_block", "up_blocks.1"}
    assert ident.adapter.parts == {"unet": ident.adapter.modules}


def test_kohya_file_written_by_diffusers_and_read_back_by_it(peft_files, tmp_path):
    import diffusers

    ident = tensorsafe.identify(peft_files["kohya"])
    assert (ident.kind, ident.family, ident.adapter.spelling, ident.adapter.ranks) == ("lora", "sd1", "kohya", (4,))
    _, oracle = diffusers.StableDiffusionPipeline.lora_state_dict(str(peft_files["kohya"]))
    assert ident.adapter.alphas == tuple(sorted(set(oracle.values())))
    assert ident.adapter.modules == len(oracle)
    # diffusers reads the hand-built kohya file of the tests above the same way: same modules, same alphas
    path = _kohya_sd1(tmp_path)
    _, oracle = diffusers.StableDiffusionPipeline.lora_state_dict(str(path))
    ident = tensorsafe.identify(path)
    assert ident.adapter.modules == len(oracle) and ident.adapter.alphas == tuple(sorted(set(oracle.values())))


def test_peft_dora_magnitude_vectors(peft_files):
    ident = tensorsafe.identify(peft_files["dora"])
    assert ident.kind == "dora" and ident.adapter.dora and ident.family == "sd1"
    assert any("lora_magnitude_vector -> DoRA" in e for e in ident.evidence)


def test_kohya_dora_scale():
    t = _shapes({"lora_unet_down_blocks_1_attentions_0_proj_out.lora_down.weight": (8, 64),
                 "lora_unet_down_blocks_1_attentions_0_proj_out.lora_up.weight": (64, 8),
                 "lora_unet_down_blocks_1_attentions_0_proj_out.dora_scale": (1, 64),
                 "lora_unet_down_blocks_1_attentions_0_proj_out.alpha": ()})
    ident = identify_tensors(t, scalars={"lora_unet_down_blocks_1_attentions_0_proj_out.alpha": 4.0})
    assert ident.kind == "dora" and ident.adapter.alphas == (4.0,) and "DoRA" in ident.title


@pytest.mark.parametrize("keys,family,spelling", [
    ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072),
      "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 4)}, "flux1", "peft"),
    ({"transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": (4, 1536),
      "transformer.transformer_blocks.0.attn.add_q_proj.lora_B.weight": (1536, 4)}, "sd3", "peft"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072),
      "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 4),
      "lora_unet_double_blocks_0_img_attn_qkv.alpha": ()}, "flux1", "kohya"),
    ({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 1536),
      "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": (4608, 4)}, "sd3", "kohya"),
    ({"double_blocks.0.processor.proj_lora1.down.weight": (4, 3072),
      "double_blocks.0.processor.proj_lora1.up.weight": (3072, 4)}, "flux1", "xlabs"),
    ({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": (4, 3072),
      "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": (9216, 4)}, "flux1", "peft"),
    ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": (4, 1024),
      "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": (32, 4)},
     "sd2", "diffusers-attn-procs"),
])
def test_other_trainers_spellings(keys, family, spelling):
    ident = identify_tensors(_shapes(keys))
    assert (ident.kind, ident.family, ident.adapter.spelling) == ("lora", family, spelling)
    part = "transformer" if family in ("flux1", "sd3") else "unet"
    assert ident.adapter.parts == {part: 1}


def test_flux_lora_metadata_refines_dev_and_gives_the_trigger_phrase():
    keys = _shapes({"lora_unet_single_blocks_7_linear1.lora_down.weight": (16, 3072),
                    "lora_unet_single_blocks_7_linear1.lora_up.weight": (21504, 16)})
    ident = identify_tensors(keys, {"modelspec.architecture": "flux-1-dev/lora",
                                    "modelspec.trigger_phrase": "sks dog, photo", "modelspec.title": "My dog"})
    assert ident.family == "flux1-dev" and ident.training.trigger_words == ("sks dog", "photo")
    assert ident.training.trigger_source == "modelspec.trigger_phrase"
    assert ident.adapter.blocks[0].block == "single_blocks.7"


# -- LyCORIS -------------------------------------------------------------------------------------------
def test_lycoris_loha(tmp_path):
    m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    t = {f"{m}.hada_w1_a": torch.zeros(32, 8), f"{m}.hada_w1_b": torch.zeros(8, 768),
         f"{m}.hada_w2_a": torch.zeros(32, 8), f"{m}.hada_w2_b": torch.zeros(8, 768), f"{m}.alpha": torch.tensor(4.0)}
    ident = tensorsafe.identify(_save(tmp_path / "loha.safetensors", t, {
        "ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha", "conv_dim": "4"})}))
    assert (ident.kind, ident.family) == ("lycoris-loha", "sd1")
    assert ident.adapter.ranks == (8,) and ident.adapter.alphas == (4.0,) and ident.adapter.spelling == "lycoris"
    assert any(".hada_" in e and "LoHa" in e for e in ident.evidence)
    assert ident.training.facts["network module"] == "lycoris.kohya"


def test_lycoris_lokr_family_from_metadata():
    m = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    t = _shapes({f"{m}.lokr_w1": (8, 8), f"{m}.lokr_w2_a": (80, 4), f"{m}.lokr_w2_b": (4, 80), f"{m}.alpha": ()})
    ident = identify_tensors(t, {"ss_base_model_version": "sdxl_base_v1-0"}, scalars={f"{m}.alpha": 1.0})
    assert (ident.kind, ident.family, ident.adapter.ranks) == ("lycoris-lokr", "sdxl", (4,))


def test_lycoris_locon_by_a_3x3_convolution(tmp_path):
    t = {}
    t.update(_kohya("lora_unet_down_blocks_0_resnets_0_conv1", 4, 32, 32, 1.0, kernel=(3, 3)))
    t.update(_kohya("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 4, 768, 32, 1.0))
    ident = tensorsafe.identify(_save(tmp_path / "locon.safetensors", t))
    assert ident.kind == "lycoris-locon" and ident.adapter.conv_modules == 1 and ident.family == "sd1"
    assert any("3x3 convolution" in e for e in ident.evidence)


# -- textual inversion ---------------------------------------------------------------------------------
def _a1111_pt(tmp_path):
    path = tmp_path / "mychar.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(3, 768)}, "name": "mychar",
                "step": 500, "sd_checkpoint": "cc6cb27103", "sd_checkpoint_name": "v1-5-pruned"}, path)
    return path


def test_a1111_textual_inversion_pt_through_the_restricted_reader(tmp_path):
    ident = tensorsafe.identify(_a1111_pt(tmp_path))
    assert (ident.kind, ident.family, ident.tensors) == ("textual-inversion", "sd1", 1)
    e = ident.embedding
    assert (e.vectors, e.token, e.step, e.trained_on, e.spelling) == (3, "mychar", 500, "v1-5-pruned", "a1111-pt")


@pytest.mark.parametrize("tensors,spelling,vectors,family", [
    ({"emb_params": torch.zeros(2, 1024)}, "a1111-safetensors", 2, "sd2"),
    ({"clip_l": torch.zeros(5, 768), "clip_g": torch.zeros(5, 1280)}, "sdxl", 5, "sdxl"),
    ({"<cat-toy>": torch.zeros(768)}, "diffusers", 1, "sd1"),
])
def test_textual_inversion_layouts(tmp_path, tensors, spelling, vectors, family):
    ident = tensorsafe.identify(_save(tmp_path / "ti.safetensors", tensors))
    assert ident.kind == "textual-inversion"
    assert (ident.embedding.spelling, ident.embedding.vectors, ident.family) == (spelling, vectors, family)


def test_diffusers_learned_embeds_bin(tmp_path):
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": torch.zeros(768)}, path)
    ident = tensorsafe.identify(path)
    assert ident.kind == "textual-inversion" and ident.embedding.token == "<cat-toy>"


# -- VAE, ControlNet, other families -------------------------------------------------------------------
def test_standalone_vaes(tmp_path):
    from tests.sd_tiny import to_single_file

    orig = to_single_file("sd1")[1]
    vae = {k: v for k, v in orig.items() if k.startswith("first_stage_model.")}
    ident = tensorsafe.identify(_save(tmp_path / "vae.safetensors", vae))
    assert ident.kind == "vae" and ident.details["layout"] == "original (LDM)" and ident.details["latent_channels"] == 4
    bare = {k[len("first_stage_model."):]: v for k, v in vae.items()}
    assert identify_tensors({k: ("F32", tuple(v.shape)) for k, v in bare.items()}).kind == "vae"
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    flux_like = diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16,
                                        norm_num_groups=8)
    ident = tensorsafe.identify(_save(tmp_path / "ae.safetensors", flux_like.state_dict()))
    assert ident.kind == "vae" and ident.details["layout"] == "diffusers" and ident.details["latent_channels"] == 16
    assert any("16 latent channels: the SD3 / Flux.1 VAE" in e for e in ident.evidence)


def test_controlnets():
    orig = _shapes({"control_model.input_hint_block.0.weight": (16, 3, 3, 3),
                    "control_model.zero_convs.0.0.weight": (320, 320, 1, 1),
                    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)})
    ident = identify_tensors(orig)
    assert (ident.kind, ident.family, ident.details["hint_channels"]) == ("controlnet", "sd1", 3)
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    net = diffusers.ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=1024,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=8,
                                    attention_head_dim=8, conditioning_embedding_out_channels=(8, 16))
    ident = identify_tensors({k: ("F32", tuple(v.shape)) for k, v in net.state_dict().items()})
    assert (ident.kind, ident.family) == ("controlnet", "sd2")


def test_ip_adapter_bin_with_nested_state_dicts(tmp_path):
    path = tmp_path / "ip-adapter_sd15.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(3072, 8), "norm.weight": torch.zeros(768)},
                "ip_adapter": {"1.to_k_ip.weight": torch.zeros(32, 768), "1.to_v_ip.weight": torch.zeros(32, 768)}},
               path)
    ident = tensorsafe.identify(path)
    assert (ident.kind, ident.family, ident.tensors) == ("ip-adapter", "sd1", 4)


FAMILY_CASES = [
    ({"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,)}, "sd3"),
    ({"joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
      "joint_blocks.37.x_block.mlp.fc1.weight": (4, 4)}, "sd3.5-large"),
    ({"joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
      "joint_blocks.0.x_block.attn2.qkv.weight": (4, 4)}, "sd3.5-medium"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "guidance_in.in_layer.weight": (3072, 256)}, "flux1-dev"),
    ({"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "flux1-schnell"),
    ({"distilled_guidance_layer.in_proj.bias": (4,), "double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "chroma"),
    ({"clip_txt_mapper.weight": (2048, 1280), "clf.1.weight": (4, 4)}, "stable-cascade-c"),
    ({"clip_txt_mapper.weight": (1536, 1280)}, "stable-cascade-c-lite"),
    ({"down_blocks.1.0.channelwise.0.weight": (4, 640), "clip_mapper.weight": (4, 4)}, "stable-cascade-b"),
    ({"t_block.1.weight": (6912, 1152), "y_embedder.y_embedding": (120, 4096)}, "pixart-alpha"),
    ({"t_block.1.weight": (6912, 1152), "y_embedder.y_embedding": (300, 4096)}, "pixart-sigma"),
    ({"double_layers.0.attn.w1q.weight": (4, 4), "cond_seq_linear.weight": (3072, 2048)}, "auraflow"),
    ({"mlp_t5.0.weight": (8192, 2048), "extra_embedder.0.weight": (4, 3968)}, "hunyuan-dit"),
    ({"model.diffusion_model.label_emb.0.0.weight": (1280, 5632),
      "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "kolors"),
    ({"model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q.weight": (320, 320),
      "model.diffusion_model.label_emb.0.0.weight": (1280, 768)}, "svd"),
]


@pytest.mark.parametrize("keys,family", FAMILY_CASES, ids=[f for _, f in FAMILY_CASES])
def test_families_the_converter_does_not_cover_are_named_with_their_key(keys, family):
    ident = identify_tensors(_shapes(keys))
    assert (ident.kind, ident.family, ident.details["convertible"]) == ("checkpoint", family, False)
    assert ident.details["marker_key"] in keys and ident.details["marker_key"] in ident.evidence[0]


def _sd_shapes(family: str) -> dict:
    from tests.sd_tiny import orig_shapes, to_single_file

    return orig_shapes(to_single_file(family)[1])


def test_svd_is_no_longer_read_as_sdxl():
    svd = {**_sd_shapes("sdxl"), "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight": (32, 32, 3, 1, 1),
           "model.diffusion_model.input_blocks.1.0.time_mixer.mix_factor": (1,)}
    with pytest.raises(UnsupportedModelError, match="Stable Video Diffusion") as info:
        detect(svd, {})
    assert "time_" in info.value.evidence
    assert identify_tensors({k: ("F16", v) for k, v in svd.items()}).family == "svd"
    assert identify_tensors({k: ("F16", v) for k, v in _sd_shapes("sdxl").items()}).family == "sdxl"


def test_sd_checkpoint_keeps_the_family_detection():
    ident = identify_tensors({k: ("F16", v) for k, v in _sd_shapes("sd2").items()})
    assert (ident.kind, ident.family, ident.details["convertible"]) == ("checkpoint", "sd2", True)
    assert "text_encoder" in ident.details["components"]


def test_unknown_and_refused_files(tmp_path):
    ident = identify_tensors({"foo.bar": ("F32", (3, 3))})
    assert ident.kind == "unknown" and "foo.bar" in ident.evidence[0]
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafeFileError):
        tensorsafe.identify(evil)
    with pytest.raises(UsageError, match="a folder"):
        tensorsafe.identify(tmp_path)


# -- inspect -------------------------------------------------------------------------------------------
def test_inspect_names_a_lora_instead_of_refusing_it(tmp_path):
    path = _kohya_sd1(tmp_path)
    result = invoke(["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "identified: LoRA for Stable Diffusion 1.x" in result.output
    assert "not supported yet" not in result.output and "trigger words: mychar" in result.output
    assert "unet down_blocks.0: 2 modules, rank 4, alpha 2" in result.output
    doc = json.loads(invoke(["inspect", str(path), "--json"]).output)
    assert doc["identification"]["kind"] == "lora" and doc["identification"]["adapter"]["ranks"] == [4, 8]


def test_inspect_counts_nested_tensors_of_a_textual_inversion_pt(tmp_path):
    path = _a1111_pt(tmp_path)
    result = invoke(["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 tensors" in result.output.splitlines()[0] and "string_to_param.*" in result.output
    assert "kind: textual-inversion" in result.output and "vectors: 3" in result.output
    doc = json.loads(invoke(["inspect", str(path), "--json"]).output)
    assert doc["totals"] == {"tensors": 1, "data_bytes": 3 * 768 * 4}
    assert doc["identification"]["embedding"]["vectors"] == 3


def test_inspect_names_a_vae(tmp_path):
    t = {"encoder.down.0.block.0.conv1.weight": torch.zeros(8, 8, 3, 3),
         "decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
         "decoder.up.0.block.0.conv1.weight": torch.zeros(8, 8, 3, 3), "quant_conv.weight": torch.zeros(8, 8, 1, 1)}
    result = invoke(["inspect", str(_save(tmp_path / "vae.safetensors", t))])
    assert result.exit_code == 0 and "kind: vae" in result.output
    assert "no Stable Diffusion UNet" not in result.output


# -- untrusted input -----------------------------------------------------------------------------------
KEY_PIECES = ["lora_unet_down_blocks_0_attn2_to_k.lora_down.weight", "lora_te2_x.lora_up.weight", "m.alpha",
              "m.hada_w1_b", "m.lokr_w2_b", "m.dora_scale", "string_to_param.*", "emb_params", "clip_l", "clip_g",
              "<tok>", "decoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight", "control_model.a",
              "model.diffusion_model.input_blocks.0.0.weight", "double_blocks.0.img_attn.norm.key_norm.scale",
              "img_in.weight", "t_block.1.weight", "y_embedder.y_embedding", "label_emb.0.0.weight", "conv_in.weight",
              "time_embedding.linear_1.weight", "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight"]


def test_any_mix_of_marker_keys_and_shapes_gets_an_answer_not_a_crash():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    shapes = st.lists(st.integers(0, 2048), max_size=5).map(tuple)
    metadata = st.dictionaries(st.sampled_from(["ss_tag_frequency", "ss_dataset_dirs", "lora_adapter_metadata",
                                                "modelspec.architecture", "ss_base_model_version"]),
                               st.sampled_from(["{bad", "[]", '{"a": {"x": true, "y": 3}}', '{"unet.lora_alpha": "x"}',
                                                "flux-1-dev/lora", "sdxl_base_v1-0", ""]))

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(KEY_PIECES), shapes, max_size=6), metadata)
    def check(keys, meta):
        ident = identify_tensors({k: ("F16", s) for k, s in keys.items()}, meta, scalars={"m.alpha": 2.0})
        assert ident.kind and ident.tensors == len(keys) and json.dumps(ident.to_dict())

    check()
