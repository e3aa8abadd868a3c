"""Sane ranges for every config value and option the reference pipeline reads, checked before it builds anything.

A diffusers folder is untrusted input: a UNet ``sample_size`` of 100000 or a scheduler with 10^12
training steps would otherwise reach torch as an allocation of terabytes, and a missing or
mistyped key as a ``KeyError`` deep in a module constructor. Each value is checked here against a
range that every released Stable Diffusion model sits well inside (SDXL's widths are 1280, its
text tower 1280 wide with 32 layers), and refused with one line naming the file, the key and the
value. Nothing here imports torch, so a refusal costs milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tensorsafe.errors import ParseError, UsageError

MAX_BLOCKS = 8            # UNet/VAE resolution levels (SD: 4, SDXL: 3)
MAX_WIDTH = 8192          # channels of any block or hidden layer (SD/SDXL: at most 1280)
MAX_LAYERS = 16           # resnets per block
MAX_DEPTH = 64            # transformer blocks per attention layer (SDXL: 10)
MAX_HEADS = 256
MAX_CHANNELS = 64         # image / latent channels (inpaint UNet: 9)
MAX_SAMPLE_SIZE = 2048    # UNet sample_size, in latents (SD1: 64, SDXL: 128): 16384 pixels
MAX_VOCAB = 1_000_000     # CLIP: 49408
MAX_POSITIONS = 4096      # CLIP: 77
MAX_TEXT_LAYERS = 128     # OpenCLIP bigG: 32
MAX_TRAIN_TIMESTEPS = 100_000  # every SD scheduler: 1000
MAX_SIDE = 16384          # image width or height, in pixels
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_PROMPT_CHARS = 100_000  # CLIP keeps 77 tokens; this only bounds the tokenizer's work
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed takes
ACTIVATION_NAMES = ("quick_gelu", "gelu", "gelu_new")  # text_encoder.ACTIVATIONS


# ---- value checks -----------------------------------------------------------------------------------------

def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Where:
    """The file (or option group) a value comes from, for the error."""

    path: Path | str | None
    label: str
    option: bool = False

    def fail(self, message: str) -> Exception:
        if self.option:
            return UsageError(message)
        return ParseError(message, path=self.path if self.path is not None else self.label)


def integer(where: Where, key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.fail(f"{key} must be an integer, not {_show(value)}")  # the builders use the value as read
    if not lo <= value <= hi:
        raise where.fail(f"{key} {_show(value)} is outside {lo}..{hi}")
    return value


def number(where: Where, key: str, value: object, lo: float, hi: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.fail(f"{key} must be a number, not {_show(value)}")
    ok = math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi
    if not ok:
        raise where.fail(f"{key} {_show(value)} is outside {'(' if open_low else ''}{lo}..{hi}")
    return float(value)


def boolean(where: Where, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise where.fail(f"{key} must be true or false, not {_show(value)}")
    return value


def choice(where: Where, key: str, value: object, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise where.fail(f"{key} {_show(value)} is not one of {', '.join(map(repr, options))}")
    return value


def int_list(where: Where, key: str, value: object, lo: int, hi: int, *, min_len: int = 1, max_len: int = MAX_BLOCKS
             ) -> list[int]:
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len:
        raise where.fail(f"{key} must be a list of {min_len}..{max_len} integers, not {_show(value)}")
    return [integer(where, f"{key}[{i}]", v, lo, hi) for i, v in enumerate(value)]


def per_block(where: Where, key: str, value: object, n: int, lo: int, hi: int) -> list[int]:
    """An integer, or one per block."""
    if isinstance(value, (list, tuple)):
        return int_list(where, key, value, lo, hi, min_len=n, max_len=n)
    return [integer(where, key, value, lo, hi)] * n


def required(where: Where, cfg: dict, key: str) -> object:
    if cfg.get(key) is None:
        raise where.fail(f"{key} is missing")
    return cfg[key]


def _depths(where: Where, key: str, value: object, layers: list[int], per_block_only: bool = False) -> None:
    """Transformer depth: one number, one per block, or (per block) one per layer of that block."""
    n = len(layers)
    if not isinstance(value, (list, tuple)):
        if per_block_only:
            raise where.fail(f"{key} must list one entry per block ({n}), not {_show(value)}")
        integer(where, key, value, 1, MAX_DEPTH)
        return
    if len(value) != n:
        raise where.fail(f"{key} has {len(value)} entries for {n} blocks")
    for i, item in enumerate(value):
        if isinstance(item, (list, tuple)):
            int_list(where, f"{key}[{i}]", item, 1, MAX_DEPTH, min_len=layers[i], max_len=layers[i])
        else:
            integer(where, f"{key}[{i}]", item, 1, MAX_DEPTH)


def _divisible(where: Where, what: str, channels: int, by: int, by_what: str) -> None:
    if channels % by:
        raise where.fail(f"{what} {channels} is not a multiple of {by_what} {by}")


# ---- components ---------------------------------------------------------------------------------------------

def check_unet(cfg: dict, path: Path | str = "unet/config.json") -> None:
    """``cfg`` is the config with diffusers' defaults filled in (``unet.unet_config``)."""
    w = Where(path, "unet/config.json")
    widths = int_list(w, "block_out_channels", cfg["block_out_channels"], 1, MAX_WIDTH)
    n = len(widths)
    for key in ("down_block_types", "up_block_types"):
        if not isinstance(cfg[key], (list, tuple)) or len(cfg[key]) != n:
            raise w.fail(f"{key} must list one block type per entry of block_out_channels ({n})")
    integer(w, "in_channels", cfg["in_channels"], 1, MAX_CHANNELS)
    integer(w, "out_channels", cfg["out_channels"], 1, MAX_CHANNELS)
    groups = integer(w, "norm_num_groups", cfg["norm_num_groups"], 1, MAX_WIDTH)
    for i, c in enumerate(widths):
        _divisible(w, f"block_out_channels[{i}]", c, groups, "norm_num_groups")
    number(w, "norm_eps", cfg["norm_eps"], 0.0, 1.0, open_low=True)
    heads = per_block(w, "attention_head_dim", cfg["attention_head_dim"], n, 1, MAX_HEADS)
    per_block(w, "cross_attention_dim", cfg["cross_attention_dim"], n, 1, MAX_WIDTH)
    layers = per_block(w, "layers_per_block", cfg["layers_per_block"], n, 1, MAX_LAYERS)
    _depths(w, "transformer_layers_per_block", cfg["transformer_layers_per_block"], layers)
    if cfg.get("reverse_transformer_layers_per_block") is not None:
        _depths(w, "reverse_transformer_layers_per_block", cfg["reverse_transformer_layers_per_block"],
                [x + 1 for x in layers[::-1]], per_block_only=True)
    only = cfg["only_cross_attention"]
    if isinstance(only, (list, tuple)) and len(only) != n:
        raise w.fail(f"only_cross_attention has {len(only)} entries for {n} blocks")
    for i, v in enumerate(only if isinstance(only, (list, tuple)) else [only]):
        boolean(w, "only_cross_attention" if not isinstance(only, (list, tuple)) else f"only_cross_attention[{i}]", v)
    up_types = list(cfg["up_block_types"])[::-1]
    for i, (c, h) in enumerate(zip(widths, heads)):
        attends = "CrossAttn" in str(cfg["down_block_types"][i]) or "CrossAttn" in str(up_types[i]) or \
            (i == n - 1 and "CrossAttn" in str(cfg.get("mid_block_type")))
        if attends:
            _divisible(w, f"block_out_channels[{i}]", c, h, "its head count (attention_head_dim)")
    boolean(w, "flip_sin_to_cos", cfg["flip_sin_to_cos"])
    number(w, "freq_shift", cfg["freq_shift"], 0.0, 1.0)
    boolean(w, "use_linear_projection", cfg["use_linear_projection"])
    integer(w, "downsample_padding", cfg["downsample_padding"], 0, 2)
    for key in ("conv_in_kernel", "conv_out_kernel"):
        k = integer(w, key, cfg[key], 1, 7)
        if k % 2 == 0:
            raise w.fail(f"{key} {k} must be odd")
    if cfg["time_embedding_dim"] is not None:
        integer(w, "time_embedding_dim", cfg["time_embedding_dim"], 1, 4 * MAX_WIDTH)
    if cfg["addition_embed_type"] == "text_time":
        integer(w, "addition_time_embed_dim", required(w, cfg, "addition_time_embed_dim"), 2, MAX_WIDTH)
        integer(w, "projection_class_embeddings_input_dim", required(w, cfg, "projection_class_embeddings_input_dim"),
                1, 8 * MAX_WIDTH)
    if cfg.get("sample_size") is not None:
        integer(w, "sample_size", cfg["sample_size"], 1, MAX_SAMPLE_SIZE)


