"""``convert`` for adapters: LoRA kohya <-> diffusers, embeddings, VAEs, with diffusers as the oracle.

A converted LoRA must fuse, in diffusers (``load_lora_weights`` + ``fuse_lora``), to the very weights the
original fuses to; an embedding must load with ``load_textual_inversion`` to the same vectors; a VAE
folder must load with ``AutoencoderKL.from_pretrained`` and decode as the original.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests import adapters_tiny as at
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (fixture)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")


def header(path: Path) -> dict:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n])


def same_weights(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.allclose(a[k], b[k], atol=1e-6, rtol=0)]


@pytest.fixture(scope="module")
def sd1_peft(tmp_path_factory) -> Path:
    return at.peft_lora("sd1", tmp_path_factory.mktemp("peft") / "sd1")


@pytest.fixture(scope="module")
def sd1_base() -> dict:
    return at.model_state(at.fresh_pipeline("sd1"))


def test_diffusers_lora_to_kohya_and_back_fuses_to_the_same_weights(sd1_peft, sd1_base, tmp_path):
    from tensorsafe.converter.run import convert

    kohya, back = tmp_path / "kohya.safetensors", tmp_path / "back.safetensors"
    result = convert(sd1_peft, kohya, to="kohya")
    assert result.direction == "diffusers/PEFT LoRA -> kohya/A1111/ComfyUI LoRA"
    assert "SD1.x/SD2.x" in result.family and any("attention in the first down block" in e for e in result.evidence)
    names = header(kohya)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in names
    assert "lora_te_text_model_encoder_layers_1_self_attn_q_proj.alpha" in names
    convert(kohya, back)  # the default target is the other format
    original = at.fused_state("sd1", sd1_peft)
    adapted = at.changed(sd1_base, original)
    assert len(adapted) == result.tensors // 3  # every module the LoRA adapts moved
    assert same_weights(original, at.fused_state("sd1", kohya)) == []
    assert same_lora(sd1_peft, back)


def same_lora(a: Path, b: Path) -> bool:
    """The same modules (text encoders spelled either way), each with the same rank, alpha, down and up."""
    from safetensors import safe_open

    from tensorsafe.converter.adapters.lora_file import read_lora

    def modules(path: Path) -> dict:
        with safe_open(path, "pt") as f:
            lora = read_lora({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata())
            return {(m.component, m.path): (m.rank, m.alpha, f.get_tensor(m.down), f.get_tensor(m.up))
                    for m in lora.modules}

    ma, mb = modules(a), modules(b)
    return ma.keys() == mb.keys() and all(ma[k][:2] == mb[k][:2] and torch.equal(ma[k][2], mb[k][2])
                                          and torch.equal(ma[k][3], mb[k][3]) for k in ma)


def test_weights_are_copied_byte_for_byte(sd1_peft, tmp_path):
    from safetensors import safe_open

    kohya = tmp_path / "kohya.safetensors"
    from tensorsafe.converter.adapters import convert_lora

    convert_lora(sd1_peft, kohya, to="kohya")
    with safe_open(sd1_peft, "pt") as a, safe_open(kohya, "pt") as b:
        key = "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"
        down = b.get_tensor("lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight")
        assert torch.equal(a.get_tensor(key), down)
        assert float(b.get_tensor("lora_unet_down_blocks_1_attentions_0_proj_in.alpha")) == 6.0


@pytest.mark.parametrize("save_as", ["safetensors", "pt"])
def test_kohya_lora_to_diffusers_fuses_to_the_same_weights(save_as, sd1_base, tmp_path):
    from tensorsafe.converter.run import convert

    src = at.kohya_lora_sd1(tmp_path / f"style.{save_as}", save_as=save_as)
    dst = tmp_path / "out"
    dst.mkdir()
    result = convert(src, dst / "pytorch_lora_weights.safetensors")
    assert result.direction == "kohya/A1111/ComfyUI LoRA -> diffusers/PEFT LoRA"
    meta = json.loads(header(Path(result.dst))["__metadata__"]["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 3.0 and meta["unet.alpha_pattern"]  # alphas carried per module
    original = at.fused_state("sd1", src)
    assert at.changed(sd1_base, original)
    assert same_weights(original, at.fused_state("sd1", Path(result.dst))) == []


def test_kohya_module_without_alpha_is_scale_one(tmp_path):
    from tensorsafe.converter.adapters import convert_lora

    src = at.kohya_lora_sd1(tmp_path / "k.safetensors", missing_alpha=True)
    result = convert_lora(src, tmp_path / "d.safetensors")
    assert any("1 modules have no alpha: alpha = rank (scale 1)" in n for n in result.notes)
    meta = json.loads(header(tmp_path / "d.safetensors")["__metadata__"]["lora_adapter_metadata"])
    entries = header(src)
    bare = [k.removesuffix(".lora_down.weight") for k in entries if k.endswith(".lora_down.weight")
            and k.replace(".lora_down.weight", ".alpha") not in entries]
    assert len(bare) == 1
    rank = entries[f"{bare[0]}.lora_down.weight"]["shape"][0]
    component, path = ("unet", bare[0].removeprefix("lora_unet_")) if bare[0].startswith("lora_unet_") else \
        ("text_encoder", bare[0].removeprefix("lora_te_text_model_"))
    patterns = {k.replace(".", "_"): v for k, v in meta[f"{component}.alpha_pattern"].items()}
    assert patterns[path] == rank and meta[f"{component}.lora_alpha"] != rank


@pytest.mark.slow
def test_sdxl_lora_to_kohya_uses_original_unet_names_and_fuses_the_same(tmp_path):
    from tensorsafe.converter.adapters import convert_lora

    src = at.peft_lora("sdxl", tmp_path / "peft", targets=["attn2.to_k", "proj_in", "conv1", "conv"])
    kohya, back = tmp_path / "kohya.safetensors", tmp_path / "back.safetensors"
    result = convert_lora(src, kohya)
    assert result.family.startswith("SDXL LoRA") and result.components == ["text_encoder", "text_encoder_2", "unet"]
    names = header(kohya)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight" in names
    assert "lora_unet_output_blocks_0_0_in_layers_2.lora_up.weight" in names  # resnet conv1, LDM spelling
    assert "lora_unet_input_blocks_3_0_op.lora_down.weight" in names  # the first downsampler
    assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in names  # the first upsampler
    assert any(k.startswith("lora_te1_text_model_") for k in names)
    assert any(k.startswith("lora_te2_text_model_") for k in names)
    assert not any(k.startswith("lora_unet_down_blocks") for k in names)
    convert_lora(kohya, back)
    original = at.fused_state("sdxl", src)
    assert same_weights(original, at.fused_state("sdxl", kohya)) == []
    assert same_lora(src, back)


def test_lycoris_is_refused_by_name_and_nothing_is_written(tmp_path):
    from safetensors.torch import save_file

    from tensorsafe.converter.run import convert
    from tensorsafe.errors import UnsupportedModelError

    src = tmp_path / "loha.safetensors"
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{base}.hada_w1_a": torch.zeros(4, 2), f"{base}.hada_w1_b": torch.zeros(2, 4),
               f"{base}.alpha": torch.tensor(1.0)}, src)
    with pytest.raises(UnsupportedModelError, match=r"LoHa \(LyCORIS hada_\* weights\)") as err:
        convert(src, tmp_path / "out.safetensors")
    assert err.value.evidence.endswith("hada_w1_a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loha.safetensors"]


def test_unknown_lora_keys_are_named(tmp_path):
    from safetensors.torch import save_file

    from tensorsafe.converter.adapters import convert_lora
    from tensorsafe.errors import ParseError

    src = tmp_path / "odd.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 2),
               "lora_unet_not_a_module.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_not_a_module.lora_up.weight": torch.zeros(4, 2)}, src)
    with pytest.raises(ParseError, match="lora_unet_not_a_module.lora_down.weight"):
        convert_lora(src, tmp_path / "out.safetensors")
    result = convert_lora(src, tmp_path / "out.safetensors", allow_unmapped=True)
    assert result.unmapped == ["lora_unet_not_a_module.lora_down.weight", "lora_unet_not_a_module.lora_up.weight"]
    assert len(header(tmp_path / "out.safetensors")) == 3  # two weights and the metadata


def test_dtype_casts_the_weights_and_keeps_alpha_exact(sd1_peft, tmp_path):
    from tensorsafe.converter.adapters import convert_lora

    convert_lora(sd1_peft, tmp_path / "k16.safetensors", to="kohya", dtype="fp16")
    entries = header(tmp_path / "k16.safetensors")
    dtypes = {v["dtype"] for k, v in entries.items() if k.endswith(".weight")}
    assert dtypes == {"F16"}
    assert {v["dtype"] for k, v in entries.items() if k.endswith(".alpha")} == {"F32"}


def test_cli_convert_lora_to_kohya(sd1_peft, tmp_path):
    from tests.cli_runner import invoke


    out = tmp_path / "k.safetensors"
    result = invoke(["convert", str(sd1_peft), str(out), "--to", "kohya"])
    assert result.exit_code == 0, result.output
    assert "diffusers/PEFT LoRA -> kohya/A1111/ComfyUI LoRA" in result.output
    assert "evidence: family SD1.x/SD2.x" in result.output
    assert "alpha carried in an .alpha tensor per module" in result.output


FP8 = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
       "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu"}


@pytest.mark.parametrize("name", sorted(FP8))
def test_fp8_tables_match_torch_for_every_byte(name):
    import numpy as np

    from tensorsafe.converter.fp8 import table

    expected = torch.arange(256, dtype=torch.uint8).view(getattr(torch, FP8[name])).float().numpy()
    assert np.array_equal(table(name), expected, equal_nan=True)
    assert np.array_equal(np.signbit(table(name)), np.signbit(expected))


@pytest.mark.parametrize("fp8", ["float8_e4m3fn", "float8_e5m2"])
def test_dtype_casts_an_fp8_checkpoint(fp8, tmp_path):
    """An fp8 single file converted with dtype fp16: every float tensor is fp16 and holds torch's cast."""
    from safetensors.torch import load_file, save_file

    from tensorsafe.converter.run import convert
    from tests import sd_tiny

    _, orig = sd_tiny.to_single_file("sd1")
    src = tmp_path / "fp8.safetensors"
    save_file({k: v.to(getattr(torch, fp8)) for k, v in orig.items()}, src)
    result = convert(src, tmp_path / "out", dtype="fp16")
    unet = load_file(tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in unet.values()} == {torch.float16}
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    expected = orig[key].to(getattr(torch, fp8)).to(torch.float16)
    assert torch.equal(unet["down_blocks.0.attentions.0.proj_in.weight"], expected)
    assert result.tensors == sum(len(load_file(p)) for p in (tmp_path / "out").glob("*/*.safetensors"))


