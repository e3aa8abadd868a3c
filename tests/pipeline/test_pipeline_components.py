"""Each part of the reference pipeline against its oracle: transformers' CLIP text models, diffusers'
UNet2DConditionModel, AutoencoderKL, EulerDiscreteScheduler and DDIMScheduler.

Modules are built from the oracle's own config and loaded through tensorsafe's weight loader
(shape-checked, assigned on the meta device), then fed the same inputs.
"""
from __future__ import annotations

import pytest
import torch

from tensorsafe.pipeline import text_encoder as te
from tensorsafe.pipeline.schedulers import DDIM, EulerDiscrete
from tensorsafe.pipeline.unet import UNet2DConditionModel
from tensorsafe.pipeline.vae import AutoencoderKL, canonical_state
from tensorsafe.pipeline.weights import load_module
from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)
from tests import sd_tiny

ATOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' numpy use


def _ours(make, module, rename=None):
    state = dict(module.state_dict())
    state = rename(state) if rename else state
    return load_module(make, state, component="test", source="memory", device=torch.device("cpu"),
                       dtype=torch.float32)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> float:
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= atol * max(1.0, b.abs().max().item()), diff
    return diff


# ---- text encoders ---------------------------------------------------------------------------------------

def _text_state(state):
    return {k2: v for k, v in state.items() if (k2 := te.canonical_key(k)) is not None}


TEXT_CASES = [("quick_gelu", 2, False), ("gelu", 2, False), ("gelu", 2, True), ("quick_gelu", 49407, True)]


@pytest.mark.parametrize("act,eos,projection", TEXT_CASES, ids=[f"{a}-eos{e}-{'proj' if p else 'plain'}"
                                                                  for a, e, p in TEXT_CASES])
def test_text_encoder_matches_transformers(act, eos, projection):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    kwargs = dict(sd_tiny.te_kwargs(36, act, 12), vocab_size=pt.VOCAB, eos_token_id=eos)
    cfg = CLIPTextConfig(**kwargs)
    ref = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    config = cfg.to_dict() | {"architectures": [type(ref).__name__]}
    ours = _ours(lambda: te.CLIPTextModel(config), ref, _text_state)
    # ids with the end token in the middle, padding after it, and a batch of two different lengths
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70,
                        [49406, 3306, 0, 0, 1002, 49407] + [0] * 71])
    with torch.no_grad():
        r = ref(ids, output_hidden_states=True)
        o = ours(ids)
    assert len(o.hidden_states) == len(r.hidden_states) == 3
    for a, b in zip(o.hidden_states, r.hidden_states):
        _close(a, b)
    _close(o.last_hidden_state, r.last_hidden_state)
    if projection:
        _close(o.text_embeds, r.text_embeds)
    else:
        _close(o.pooled, r.pooler_output)


def test_text_encoder_reads_both_key_spellings():
    """transformers 5 saves ``embeddings.*``; the converter writes ``text_model.embeddings.*``: same module."""
    ms = pt.models("sd1")
    state = ms["text_encoder"].state_dict()
    assert not any(k.startswith("text_model.") for k in state)
    config = ms["text_encoder"].config.to_dict()
    a = _ours(lambda: te.CLIPTextModel(config), ms["text_encoder"], _text_state)
    b = load_module(lambda: te.CLIPTextModel(config), _text_state({f"text_model.{k}": v for k, v in state.items()}),
                    component="te", source="memory", device=torch.device("cpu"), dtype=torch.float32)
    ids = torch.tensor([[49406, 320, 49407] + [49407] * 74])
    assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)


# ---- UNet ------------------------------------------------------------------------------------------------

UNET_CASES = [("sd1", 4), ("sd2", 4), ("sdxl", 4), ("sdxl-refiner", 4), ("sd1", 9), ("sd2", 5), ("sd1", 8),
              ("sdxl", 9)]