def check_vae(cfg: dict, path: Path | str = "vae/config.json") -> None:
    """``cfg`` is the config with defaults filled in (``vae.vae_config``)."""
    w = Where(path, "vae/config.json")
    widths = int_list(w, "block_out_channels", cfg["block_out_channels"], 1, MAX_WIDTH)
    groups = integer(w, "norm_num_groups", cfg["norm_num_groups"], 1, MAX_WIDTH)
    for i, c in enumerate(widths):
        _divisible(w, f"block_out_channels[{i}]", c, groups, "norm_num_groups")
    integer(w, "in_channels", cfg["in_channels"], 1, MAX_CHANNELS)
    integer(w, "out_channels", cfg["out_channels"], 1, MAX_CHANNELS)
    integer(w, "layers_per_block", cfg["layers_per_block"], 1, MAX_LAYERS)
    latent = integer(w, "latent_channels", cfg["latent_channels"], 1, MAX_CHANNELS)
    number(w, "scaling_factor", cfg["scaling_factor"], 0.0, 1e4, open_low=True)
    for key in ("force_upcast", "mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"):
        boolean(w, key, cfg[key])
    for key in ("latents_mean", "latents_std"):
        values = cfg.get(key)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != latent:
            raise w.fail(f"{key} must list one number per latent channel ({latent}), not {_show(values)}")
        for i, v in enumerate(values):
            number(w, f"{key}[{i}]", v, 0.0 if key == "latents_std" else -1e4, 1e4, open_low=key == "latents_std")


