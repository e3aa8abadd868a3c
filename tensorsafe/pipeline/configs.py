"""The UNet and VAE configs with diffusers' defaults filled in, checked, and the UNet's levels (no torch here).

``unet_config`` and ``vae_config`` refuse what the reference modules do not implement, then check
every value against its sane range (:mod:`tensorsafe.pipeline.validate`), so that the memory
estimate and the module constructors only ever see configs they can handle.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tensorsafe.errors import ParseError, UsageError
from tensorsafe.pipeline.validate import check_unet, check_vae

CROSS_DOWN, DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID_CROSS, MID_PLAIN = "UNetMidBlock2DCrossAttn", "UNetMidBlock2D"

MAX_CONFIG_BYTES = 16 << 20  # a diffusers config is a few KiB; a shard index of 10^5 tensors a few MiB


def read_config(path: Path) -> dict:
    """A component's JSON config (or shard index), refused unread when it is over ``MAX_CONFIG_BYTES``."""
    from tensorsafe.converter.configs import read_json_object

    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # missing or unreadable: read_json_object says which
    if size > MAX_CONFIG_BYTES:
        raise ParseError(f"{size:,} bytes is over the {MAX_CONFIG_BYTES:,}-byte limit for a config", path=path)
    return read_json_object(path, "missing: the folder has no config for this component")


# diffusers' UNet2DConditionModel defaults for the keys we read
DEFAULTS = {
    "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": [CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, DOWN], "mid_block_type": MID_CROSS,
    "up_block_types": [UP, CROSS_UP, CROSS_UP, CROSS_UP], "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1280, "transformer_layers_per_block": 1, "reverse_transformer_layers_per_block": None,
    "attention_head_dim": 8, "use_linear_projection": False,
    "resnet_time_scale_shift": "default", "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "addition_embed_type": None,
    "addition_time_embed_dim": None, "projection_class_embeddings_input_dim": None, "sample_size": None,
}
# settings this reference UNet does not implement: key -> the only value it accepts
UNSUPPORTED = {
    "class_embed_type": None, "encoder_hid_dim_type": None, "time_cond_proj_dim": None, "dual_cross_attention": False,
    "center_input_sample": False, "timestep_post_act": None, "time_embedding_act_fn": None, "num_class_embeds": None,
    "attention_type": "default", "cross_attention_norm": None, "class_embeddings_concat": False,
    "num_attention_heads": None,  # diffusers refuses it too (attention_head_dim is the head count here)
}
VAE_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": [64], "layers_per_block": 1, "latent_channels": 4,
    "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None,
    "latents_std": None, "force_upcast": True, "mid_block_add_attention": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"],
}


@dataclass(frozen=True)
class Level:
    """One resolution level of the UNet, as the config describes it."""

    channels: int
    layers: int
    cross: bool
    heads: int
    context_dim: int
    depths: list[int]
    only_cross: bool


def unet_config(config: dict, path: Path | str = "unet/config.json") -> dict:
    """``unet/config.json`` with diffusers' defaults, refused unless this UNet implements it and every value is sane."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key, only in UNSUPPORTED.items():
        if cfg.get(key, only) != only:
            raise UsageError(f"unet/config.json: {key} = {cfg[key]!r} is not supported by the reference pipeline "
                             f"(only {only!r})")
    checks = {"act_fn": "silu", "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
              "resnet_out_scale_factor": 1.0, "mid_block_scale_factor": 1}
    for key, only in checks.items():
        if cfg[key] != only:
            raise UsageError(f"unet/config.json: {key} = {cfg[key]!r} is not supported (only {only!r})")
    if cfg["addition_embed_type"] not in (None, "text_time"):
        raise UsageError(f"unet/config.json: addition_embed_type {cfg['addition_embed_type']!r} is not supported "
                         "(only null or 'text_time')")
    check_unet(cfg, path)
    bad = [t for t in [*cfg["down_block_types"], *cfg["up_block_types"]] if t not in (CROSS_DOWN, DOWN, CROSS_UP, UP)]
    if bad or cfg["mid_block_type"] not in (MID_CROSS, MID_PLAIN, None):
        raise UsageError(f"unet/config.json: block type {(bad or [cfg['mid_block_type']])[0]!r} is not supported")
    return cfg


def _per_block(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise UsageError(f"unet/config.json: {name} has {len(value)} entries for {n} blocks")
        return list(value)
    return [value] * n


def _per_layer(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def levels(cfg: dict) -> tuple[list[Level], list[Level]]:
    """The down levels and the up levels (deepest first), as diffusers derives them from the config."""
    widths = cfg["block_out_channels"]
    n = len(widths)
    heads = _per_block(cfg["attention_head_dim"], n, "attention_head_dim")  # historically the head count
    context = _per_block(cfg["cross_attention_dim"], n, "cross_attention_dim")
    layers = _per_block(cfg["layers_per_block"], n, "layers_per_block")
    depth = _per_block(cfg["transformer_layers_per_block"], n, "transformer_layers_per_block")
    only = _per_block(cfg["only_cross_attention"], n, "only_cross_attention")
    down = [Level(widths[i], layers[i], cfg["down_block_types"][i] == CROSS_DOWN, heads[i], context[i],
                  _per_layer(depth[i], layers[i]), only[i]) for i in range(n)]
    rdepth = cfg["reverse_transformer_layers_per_block"] or depth[::-1]
    up = [Level(widths[::-1][i], layers[::-1][i] + 1, cfg["up_block_types"][i] == CROSS_UP, heads[::-1][i],
                context[::-1][i], _per_layer(rdepth[i], layers[::-1][i] + 1), only[::-1][i]) for i in range(n)]
    return down, up


def vae_config(config: dict, path: Path | str = "vae/config.json") -> dict:
    """``vae/config.json`` with diffusers' defaults, refused unless this VAE implements it and every value is sane."""
    cfg = {**VAE_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    if cfg["scaling_factor"] is None:
        cfg["scaling_factor"] = VAE_DEFAULTS["scaling_factor"]
    check_vae(cfg, path)
    n = len(cfg["block_out_channels"])
    if cfg["act_fn"] != "silu":
        raise UsageError(f"vae/config.json: act_fn {cfg['act_fn']!r} is not supported (only 'silu')")
    if list(cfg["down_block_types"]) != ["DownEncoderBlock2D"] * n or list(cfg["up_block_types"]) != \
            ["UpDecoderBlock2D"] * n:
        raise UsageError("vae/config.json: only DownEncoderBlock2D / UpDecoderBlock2D blocks are supported, one per "
                         "entry of block_out_channels")
    if cfg["shift_factor"] not in (None, 0, 0.0):
        raise UsageError(f"vae/config.json: shift_factor {cfg['shift_factor']!r} is not supported")
    return cfg