def test_lora_in_fp8_casts_to_fp16(sd1_peft, tmp_path):
    from safetensors.torch import load_file, save_file

    from tensorsafe.converter.adapters import convert_lora

    weights = load_file(sd1_peft)
    src = tmp_path / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in weights.items()}, src)
    convert_lora(src, tmp_path / "k.safetensors", to="kohya", dtype="fp16")
    out = load_file(tmp_path / "k.safetensors")
    key = "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"
    down = out["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"]
    assert down.dtype == torch.float16
    assert torch.equal(down, weights[key].to(torch.float8_e4m3fn).to(torch.float16))


# ---- textual inversion ----------------------------------------------------------------------------------

def loaded_rows(vectors_file: Path, token: str, case: str = "sd1", key: str = "emb_params") -> torch.Tensor:
    """The token-embedding rows diffusers' load_textual_inversion adds for ``token`` from our file."""
    from safetensors.torch import load_file

    pipe = at.fresh_pipeline(case)
    before = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    pipe.load_textual_inversion(load_file(vectors_file)[key], token=token)
    return pipe.text_encoder.get_input_embeddings().weight[before:].detach()


def test_a1111_pt_embedding_converts_to_emb_params_with_its_token(tmp_path):
    from tensorsafe.converter.run import convert

    vectors = torch.randn(3, 32)
    src = tmp_path / "cat-style.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "<cat-style>",
                "step": 100, "sd_checkpoint_name": "v1-5"}, src)
    result = convert(src, tmp_path / "cat.safetensors")
    entries = header(tmp_path / "cat.safetensors")
    assert entries["__metadata__"]["token"] == "<cat-style>"
    assert entries["emb_params"]["shape"] == [3, 32]
    assert result.direction == "A1111 .pt embedding -> A1111 safetensors embedding (emb_params)"
    assert torch.equal(loaded_rows(tmp_path / "cat.safetensors", "<cat-style>"), vectors)