def check_text_encoder(cfg: dict, path: Path | str, label: str = "text_encoder/config.json") -> None:
    w = Where(path, label)
    vocab = integer(w, "vocab_size", required(w, cfg, "vocab_size"), 1, MAX_VOCAB)
    width = integer(w, "hidden_size", required(w, cfg, "hidden_size"), 1, MAX_WIDTH)
    heads = integer(w, "num_attention_heads", required(w, cfg, "num_attention_heads"), 1, MAX_HEADS)
    _divisible(w, "hidden_size", width, heads, "num_attention_heads")
    integer(w, "num_hidden_layers", required(w, cfg, "num_hidden_layers"), 1, MAX_TEXT_LAYERS)
    integer(w, "intermediate_size", required(w, cfg, "intermediate_size"), 1, 8 * MAX_WIDTH)
    integer(w, "max_position_embeddings", required(w, cfg, "max_position_embeddings"), 1, MAX_POSITIONS)
    number(w, "layer_norm_eps", cfg.get("layer_norm_eps", 1e-5), 0.0, 1.0, open_low=True)
    choice(w, "hidden_act", cfg.get("hidden_act", "quick_gelu"), ACTIVATION_NAMES)
    integer(w, "projection_dim", cfg.get("projection_dim", 768), 1, MAX_WIDTH)
    integer(w, "eos_token_id", cfg.get("eos_token_id", 2), 0, vocab - 1 if vocab > 2 else 2)
    arch = cfg.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise w.fail(f"architectures must be a list of names, not {_show(arch)}")


