"""UNet2DConditionModel (SD1, SD2, SDXL base and refiner) from its ``unet/config.json``.

The config is the constructor, with diffusers' defaults for keys a config leaves out; attribute
names are the diffusers keys, so the weights load with no table. Extra input channels (inpaint 9,
depth 5, pix2pix 8) only widen ``conv_in``. SDXL's ``text_time`` conditioning adds the pooled
text embedding and the sinusoidal embedding of the size/crop (and aesthetic score) ids.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tensorsafe.errors import UsageError
from tensorsafe.pipeline.configs import (  # noqa: F401
    CROSS_DOWN,
    DOWN,
    MID_CROSS,
    Level,
    levels,
    unet_config,
)
from tensorsafe.pipeline.layers import (
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    attention,
    blocks,
)


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float, max_period: int = 10000):
    """Sinusoidal embedding of (float) timesteps, as diffusers' ``get_timestep_embedding``."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return F.pad(emb, (0, 1, 0, 0)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(cin, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return self.to_out[0](attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, only_cross: bool):
        super().__init__()
        self.only_cross = only_cross
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.attn1 = Attention(dim, context_dim if only_cross else None, heads)
        self.attn2 = Attention(dim, context_dim, heads)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context if self.only_cross else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """GroupNorm -> proj_in (1x1 conv, or linear) -> transformer blocks -> proj_out, plus the residual."""

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, linear: bool, groups: int,
                 only_cross: bool = False):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = blocks(depth, lambda _: BasicTransformerBlock(channels, context_dim, heads,
                                                                                only_cross))
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        y = y if self.linear else self.proj_in(y)
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)
        y = self.proj_in(y) if self.linear else y
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y) if self.linear else y
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return (y if self.linear else self.proj_out(y)) + x


class DownBlock(nn.Module):
    def __init__(self, cin: int, lv: Level, temb: int, cfg: dict, downsample: bool):
        super().__init__()
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.resnets = blocks(lv.layers, lambda j: ResnetBlock2D(cin if j == 0 else lv.channels, lv.channels, temb,
                                                                 groups, eps))
        self.attentions = (blocks(lv.layers, lambda j: Transformer2DModel(
            lv.channels, lv.heads, lv.depths[j], lv.context_dim, cfg["use_linear_projection"], groups, lv.only_cross))
            if lv.cross else None)
        self.downsamplers = (nn.ModuleList([Downsample2D(lv.channels, cfg["downsample_padding"])]) if downsample
                             else None)

    def forward(self, x, temb, context) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            x = self.attentions[j](x, context) if self.attentions is not None else x
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, cin: int, prev: int, lv: Level, temb: int, cfg: dict, upsample: bool):
        super().__init__()
        groups, eps, n, c = cfg["norm_num_groups"], cfg["norm_eps"], lv.layers, lv.channels
        self.resnets = blocks(n, lambda j: ResnetBlock2D((prev if j == 0 else c) + (cin if j == n - 1 else c), c,
                                                         temb, groups, eps))
        self.attentions = (blocks(n, lambda j: Transformer2DModel(
            c, lv.heads, lv.depths[j], lv.context_dim, cfg["use_linear_projection"], groups, lv.only_cross))
            if lv.cross else None)
        self.upsamplers = nn.ModuleList([Upsample2D(c)]) if upsample else None

    def forward(self, x, skips: list[torch.Tensor], temb, context, size=None) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            x = self.attentions[j](x, context) if self.attentions is not None else x
        return self.upsamplers[0](x, size) if self.upsamplers is not None else x


class MidBlock(nn.Module):
    """resnet, attention, resnet (``UNetMidBlock2DCrossAttn``); a single resnet for ``UNetMidBlock2D``."""

    def __init__(self, lv: Level, temb: int, cfg: dict):
        super().__init__()
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        self.resnets = blocks(2 if lv.cross else 1, lambda _: ResnetBlock2D(lv.channels, lv.channels, temb, groups,
                                                                             eps))
        self.attentions = (nn.ModuleList([Transformer2DModel(lv.channels, lv.heads, lv.depths[0], lv.context_dim,
                                                             cfg["use_linear_projection"], groups)])
                           if lv.cross else None)

    def forward(self, x, temb, context) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        if self.attentions is not None:
            x = self.resnets[1](self.attentions[0](x, context), temb)
        return x


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        cfg = self.config = unet_config(config)
        widths = cfg["block_out_channels"]
        down, up = levels(cfg)
        c0 = widths[0]
        temb = cfg["time_embedding_dim"] or 4 * c0
        kin, kout = cfg["conv_in_kernel"], cfg["conv_out_kernel"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], c0, kin, padding=(kin - 1) // 2)
        self.time_embedding = TimestepEmbedding(c0, temb)
        self.add_embedding = (TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], temb)
                              if cfg["addition_embed_type"] == "text_time" else None)
        cins = [c0] + [lv.channels for lv in down[:-1]]
        self.down_blocks = nn.ModuleList(DownBlock(cins[i], lv, temb, cfg, i < len(down) - 1)
                                         for i, lv in enumerate(down))
        mid = cfg["mid_block_type"]
        self.mid_block = (MidBlock(Level(widths[-1], 1, mid == MID_CROSS, down[-1].heads, down[-1].context_dim,
                                         [down[-1].depths[0]], False), temb, cfg) if mid else None)
        rev = widths[::-1]
        self.up_blocks = nn.ModuleList(UpBlock(rev[min(i + 1, len(rev) - 1)], rev[max(i - 1, 0)], lv, temb, cfg,
                                               i < len(up) - 1) for i, lv in enumerate(up))
        self.conv_norm_out = nn.GroupNorm(cfg["norm_num_groups"], c0, eps=cfg["norm_eps"])
        self.conv_out = nn.Conv2d(c0, cfg["out_channels"], kout, padding=(kout - 1) // 2)

    def forward(self, sample: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embedding(self._time(t, sample).to(sample.dtype))
        if self.add_embedding is not None:
            emb = emb + self.add_embedding(self._added(text_embeds, time_ids).to(emb.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, emb, context)
            skips += s
        x = self.mid_block(x, emb, context) if self.mid_block is not None else x
        odd = any(s % 2 ** (len(self.up_blocks) - 1) for s in sample.shape[-2:])
        for block in self.up_blocks:
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            x = block(x, mine, emb, context, tuple(skips[-1].shape[2:]) if odd and skips else None)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def _time(self, t, sample: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=sample.device)
        t = t[None] if t.ndim == 0 else t
        return timestep_embedding(t.expand(sample.shape[0]), self.config["block_out_channels"][0],
                                  self.config["flip_sin_to_cos"], self.config["freq_shift"])

    def _added(self, text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        if text_embeds is None or time_ids is None:
            raise UsageError("this UNet (addition_embed_type text_time, SDXL) needs text_embeds and time_ids")
        ids = timestep_embedding(time_ids.flatten(), self.config["addition_time_embed_dim"],
                                 self.config["flip_sin_to_cos"], self.config["freq_shift"])
        return torch.cat([text_embeds, ids.reshape(text_embeds.shape[0], -1)], dim=-1)