def test_diffusers_learned_embeds_converts_keeping_the_token(tmp_path):
    from tensorsafe.converter.adapters import convert_embedding

    vector = torch.randn(32)
    torch.save({"<tiny>": vector}, tmp_path / "learned_embeds.bin")
    out = tmp_path / "out"
    out.mkdir()
    result = convert_embedding(tmp_path / "learned_embeds.bin", out, dtype="fp16")
    assert result.dst == str(out / "<tiny>.safetensors")
    entries = header(out / "<tiny>.safetensors")
    assert entries["emb_params"] == {"dtype": "F16", "shape": [1, 32], "data_offsets": [0, 64]}
    assert torch.equal(loaded_rows(out / "<tiny>.safetensors", "<tiny>").half(), vector.half()[None])


def test_sdxl_embedding_keeps_clip_l_and_clip_g(tmp_path):
    from safetensors.torch import load_file, save_file

    from tensorsafe.converter.adapters import convert_embedding

    tensors = {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 40)}
    save_file(tensors, tmp_path / "xl.safetensors", metadata={"token": "<xl>"})
    result = convert_embedding(tmp_path / "xl.safetensors", tmp_path / "out.safetensors")
    assert result.components == ["text_encoder", "text_encoder_2"]
    out = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(out[k], v) for k, v in tensors.items())
    assert header(tmp_path / "out.safetensors")["__metadata__"]["token"] == "<xl>"