SCHEDULES = ("linear", "scaled_linear")


def check_scheduler(cfg: dict, path: Path | str = "scheduler/scheduler_config.json") -> None:
    """The keys the Euler and DDIM samplers read, whichever of them renders."""
    w = Where(path, "scheduler/scheduler_config.json")
    n = integer(w, "num_train_timesteps", cfg.get("num_train_timesteps", 1000), 1, MAX_TRAIN_TIMESTEPS)
    betas = cfg.get("trained_betas")
    if betas is not None:
        if not isinstance(betas, (list, tuple)) or len(betas) != n:
            raise w.fail(f"trained_betas must list {n} numbers (num_train_timesteps), not {_show(betas)}")
        for i, b in enumerate(betas):
            number(w, f"trained_betas[{i}]", b, 0.0, 1.0, open_low=True)
            if b >= 1.0:
                raise w.fail(f"trained_betas[{i}] {_show(b)} is outside (0.0..1.0)")
    else:
        choice(w, "beta_schedule", cfg.get("beta_schedule", "linear"), SCHEDULES)
        for key, default in (("beta_start", 0.0001), ("beta_end", 0.02)):
            if number(w, key, cfg.get(key, default), 0.0, 1.0, open_low=True) >= 1.0:
                raise w.fail(f"{key} {_show(cfg[key])} is outside (0.0..1.0)")
    integer(w, "steps_offset", cfg.get("steps_offset", 0), 0, n - 1)
    for key in ("rescale_betas_zero_snr", "clip_sample", "set_alpha_to_one", "thresholding", "use_karras_sigmas",
                "use_exponential_sigmas", "use_beta_sigmas"):
        if key in cfg:
            boolean(w, key, cfg[key])
    if "clip_sample_range" in cfg:
        number(w, "clip_sample_range", cfg["clip_sample_range"], 0.0, 1e4, open_low=True)
    if "final_sigmas_type" in cfg:
        choice(w, "final_sigmas_type", cfg["final_sigmas_type"], ("zero", "sigma_min"))
    for key in ("prediction_type", "timestep_spacing", "interpolation_type", "timestep_type"):
        if key in cfg and not isinstance(cfg[key], str):
            raise w.fail(f"{key} must be a name, not {_show(cfg[key])}")


# ---- options ------------------------------------------------------------------------------------------------

OPTION = Where(None, "option", option=True)


def check_side(name: str, value: object, multiple: int) -> int:
    side = integer(OPTION, name, value, 1, MAX_SIDE)
    if side % multiple or side < multiple:
        raise UsageError(f"{name} {side} must be a positive multiple of {multiple} (the VAE's scale factor)")
    return side


def check_options(*, steps: object, guidance: object, seed: object, strength: object, prompt: object,
                  negative_prompt: object, max_memory_bytes: object = None) -> None:
    integer(OPTION, "steps", steps, 1, MAX_STEPS)
    number(OPTION, "guidance", guidance, 0.0, MAX_GUIDANCE)
    integer(OPTION, "seed", seed, *SEED_RANGE)
    number(OPTION, "strength", strength, 0.0, 1.0, open_low=True)
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if not isinstance(text, str):
            raise UsageError(f"{name} must be a string, not {_show(text)}")
        if len(text) > MAX_PROMPT_CHARS:
            raise UsageError(f"{name} has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,} "
                             "(CLIP reads 77 tokens)")
    if max_memory_bytes is not None:
        integer(OPTION, "max_memory_bytes", max_memory_bytes, 1, 2 ** 62)
