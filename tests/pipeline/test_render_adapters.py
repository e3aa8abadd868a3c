"""``render --lora/--embedding/--vae`` against diffusers: within 2/255 per channel of what diffusers renders
with ``load_lora_weights`` + ``set_adapters`` + ``fuse_lora``, ``load_textual_inversion`` and a swapped VAE."""
from __future__ import annotations


import numpy as np
import pytest

from tests import adapters_tiny as at
from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (fixture)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

TOLERANCE = 2  # of 255, per channel
PROMPT = "a tiny cat on a mat"


def diffusers_image(case: str, *, loras=(), embeddings=(), vae=None, prompt: str = PROMPT, steps: int = 2):
    """diffusers' own render of the case's saved folder with the adapters applied its way (uint8 HWC)."""
    from diffusers import EulerDiscreteScheduler

    at.allow_installed_peft()
    pt._quiet()
    folder = pt.saved_folder(case)
    family, in_channels = pt.CASES[case][:2]
    pipe = pt.pipeline_class(family, in_channels).from_pretrained(folder, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"a{i}")
        names.append(f"a{i}")
    if names:
        pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
    for load in embeddings:
        load(pipe)
    if vae is not None:
        pipe.vae = vae
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, height=pt.SIZE, width=pt.SIZE,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    return (out.images[0] * 255).round().astype(np.int16)


def ours(case: str, prompt: str = PROMPT, **adapters) -> np.ndarray:
    from tensorsafe.pipeline import render

    image = render(pt.saved_folder(case), prompt, steps=2, seed=0, scheduler="euler", **adapters)
    return np.asarray(image).astype(np.int16)


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert int(np.abs(a - b).max()) <= TOLERANCE


@pytest.mark.slow
def test_lora_in_either_format_renders_as_diffusers_fuses_it(tmp_path):
    peft = at.peft_lora("sd1", tmp_path / "peft")
    kohya = at.kohya_lora_sd1(tmp_path / "style.safetensors", text_targets=["fc1"])
    loras = [(peft, 0.7), (kohya, 0.5)]  # both at once: a format applied wrongly would show
    mine = ours("sd1", loras=[f"{peft}:0.7", (kohya, 0.5)])
    assert int(np.abs(mine - ours("sd1")).max()) > 10 * TOLERANCE  # the LoRAs do change the picture
    assert_close(mine, diffusers_image("sd1", loras=loras))


def test_embedding_token_renders_as_load_textual_inversion(tmp_path):
    from tensorsafe.converter.adapters import convert_embedding

    torch.manual_seed(3)
    vectors = torch.randn(2, 32)
    src = tmp_path / "tiny-cat.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "<tiny-cat>",
                "step": 10}, src)
    converted = tmp_path / "tiny-cat.safetensors"
    convert_embedding(src, converted)
    prompt = "a photo of <tiny-cat> on a mat"
    plain = ours("sd1", prompt)
    mine = ours("sd1", prompt, embeddings=[converted])
    assert int(np.abs(mine - plain).max()) > 10 * TOLERANCE

    def load(pipe):
        from safetensors.torch import load_file

        pipe.load_textual_inversion(load_file(converted)["emb_params"], token="<tiny-cat>")

    assert_close(mine, diffusers_image("sd1", embeddings=[load], prompt=prompt))
    assert_close(ours("sd1", prompt, embeddings=[src]), mine)  # the A1111 .pt itself, read without pickle code


def test_vae_file_renders_as_diffusers_with_that_vae(tmp_path):
    from diffusers import AutoencoderKL

    from tensorsafe.converter.adapters import convert_vae
    from tests import sd_tiny

    torch.manual_seed(7)
    other = AutoencoderKL(**sd_tiny.VAE_KWARGS).eval()
    other.save_pretrained(tmp_path / "vae-folder")
    single = tmp_path / "other-vae.safetensors"
    convert_vae(tmp_path / "vae-folder", single)
    reloaded = AutoencoderKL.from_pretrained(tmp_path / "vae-folder")
    mine = ours("sd1", vae=single)
    assert_close(mine, diffusers_image("sd1", vae=reloaded))
    assert int(np.abs(mine - ours("sd1")).max()) > 10 * TOLERANCE