def test_an_embedding_pickle_that_runs_code_is_refused(tmp_path):
    import pickle

    from tensorsafe.converter.run import convert
    from tensorsafe.errors import UnsafeFileError

    class Boom:
        def __reduce__(self):
            return (print, ("never printed",))

    src = tmp_path / "evil.pt"
    src.write_bytes(pickle.dumps({"string_to_param": {"*": Boom()}, "name": "x"}, protocol=2))
    with pytest.raises(UnsafeFileError):
        convert(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# ---- VAE ------------------------------------------------------------------------------------------------

def test_vae_folder_to_single_file_and_back_loads_in_diffusers(tmp_path):
    from diffusers import AutoencoderKL

    from tensorsafe.converter.run import convert
    from tests import sd_tiny

    torch.manual_seed(4)
    vae = AutoencoderKL(**sd_tiny.VAE_KWARGS).eval()
    vae.save_pretrained(tmp_path / "vae")
    single = tmp_path / "vae.safetensors"
    there = convert(tmp_path / "vae", single)
    assert there.direction == "diffusers AutoencoderKL folder -> VAE single file"
    entries = header(single)
    assert entries["decoder.mid.attn_1.q.weight"]["shape"] == [64, 64, 1, 1]  # the original layout
    assert "encoder.down.0.block.0.conv1.weight" in entries
    back = convert(single, tmp_path / "back", model_type="sdxl")
    assert back.direction == "VAE single file -> diffusers AutoencoderKL folder"
    assert any("scaling_factor 0.13025" in n for n in back.notes)
    loaded = AutoencoderKL.from_pretrained(tmp_path / "back")
    assert loaded.config.scaling_factor == 0.13025
    original = vae.state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.state_dict().items())
    assert loaded.state_dict().keys() == original.keys()