@pytest.mark.parametrize("family,in_channels", UNET_CASES, ids=[f"{f}-{c}ch" for f, c in UNET_CASES])
def test_unet_matches_diffusers(family, in_channels):
    ref = pt.models(family, in_channels)["unet"]
    config = dict(ref.config)
    ours = _ours(lambda: UNet2DConditionModel(config), ref)
    gen = torch.Generator().manual_seed(1)
    # odd latents (12 for SD's 8x reduction, 10 for SDXL's 4x): the up blocks take their skip's size
    odd = {"sd1": 12, "sdxl": 10}.get(family) if in_channels == 4 else None
    runs = [(8, torch.tensor([501.5, 17.0]))] + ([(odd, torch.tensor(1, dtype=torch.int64))] if odd else [])
    for size, t in runs:
        x = torch.randn(2, in_channels, size, size, generator=gen)
        context = torch.randn(2, 77, config["cross_attention_dim"], generator=gen)
        added = {}
        if config["addition_embed_type"] == "text_time":
            n = 5 if family == "sdxl-refiner" else 6
            added = {"text_embeds": torch.randn(2, sd_tiny.TE2_PROJECTION, generator=gen),
                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64][:n], [96.0, 64, 8, 0, 2.5, 64][:n]])}
        with torch.no_grad():
            expected = ref(x, t, context, added_cond_kwargs=added or None).sample
            got = ours(x, t, context, added.get("text_embeds"), added.get("time_ids"))
        _close(got, expected)


def test_unet_config_is_the_constructor():
    """A config with per-level lists, a plain mid block and its own time width builds what diffusers builds."""
    from diffusers import UNet2DConditionModel as Ref

    torch.manual_seed(3)
    ref = Ref(sample_size=8, in_channels=4, out_channels=4, layers_per_block=(1, 2), block_out_channels=(32, 64),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",
                                                                                     "CrossAttnUpBlock2D"),
              cross_attention_dim=(24, 24), attention_head_dim=(2, 4), transformer_layers_per_block=(2, 1),
              mid_block_type="UNetMidBlock2D", norm_num_groups=16, norm_eps=1e-6, time_embedding_dim=96,
              freq_shift=1, flip_sin_to_cos=False).eval()
    ours = _ours(lambda: UNet2DConditionModel(dict(ref.config)), ref)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 24)
    with torch.no_grad():
        _close(ours(x, torch.tensor(300.0), ctx), ref(x, torch.tensor(300.0), ctx).sample)


def test_unet_refuses_what_it_does_not_implement():
    from tensorsafe.errors import UsageError

    with pytest.raises(UsageError, match="class_embed_type"):
        UNet2DConditionModel({**pt.models("sd1")["unet"].config, "class_embed_type": "projection"})


# ---- VAE -------------------------------------------------------------------------------------------------

def test_vae_matches_diffusers():
    ref = pt.models("sd1")["vae"]
    config = dict(ref.config)
    ours = _ours(lambda: AutoencoderKL(config), ref, canonical_state)
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 64, 48, generator=gen) * 2 - 1
    z = torch.randn(2, 4, 8, 6, generator=gen)
    with torch.no_grad():
        _close(ours.decode(z), ref.decode(z).sample)
        dist = ref.encode(image).latent_dist
        mean, std = ours.encode(image)
        _close(mean, dist.mean)
        _close(std, dist.std)
        drawn = dist.sample(torch.Generator().manual_seed(5))
        _close(ours.sample(image, torch.Generator().manual_seed(5)), drawn)
        _close(ours.from_latents(z), ref.decode(z / config["scaling_factor"]).sample)
    assert ours.scale_factor == 8


