"""AutoencoderKL (encoder and decoder) from ``vae/config.json``, named after the diffusers keys.

``decode(latents)`` expects latents already divided by ``scaling_factor`` (as the pipelines do);
``encode(image)`` returns the diagonal Gaussian's mean and std, and ``sample`` draws from it with a
generator exactly as diffusers' ``DiagonalGaussianDistribution.sample`` does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tensorsafe.pipeline.configs import vae_config
from tensorsafe.pipeline.layers import (
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    attention,
    blocks,
)

VAE_EPS = 1e-6
# spellings of diffusers folders saved before ~0.14
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class VAEAttention(nn.Module):
    """Single-head self-attention over the pixels of the mid block, with its own GroupNorm and residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=VAE_EPS)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x.view(b, c, h * w)).transpose(1, 2)
        y = self.to_out[0](attention(self.to_q(y), self.to_k(y), self.to_v(y), heads=1))
        return y.transpose(1, 2).reshape(b, c, h, w) + x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, with_attention: bool):
        super().__init__()
        self.resnets = blocks(2, lambda _: ResnetBlock2D(channels, channels, None, groups, VAE_EPS))
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)]) if with_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x) if self.attentions is not None else x
        return self.resnets[1](x)


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = blocks(layers, lambda j: ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, VAE_EPS))
        self.downsamplers = nn.ModuleList([Downsample2D(cout, padding=0)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = blocks(layers, lambda j: ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, VAE_EPS))
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        widths, groups, n = cfg["block_out_channels"], cfg["norm_num_groups"], len(cfg["block_out_channels"])
        self.conv_in = nn.Conv2d(cfg["in_channels"], widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(EncoderBlock(widths[max(i - 1, 0)], widths[i], cfg["layers_per_block"],
                                                      groups, i < n - 1) for i in range(n))
        self.mid_block = MidBlock(widths[-1], groups, cfg["mid_block_add_attention"])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=VAE_EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg["latent_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        rev, groups, n = cfg["block_out_channels"][::-1], cfg["norm_num_groups"], len(cfg["block_out_channels"])
        self.conv_in = nn.Conv2d(cfg["latent_channels"], rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], groups, cfg["mid_block_add_attention"])
        self.up_blocks = nn.ModuleList(DecoderBlock(rev[max(i - 1, 0)], rev[i], cfg["layers_per_block"] + 1, groups,
                                                    i < n - 1) for i in range(n))
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=VAE_EPS)
        self.conv_out = nn.Conv2d(rev[-1], cfg["out_channels"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        x = x.to(self.up_blocks[0].resnets[0].conv1.weight.dtype)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        cfg = self.config = vae_config(config)
        latent = cfg["latent_channels"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if cfg["use_quant_conv"] else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if cfg["use_post_quant_conv"] else None

    @property
    def scale_factor(self) -> int:
        """Pixels per latent along each side (8 for every SD VAE)."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_conv(z) if self.post_quant_conv is not None else z
        return self.decoder(z)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the latent distribution of ``x`` (in [-1, 1])."""
        moments = self.encoder(x)
        moments = self.quant_conv(moments) if self.quant_conv is not None else moments
        mean, logvar = moments.chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def sample(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A draw from ``encode(x)``: the generator is used as diffusers' ``latent_dist.sample`` uses it."""
        mean, std = self.encode(x)
        noise = draw_noise(mean.shape, generator, mean.device, mean.dtype)
        return mean + std * noise

    def to_latents(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents of an image, as the img2img and inpaint pipelines make them."""
        z = self.sample(x, generator)
        mean, std = self.config["latents_mean"], self.config["latents_std"]
        if mean is not None and std is not None:
            return (z - _channels(mean, z)) * self.config["scaling_factor"] / _channels(std, z)
        return z * self.config["scaling_factor"]

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] from scaled latents (undoing latents_mean/std where the config has them)."""
        mean, std = self.config["latents_mean"], self.config["latents_std"]
        if mean is not None and std is not None:
            latents = latents * _channels(std, latents) / self.config["scaling_factor"] + _channels(mean, latents)
        else:
            latents = latents / self.config["scaling_factor"]
        return self.decode(latents)


def _channels(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values).view(1, -1, 1, 1).to(like.device, like.dtype)


def draw_noise(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """``torch.randn`` on the generator's device, then moved: diffusers' ``randn_tensor`` for one generator."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def canonical_state(state: dict) -> dict:
    """Old ``query/key/value/proj_attn`` mid-attention names (and 1x1-conv shapes) as ``to_q/.../to_out.0``."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in OLD_ATTENTION_NAMES:
            key = ".".join([*parts[:-2], OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
        if ".attentions." in key and key.endswith("weight") and value.ndim == 4 and value.shape[2:] == (1, 1) \
                and "group_norm" not in key:
            value = value[:, :, 0, 0]
        out[key] = value
    return out