def test_cli_render_with_lora_and_embedding(tmp_path):
    from tests.cli_runner import invoke


    kohya = at.kohya_lora_sd1(tmp_path / "style.safetensors")
    torch.save({"<tiny>": torch.randn(32)}, tmp_path / "learned_embeds.bin")
    out = tmp_path / "out.png"
    result = invoke(["render", str(pt.saved_folder("sd1")), "-p", "a <tiny> cat", "--steps", "1",
                                                 "--lora", f"{kohya}:0.5", "--embedding",
                                                 str(tmp_path / "learned_embeds.bin"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "with LoRA style.safetensors x0.5: SD1.x/SD2.x LoRA (kohya/A1111/ComfyUI)" in result.output
    assert "with embedding '<tiny>' (text_encoder (1, 32)) from learned_embeds.bin" in result.output
    from PIL import Image

    assert "style.safetensors x0.5" in Image.open(out).text["tensorsafe"]


def test_lora_for_another_family_is_refused(tmp_path):
    from safetensors.torch import save_file

    from tensorsafe.errors import ParseError
    from tensorsafe.pipeline import render

    name = "lora_unet_input_blocks_4_1_proj_in"  # SDXL: a linear; SD1.x: a 1x1 convolution
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 64), f"{name}.lora_up.weight": torch.zeros(64, 2)},
              tmp_path / "xl.safetensors")
    with pytest.raises(ParseError, match=r"does not fit its weight \[64, 64, 1, 1\] \(a LoRA for another family"):
        render(pt.saved_folder("sd1"), PROMPT, steps=1, loras=[tmp_path / "xl.safetensors"])
    name = "lora_te2_text_model_encoder_layers_0_mlp_fc1"
    save_file({f"{name}.lora_down.weight": torch.zeros(2, 40), f"{name}.lora_up.weight": torch.zeros(83, 2)},
              tmp_path / "te2.safetensors")
    with pytest.raises(ParseError, match="adapts text_encoder_2, which the model lacks"):
        render(pt.saved_folder("sd1"), PROMPT, steps=1, loras=[tmp_path / "te2.safetensors"])


@pytest.mark.slow
def test_sdxl_lora_and_embedding_render_as_diffusers(tmp_path):
    from safetensors.torch import load_file, save_file

    lora = at.peft_lora("sdxl", tmp_path / "peft", targets=["attn2.to_k", "proj_in", "conv1"])
    torch.manual_seed(5)
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 40)}, tmp_path / "xl.safetensors",
              metadata={"token": "<xl>"})
    prompt = "a <xl> lighthouse"
    mine = ours("sdxl", prompt, loras=[(lora, 0.8)], embeddings=[tmp_path / "xl.safetensors"])
    assert int(np.abs(mine - ours("sdxl", prompt)).max()) > 10 * TOLERANCE

    def load(pipe):
        vectors = load_file(tmp_path / "xl.safetensors")
        pipe.load_textual_inversion(vectors["clip_l"], token="<xl>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(vectors["clip_g"], token="<xl>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)

    assert_close(mine, diffusers_image("sdxl", loras=[(lora, 0.8)], embeddings=[load], prompt=prompt))


def test_embedding_tokens_tokenize_as_transformers_and_diffusers():
    """Added tokens (any case, multi-vector ``token_1``...) give the ids transformers' tokenizer gives after
    diffusers' ``maybe_convert_prompt``."""
    from transformers import CLIPTokenizer as Reference

    from tensorsafe.pipeline.tokenizer import CLIPTokenizer

    folder = pt._token_folder("<|endoftext|>")
    reference, mine = Reference.from_pretrained(folder), CLIPTokenizer.from_folder(folder)
    for token, n in (("<MyTok>", 1), ("<multi>", 3), ("Zeta", 1)):
        reference.add_tokens([token] + [f"{token}_{i}" for i in range(1, n)])
        assert mine.add_embedding_tokens(token, n) == len(reference) - n
    pipe = type("TI", (), {})()  # diffusers' prompt rewriting is a mixin method that needs no pipeline state
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin

    for prompt in ("a <MyTok> cat", "a <mytok> cat", "x <multi> y", "ZETA zeta Zeta!", "<MyTok><multi>"):
        rewritten = TextualInversionLoaderMixin._maybe_convert_prompt(pipe, prompt, reference)
        expected = reference(rewritten, padding="max_length", max_length=77, truncation=True).input_ids
        assert mine(prompt) == expected, prompt