def test_vae_of_a_checkpoint_layout_converts(tmp_path):
    """``first_stage_model.*`` keys (a VAE cut out of a checkpoint, training-loss weights included)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from tensorsafe.converter.adapters import convert_vae
    from tests import sd_tiny

    _, orig = sd_tiny.to_single_file("sd1")
    vae_part = {k: v for k, v in orig.items() if k.startswith("first_stage_model.")}
    vae_part["first_stage_model.loss.logvar"] = torch.zeros(())
    save_file(vae_part, tmp_path / "vae.safetensors")
    result = convert_vae(tmp_path / "vae.safetensors", tmp_path / "vae")
    assert "first_stage_model.loss.logvar" in result.dropped
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae").state_dict()
    expected = sd_tiny.models("sd1")["vae"].state_dict()
    assert all(torch.equal(expected[k], v) for k, v in loaded.items())


# ---- names ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["sd1", "sdxl"])
def test_every_adaptable_module_name_round_trips_through_kohya(case):
    """Every Linear/Conv2d of the UNet and text encoders: diffusers path -> kohya name -> the same path
    (SDXL through its original-layout names, which must be the UNet key map's); SD1.x original-layout
    names (some trainers write them) read back to the same path too."""
    from tensorsafe.converter.adapters.lora_names import SD, SDXL, is_module, kohya_to_module, module_to_kohya
    from tensorsafe.converter.keymaps import unet as unet_map
    from tensorsafe.converter.keymaps.clip import with_text_model_prefix

    family = SDXL if case == "sdxl" else SD
    from tests import pipeline_tiny

    models = {c: m for c, m in pipeline_tiny.models(case).items() if c != "vae"}  # read, not changed
    checked = 0
    orig_keys = unet_map.RuleSet(unet_map.rules(unet_map.layout_from_diff(models["unet"].state_dict())))
    for component, model in models.items():
        for name, module in model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            path = name if component == "unet" else with_text_model_prefix(name)
            assert is_module(component, path), path  # every Linear and Conv2d may carry a LoRA
            kohya = module_to_kohya(component, path, family)
            assert kohya_to_module(kohya, family) == (component, path), kohya
            if component == "unet":  # original-layout names, from the layout of the model itself
                ldm = "lora_unet_" + orig_keys.to_orig(path + ".weight")[: -len(".weight")].replace(".", "_")
                assert kohya == ldm if family == SDXL else kohya_to_module(ldm, family) == (component, path)
            checked += 1
    assert checked > 100


def test_a_lora_needs_a_file_or_folder_destination(sd1_peft, tmp_path):
    from tensorsafe.converter.run import convert
    from tensorsafe.errors import UsageError

    with pytest.raises(UsageError, match="this is a LoRA: it converts to a .safetensors file or into an existing"):
        convert(sd1_peft, tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []
    result = convert(sd1_peft, tmp_path, to="kohya")  # into the folder, under the source's name
    assert result.dst == str(tmp_path / "pytorch_lora_weights.safetensors")


def test_sd2_lora_to_kohya_fuses_the_same(tmp_path):
    """SD2.x: linear proj_in/proj_out, OpenCLIP-sized text encoder in CLIP names; kohya names as for SD1.x."""
    from tensorsafe.converter.adapters import convert_lora

    src = at.peft_lora("sd2", tmp_path / "peft", targets=["attn2.to_k", "attn1.to_out.0", "proj_in"])
    result = convert_lora(src, tmp_path / "kohya.safetensors")
    assert result.family.startswith("SD1.x/SD2.x LoRA")
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in header(tmp_path / "kohya.safetensors")
    original = at.fused_state("sd2", src)
    assert same_weights(original, at.fused_state("sd2", tmp_path / "kohya.safetensors")) == []


def test_a_diffusers_lora_folder_converts_as_its_file(sd1_peft, tmp_path):
    from tensorsafe.converter.run import convert

    result = convert(sd1_peft.parent, tmp_path / "kohya.safetensors")  # the folder save_lora_weights wrote
    assert result.src == str(sd1_peft.resolve())
    assert result.direction == "diffusers/PEFT LoRA -> kohya/A1111/ComfyUI LoRA"
