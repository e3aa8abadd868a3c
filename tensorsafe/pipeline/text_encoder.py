"""CLIP text transformer (transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``), from config.json.

Pre-norm transformer with a causal mask; ``hidden_states`` holds the embeddings and every layer's
output (as transformers returns them), ``last_hidden_state`` has the final layer norm applied.
SD1/SD2 condition on ``last_hidden_state``; SDXL on ``hidden_states[-2]`` (penultimate layer, no
final norm) and on the projected pooled output of its second encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tensorsafe.pipeline.layers import attention, blocks

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass
class TextEncoding:
    hidden_states: list[torch.Tensor]
    last_hidden_state: torch.Tensor
    pooled: torch.Tensor
    text_embeds: torch.Tensor | None
    """``text_projection(pooled)`` for ``CLIPTextModelWithProjection``."""


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, inner: int, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.fc1, self.fc2 = nn.Linear(width, inner), nn.Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        width, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-5)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = CLIPAttention(width, cfg["num_attention_heads"])
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = CLIPMLP(width, cfg["intermediate_size"], cfg.get("hidden_act", "quick_gelu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.position_embedding = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[-1]]


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = blocks(cfg["num_hidden_layers"], lambda _: CLIPEncoderLayer(cfg))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-5))


class CLIPTextModel(nn.Module):
    """``text_model.*`` (+ ``text_projection`` when ``with_projection``), as the converter writes them."""

    def __init__(self, cfg: dict, with_projection: bool | None = None):
        super().__init__()
        if with_projection is None:
            with_projection = "CLIPTextModelWithProjection" in (cfg.get("architectures") or [])
        self.config = cfg
        self.eos_token_id = cfg.get("eos_token_id", 2)
        self.text_model = CLIPTextTransformer(cfg)
        self.text_projection = (nn.Linear(cfg["hidden_size"], cfg.get("projection_dim", 768), bias=False)
                                if with_projection else None)

    def forward(self, ids: torch.Tensor) -> TextEncoding:
        x = self.text_model.embeddings(ids)
        states = [x]
        for layer in self.text_model.encoder.layers:
            x = layer(x)
            states.append(x)
        last = self.text_model.final_layer_norm(x)
        pooled = last[torch.arange(ids.shape[0], device=ids.device), self._eos_position(ids)]
        embeds = self.text_projection(pooled) if self.text_projection is not None else None
        return TextEncoding(states, last, pooled, embeds)

    def _eos_position(self, ids: torch.Tensor) -> torch.Tensor:
        # hub configs say eos 2 (pre transformers#24773): the highest id, the first <|endoftext|>, is the end
        if self.eos_token_id == 2:
            return ids.to(torch.int).argmax(dim=-1)
        return (ids.to(torch.int) == self.eos_token_id).int().argmax(dim=-1)


def canonical_key(key: str) -> str | None:
    """transformers >= 5.6 saves ``CLIPTextModel`` without ``text_model.``; ``position_ids`` is a buffer."""
    if key.endswith("position_ids"):
        return None
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
