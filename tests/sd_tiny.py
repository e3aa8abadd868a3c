"""Tiny random-weight diffusers/transformers models of each Stable Diffusion family (docs/single-file.md §12).

They keep the real block structure (4 UNet levels for SD, 3 for SDXL, 4 for the refiner, 2 resnets
per down level, 4 VAE levels) so that the original layout's key indices are the real ones; only
widths are small. Used as test oracles: nothing here is product code.
"""
from __future__ import annotations

import functools
import logging
import warnings

CROSS = "CrossAttnDownBlock2D"
CROSS_UP = "CrossAttnUpBlock2D"

TE_WIDTH = {"sd1": 32, "sd2": 32, "sdxl": 32}
TE2_WIDTH = 40        # SDXL's towers must differ in width, or diffusers' loader mixes them up (spec 11)
TE2_PROJECTION = 16
TIME_DIM = 8          # addition_time_embed_dim of the tiny SDXL UNets


def _quiet():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def unet_kwargs(family: str, in_channels: int = 4) -> dict:
    common = dict(in_channels=in_channels, out_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=8)
    if family in ("sd1", "sd2"):
        return dict(common, block_out_channels=(32, 64, 64, 64),
                    down_block_types=(CROSS, CROSS, CROSS, "DownBlock2D"),
                    up_block_types=("UpBlock2D", CROSS_UP, CROSS_UP, CROSS_UP),
                    cross_attention_dim=TE_WIDTH[family], attention_head_dim=8 if family == "sd1" else (1, 2, 2, 2),
                    use_linear_projection=family == "sd2")
    if family == "sdxl":
        return dict(common, block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", CROSS, CROSS),
                    up_block_types=(CROSS_UP, CROSS_UP, "UpBlock2D"), transformer_layers_per_block=(1, 2, 3),
                    cross_attention_dim=TE_WIDTH["sdxl"] + TE2_WIDTH, attention_head_dim=(1, 2, 2),
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
                    projection_class_embeddings_input_dim=6 * TIME_DIM + TE2_PROJECTION)
    if family == "sdxl-refiner":
        return dict(common, block_out_channels=(32, 64, 64, 64), down_block_types=("DownBlock2D", CROSS, CROSS,
                                                                                  "DownBlock2D"),
                    up_block_types=("UpBlock2D", CROSS_UP, CROSS_UP, "UpBlock2D"), transformer_layers_per_block=2,
                    cross_attention_dim=TE2_WIDTH, attention_head_dim=(1, 2, 2, 2), use_linear_projection=True,
                    addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
                    projection_class_embeddings_input_dim=5 * TIME_DIM + TE2_PROJECTION)
    raise ValueError(family)


VAE_KWARGS = dict(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                  norm_num_groups=32, sample_size=32)


def te_kwargs(width: int, act: str, projection_dim: int = 8) -> dict:
    return dict(hidden_size=width, intermediate_size=2 * width + 3, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=1000, max_position_embeddings=77, hidden_act=act, projection_dim=projection_dim,
                bos_token_id=0, eos_token_id=2, pad_token_id=1)


def shapes_of(module, text_model_prefix: bool = False) -> dict[str, tuple[int, ...]]:
    out = {}
    for k, v in module.state_dict().items():
        if text_model_prefix and not k.startswith(("text_model.", "text_projection")):
            k = "text_model." + k  # transformers 5 saves CLIPTextModel without it; we write it
        out[k] = tuple(v.shape)
    return out


@functools.lru_cache(maxsize=None)
def models(family: str, in_channels: int = 4):
    """component -> a tiny random-weight model of this family."""
    _quiet()
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    out = {"unet": UNet2DConditionModel(**unet_kwargs(family, in_channels)), "vae": AutoencoderKL(**VAE_KWARGS)}
    if family == "sd1":
        out["text_encoder"] = CLIPTextModel(CLIPTextConfig(**te_kwargs(32, "quick_gelu")))
    elif family == "sd2":
        out["text_encoder"] = CLIPTextModel(CLIPTextConfig(**te_kwargs(32, "gelu")))
    if family == "sdxl":
        out["text_encoder"] = CLIPTextModel(CLIPTextConfig(**te_kwargs(32, "quick_gelu")))
    if family in ("sdxl", "sdxl-refiner"):
        out["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**te_kwargs(TE2_WIDTH, "gelu",
                                                                                      TE2_PROJECTION)))
    for m in out.values():
        m.eval()
    return out


@functools.lru_cache(maxsize=None)
def folder_shapes(family: str, in_channels: int = 4) -> dict[str, dict[str, tuple[int, ...]]]:
    return {c: shapes_of(m, c.startswith("text_encoder")) for c, m in models(family, in_channels).items()}


def folder_tensors(family: str, in_channels: int = 4) -> dict[str, object]:
    """``"component/key"`` -> tensor (text encoders spelled with ``text_model.``)."""
    out = {}
    for c, m in models(family, in_channels).items():
        for k, v in m.state_dict().items():
            if c.startswith("text_encoder") and not k.startswith(("text_model.", "text_projection")):
                k = "text_model." + k
            out[f"{c}/{k}"] = v
    return out


def execute(plan, tensors: dict) -> dict:
    """Run a plan with torch (the test's stand-in for the streaming writer): (component, key) -> tensor."""
    import torch

    from tensorsafe.converter.plan import Op

    out = {}
    for t in plan.targets:
        src = [tensors[s] for s in t.sources]
        if t.op is Op.COPY:
            x = src[0]
        elif t.op is Op.RESHAPE:
            x = src[0].reshape(t.shape)
        elif t.op is Op.ROWS:
            x = src[0][t.rows[0]:t.rows[1]]
        elif t.op is Op.CONCAT_ROWS:
            x = torch.cat(src, 0)
        else:
            assert t.op is Op.TRANSPOSE
            x = src[0].T
        assert tuple(x.shape) == t.shape, (t, tuple(x.shape))
        out[(t.component, t.key)] = x
    return out


# ---- the tiny folders as single files (through tensorsafe's own reverse plan) ------------------------------

CASES = [("sd1", 4), ("sd2", 4), ("sdxl", 4), ("sdxl-refiner", 4), ("sd1", 9), ("sd2", 5), ("sd1", 8), ("sdxl", 9)]
CASE_IDS = [f"{f}-{c}ch" for f, c in CASES]


def folder_detection(family: str, in_channels: int = 4):
    from tensorsafe.converter import families

    ms = models(family, in_channels)
    configs = {c: dict(m.config) for c, m in ms.items() if not c.startswith("text_encoder")}
    configs.update({c: m.config.to_dict() for c, m in ms.items() if c.startswith("text_encoder")})
    return families.detect_folder({}, configs, folder_shapes(family, in_channels))


def to_single_file(family: str, in_channels: int = 4):
    """The tiny folder as a single file: (plan, orig key -> tensor)."""
    from tensorsafe.converter import keymaps

    plan = keymaps.plan_to_single_file(folder_shapes(family, in_channels),
                                       folder_detection(family, in_channels))
    tensors = execute(plan, folder_tensors(family, in_channels))
    return plan, {k: v for (_, k), v in tensors.items()}


def orig_shapes(orig: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in orig.items()}