def test_vae_reads_old_attention_names():
    """Folders saved before diffusers ~0.14 spell the mid attention query/key/value/proj_attn, as 1x1 convs."""
    ref = pt.models("sd1")["vae"]
    old = {}
    for key, value in ref.state_dict().items():
        for new, name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f"attentions.0.{new}." in key:
                key = key.replace(f".{new}.", f".{name}.")
                value = value[:, :, None, None] if value.ndim == 2 else value
        old[key] = value
    assert any(".query.weight" in k for k in old)
    ours = load_module(lambda: AutoencoderKL(dict(ref.config)), canonical_state(old), component="vae",
                       source="memory", device=torch.device("cpu"), dtype=torch.float32)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        _close(ours.decode(z), ref.decode(z).sample)


# ---- schedulers ------------------------------------------------------------------------------------------

BASE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SCHEDULES = [
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "leading", "steps_offset": 0, "prediction_type": "v_prediction"},
    {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    {"timestep_spacing": "linspace"},
    {"timestep_spacing": "linspace", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min", "clip_sample": False, "set_alpha_to_one": False},
]


@pytest.mark.parametrize("extra", SCHEDULES, ids=[f"s{i}" for i in range(len(SCHEDULES))])
@pytest.mark.parametrize("steps", [1, 3, 7, 50])
@pytest.mark.parametrize("name", ["euler", "ddim"])
def test_scheduler_matches_diffusers(name, steps, extra):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    config = {**BASE, **extra}
    ref = (EulerDiscreteScheduler if name == "euler" else DDIMScheduler).from_config(config)
    ours = (EulerDiscrete if name == "euler" else DDIM)(config)
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.timesteps.dtype == ref.timesteps.dtype
    if name == "euler":
        assert torch.equal(ours.sigmas, ref.sigmas)
    assert float(ours.init_noise_sigma) == float(ref.init_noise_sigma)
    gen = torch.Generator().manual_seed(steps)
    original, noise = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    start = steps // 2
    ref.set_begin_index(start) if name == "euler" else None
    expected = ref.add_noise(original, noise, ref.timesteps[start:start + 1])
    assert torch.equal(ours.add_noise(original, noise, start), expected)
    ref.set_timesteps(steps)
    sample = noise * ours.init_noise_sigma
    for i, t in enumerate(ref.timesteps):
        output = torch.randn(1, 4, 8, 8, generator=gen)
        assert torch.equal(ours.scale_model_input(sample, i), ref.scale_model_input(sample, t))
        expected = ref.step(output, t, sample).prev_sample
        got = ours.step(output, i, sample)
        assert torch.equal(got, expected), (i, (got - expected).abs().max())
        sample = expected


def test_scheduler_fills_missing_keys_with_its_own_defaults():
    """As diffusers' from_config: DDIM from an Euler config clips (its default), Euler from DDIM spaces linearly."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    euler_cfg = {**BASE, "timestep_spacing": "leading", "steps_offset": 1}
    assert DDIM(euler_cfg).config["clip_sample"] is DDIMScheduler.from_config(euler_cfg).config.clip_sample is True
    ddim_cfg = {**BASE, "clip_sample": False}
    ours, ref = EulerDiscrete(ddim_cfg), EulerDiscreteScheduler.from_config(ddim_cfg)
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    assert ours.config["timestep_spacing"] == ref.config.timestep_spacing == "linspace"
    assert torch.equal(ours.timesteps, ref.timesteps)


def test_scheduler_refuses_unknown_settings():
    from tensorsafe.errors import UsageError
    from tensorsafe.pipeline.schedulers import make_scheduler

    with pytest.raises(UsageError, match="prediction_type"):
        make_scheduler("euler", {**BASE, "prediction_type": "sample"})
    with pytest.raises(UsageError, match="euler, ddim"):
        make_scheduler("pndm", BASE)
    with pytest.raises(UsageError, match="use_karras_sigmas"):
        make_scheduler("euler", {**BASE, "use_karras_sigmas": True})
    assert torch.isfinite(make_scheduler("euler", {**BASE, "rescale_betas_zero_snr": True}).alphas_cumprod[-1])
