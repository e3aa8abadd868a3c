"""Component configs of a diffusers folder (docs/single-file.md §8), read from the tensor shapes.

Everything the weights determine (widths, layer counts, block types, transformer depth, the size
conditioning) is read from the shapes of the diffusers-layout keys; only what the weights cannot
tell (activation, head counts, schedule, image size) comes from the family and the detection.
Configs are written whole, as diffusers' ``save_config`` and transformers' ``save_pretrained``
write them, so a folder loads without any download.

``load_folder_configs`` takes them from an existing folder instead (``--config FOLDER``) and checks
every shape-bearing value against the weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tensorsafe.converter.families import SD2, SDXL, SDXL_REFINER, V_PREDICTION, Detection, TextEncoderSlot
from tensorsafe.converter.keymaps.rules import Shape, Shapes, indices
from tensorsafe.converter.tokenizer import tokenizer_files, tokenizer_files_from
from tensorsafe.errors import ParseError, UsageError, option
from tensorsafe.paths import Contained, contained

DIFFUSERS_VERSION = "0.42.1"  # the diffusers release whose config schema these files follow
HEAD_WIDTH = 64               # SD2/SDXL UNets and every CLIP/OpenCLIP text tower use 64-wide heads
SD1_HEADS = 8                 # SD1's yaml: num_heads 8 (attention_head_dim is historically a head count)
ADDITION_TIME_EMBED_DIM = 256  # SDXL: each size/crop number is embedded in 256 sinusoidal channels

CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
    "model_index": "model_index.json",
}


@dataclass(frozen=True)
class Fact:
    """A config value and the tensor that shows it (for teaching errors)."""

    value: object
    key: str
    shape: Shape | None
    items: tuple[tuple[str, Shape], ...] = ()
    """For a per-level list: the key and shape that show each entry."""


def _find(shapes: Shapes, suffix: str, prefix: str = "") -> str | None:
    return next((k for k in sorted(shapes) if k.startswith(prefix) and k.endswith(suffix)), None)


def _need(shapes: Shapes, key: str, component: str) -> Shape:
    if key not in shapes:
        raise UsageError(f"{component}: the weights have no {key}, so its config cannot be derived; "
                         f"pass {option('config', 'FOLDER')} with a matching diffusers folder")
    return shapes[key]


def _int_or_list(values: list[int]) -> int | list[int]:
    return values[0] if values and all(v == values[0] for v in values) else values


# ---- UNet ------------------------------------------------------------------------------------------------

def unet_facts(shapes: Shapes, detection: Detection, te2: Shapes | None = None) -> dict[str, Fact]:
    facts: dict[str, Fact] = {}
    c = "unet"
    conv_in, conv_out = _need(shapes, "conv_in.weight", c), _need(shapes, "conv_out.weight", c)
    facts["in_channels"] = Fact(conv_in[1], "conv_in.weight", conv_in)
    facts["out_channels"] = Fact(conv_out[0], "conv_out.weight", conv_out)
    facts["conv_in_kernel"] = Fact(conv_in[2], "conv_in.weight", conv_in)
    facts["conv_out_kernel"] = Fact(conv_out[2], "conv_out.weight", conv_out)
    down, up = indices(shapes, "down_blocks."), indices(shapes, "up_blocks.")
    widths, layers, down_types, depth = [], [], [], []
    for b in range(max(down, default=-1) + 1):
        key = f"down_blocks.{b}.resnets.0.conv1.weight"
        widths.append(_need(shapes, key, c)[0])
        layers.append(len(indices(down[b], "resnets.")))
        attn = indices(down[b], "attentions.")
        down_types.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        depth.append(len(indices(attn[0], "transformer_blocks.")) if attn else None)
    facts["block_out_channels"] = Fact(widths, "down_blocks.N.resnets.0.conv1.weight", None,
                                       tuple((f"down_blocks.{b}.resnets.0.conv1.weight",
                                              shapes[f"down_blocks.{b}.resnets.0.conv1.weight"])
                                             for b in range(len(widths))))
    facts["layers_per_block"] = Fact(_int_or_list(layers), "down_blocks.N.resnets.*", None)
    facts["down_block_types"] = Fact(down_types, "down_blocks.N.attentions.*", None)
    facts["up_block_types"] = Fact(["CrossAttnUpBlock2D" if any(r.startswith("attentions.") for r in up[b])
                                    else "UpBlock2D" for b in range(max(up, default=-1) + 1)],
                                   "up_blocks.N.attentions.*", None)
    with_attn = [d for d in depth if d is not None]
    if with_attn and all(d == with_attn[0] for d in with_attn):
        tlpb: int | list[int] = with_attn[0]
    else:
        tlpb = [d if d is not None else 1 for d in depth]
    facts["transformer_layers_per_block"] = Fact(tlpb, "down_blocks.N.attentions.0.transformer_blocks.*", None)
    to_k = _find(shapes, "attn2.to_k.weight")
    if to_k:
        facts["cross_attention_dim"] = Fact(shapes[to_k][1], to_k, shapes[to_k])
    proj_in = _find(shapes, ".proj_in.weight")
    if proj_in:
        facts["use_linear_projection"] = Fact(len(shapes[proj_in]) == 2, proj_in, shapes[proj_in])
    facts["mid_block_type"] = Fact("UNetMidBlock2DCrossAttn" if "mid_block.attentions.0.norm.weight" in shapes
                                   else "UNetMidBlock2D", "mid_block.attentions.0.norm.weight", None)
    t1 = _need(shapes, "time_embedding.linear_1.weight", c)
    facts["time_embedding_dim"] = Fact(None if t1[0] == 4 * widths[0] else t1[0], "time_embedding.linear_1.weight",
                                       t1)
    add = shapes.get("add_embedding.linear_1.weight")
    if add is not None:
        facts["addition_embed_type"] = Fact("text_time", "add_embedding.linear_1.weight", add)
        facts["projection_class_embeddings_input_dim"] = Fact(add[1], "add_embedding.linear_1.weight", add)
        facts["addition_time_embed_dim"] = Fact(_time_embed_dim(add[1], detection, te2),
                                                "add_embedding.linear_1.weight", add)
    else:
        facts["addition_embed_type"] = Fact(None, "add_embedding.linear_1.weight", None)
    return facts


def _time_embed_dim(input_dim: int, detection: Detection, te2: Shapes | None) -> int:
    """input = time_ids x T + pooled width; the pooled width is text_encoder_2's projection."""
    n = detection.spec.time_ids or 6
    proj = (te2 or {}).get("text_projection.weight")
    if proj is not None and (input_dim - proj[0]) > 0 and (input_dim - proj[0]) % n == 0:
        return (input_dim - proj[0]) // n
    return ADDITION_TIME_EMBED_DIM


def _head_dim(detection: Detection, widths: list[int]) -> int | list[int]:
    if not detection.spec.heads_from_width:
        return SD1_HEADS
    return [max(1, w // HEAD_WIDTH) for w in widths]


def unet_config(shapes: Shapes, detection: Detection, te2: Shapes | None = None) -> dict:
    f = {k: v.value for k, v in unet_facts(shapes, detection, te2).items()}
    sdxl = f.get("addition_embed_type") == "text_time"
    cfg = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": f["addition_embed_type"],
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": f.get("addition_time_embed_dim"),
        "attention_head_dim": _head_dim(detection, f["block_out_channels"]),
        "attention_type": "default",
        "block_out_channels": f["block_out_channels"],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": f["conv_in_kernel"],
        "conv_out_kernel": f["conv_out_kernel"],
        "cross_attention_dim": f.get("cross_attention_dim", 1280),
        "cross_attention_norm": None,
        "down_block_types": f["down_block_types"],
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": f["in_channels"],
        "layers_per_block": f["layers_per_block"],
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": f["mid_block_type"],
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": f["out_channels"],
        "projection_class_embeddings_input_dim": f.get("projection_class_embeddings_input_dim"),
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": None,
        "sample_size": detection.sample_size,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": f["time_embedding_dim"],
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": f["transformer_layers_per_block"],
        "up_block_types": f["up_block_types"],
        "upcast_attention": detection.upcast_attention,
        "use_linear_projection": f.get("use_linear_projection", sdxl),
    }
    return cfg


# ---- VAE -------------------------------------------------------------------------------------------------

def vae_facts(shapes: Shapes) -> dict[str, Fact]:
    c = "vae"
    facts: dict[str, Fact] = {}
    conv_in, conv_out = _need(shapes, "encoder.conv_in.weight", c), _need(shapes, "decoder.conv_out.weight", c)
    latent_key = "decoder.conv_in.weight"
    latent = _need(shapes, latent_key, c)
    facts["in_channels"] = Fact(conv_in[1], "encoder.conv_in.weight", conv_in)
    facts["out_channels"] = Fact(conv_out[0], "decoder.conv_out.weight", conv_out)
    facts["latent_channels"] = Fact(latent[1], latent_key, latent)
    down = indices(shapes, "encoder.down_blocks.")
    widths = [_need(shapes, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", c)[0]
              for i in range(max(down, default=-1) + 1)]
    facts["block_out_channels"] = Fact(widths, "encoder.down_blocks.N.resnets.0.conv1.weight", None,
                                       tuple((f"encoder.down_blocks.{i}.resnets.0.conv1.weight",
                                              shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"])
                                             for i in range(len(widths))))
    facts["layers_per_block"] = Fact(len(indices(down.get(0, ()), "resnets.")), "encoder.down_blocks.0.resnets.*",
                                     None)
    facts["mid_block_add_attention"] = Fact(any(k.startswith("encoder.mid_block.attentions.0.") for k in shapes),
                                            "encoder.mid_block.attentions.0.*", None)
    facts["use_quant_conv"] = Fact("quant_conv.weight" in shapes, "quant_conv.weight", None)
    facts["use_post_quant_conv"] = Fact("post_quant_conv.weight" in shapes, "post_quant_conv.weight", None)
    return facts


def vae_config(shapes: Shapes, detection: Detection) -> dict:
    f = {k: v.value for k, v in vae_facts(shapes).items()}
    n = len(f["block_out_channels"])
    image = 768 if detection.family == SD2 else detection.spec.image_size  # SD2 repos (both sizes) say 768
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": f["block_out_channels"],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "force_upcast": True,
        "in_channels": f["in_channels"],
        "latent_channels": f["latent_channels"],
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": f["layers_per_block"],
        "mid_block_add_attention": f["mid_block_add_attention"],
        "norm_num_groups": 32,
        "out_channels": f["out_channels"],
        "sample_size": image,
        "scaling_factor": detection.spec.vae_scaling_factor,
        "shift_factor": None,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "use_post_quant_conv": f["use_post_quant_conv"],
        "use_quant_conv": f["use_quant_conv"],
    }


# ---- text encoders ---------------------------------------------------------------------------------------

def _canonical(shapes: Shapes) -> Shapes:
    """transformers >= 5.6 saves CLIPTextModel without ``text_model.``: accept both spellings."""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in shapes.items()}


def text_encoder_facts(shapes: Shapes, slot: TextEncoderSlot) -> dict[str, Fact]:
    shapes = _canonical(shapes)
    c = slot.component
    tok = "text_model.embeddings.token_embedding.weight"
    pos = "text_model.embeddings.position_embedding.weight"
    fc1 = "text_model.encoder.layers.0.mlp.fc1.weight"
    facts = {
        "vocab_size": Fact(_need(shapes, tok, c)[0], tok, shapes[tok]),
        "hidden_size": Fact(shapes[tok][1], tok, shapes[tok]),
        "max_position_embeddings": Fact(_need(shapes, pos, c)[0], pos, shapes[pos]),
        "intermediate_size": Fact(_need(shapes, fc1, c)[0], fc1, shapes[fc1]),
        "num_hidden_layers": Fact(len(indices(shapes, "text_model.encoder.layers.")), "text_model.encoder.layers.*",
                                  None),
    }
    proj = shapes.get("text_projection.weight")
    if proj is not None:
        facts["projection_dim"] = Fact(proj[0], "text_projection.weight", proj)
    return facts


def text_encoder_config(shapes: Shapes, slot: TextEncoderSlot) -> dict:
    f = {k: v.value for k, v in text_encoder_facts(shapes, slot).items()}
    return {
        "architectures": ["CLIPTextModelWithProjection" if slot.with_projection else "CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,   # the hub repos' ids: with eos 2, transformers pools at argmax(input_ids),
        "dropout": 0.0,      # the first <|endoftext|>, which is what these models were trained with
        "eos_token_id": 2,
        "hidden_act": slot.hidden_act,
        "hidden_size": f["hidden_size"],
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": f["intermediate_size"],
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": f["max_position_embeddings"],
        "model_type": "clip_text_model",
        "num_attention_heads": max(1, f["hidden_size"] // HEAD_WIDTH),
        "num_hidden_layers": f["num_hidden_layers"],
        "pad_token_id": 1,
        "projection_dim": f.get("projection_dim", slot.projection_dim),
        "vocab_size": f["vocab_size"],
    }


# ---- scheduler and model index ---------------------------------------------------------------------------

_BETAS = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
          "steps_offset": 1, "trained_betas": None}


def scheduler_config(detection: Detection) -> dict:
    family, pred = detection.family, detection.prediction_type
    ztsnr = detection.rescale_betas_zero_snr
    if family in (SDXL, SDXL_REFINER):
        cfg = {"_class_name": "EulerDiscreteScheduler", **_BETAS, "final_sigmas_type": "zero",
               "interpolation_type": "linear", "prediction_type": pred, "rescale_betas_zero_snr": ztsnr,
               "sigma_max": None, "sigma_min": None, "timestep_spacing": "leading", "timestep_type": "discrete",
               "use_beta_sigmas": False, "use_exponential_sigmas": False, "use_karras_sigmas": False}
    elif (family == SD2 and pred == V_PREDICTION) or ztsnr:
        cfg = {"_class_name": "DDIMScheduler", **_BETAS, "clip_sample": False, "clip_sample_range": 1.0,
               "dynamic_thresholding_ratio": 0.995, "prediction_type": pred, "rescale_betas_zero_snr": ztsnr,
               "sample_max_value": 1.0, "set_alpha_to_one": False, "thresholding": False,
               "timestep_spacing": "leading"}
    else:
        cfg = {"_class_name": "PNDMScheduler", **_BETAS, "clip_sample": False, "prediction_type": pred,
               "set_alpha_to_one": False, "skip_prk_steps": True, "timestep_spacing": "leading"}
    cfg["_diffusers_version"] = DIFFUSERS_VERSION
    return {"_class_name": cfg.pop("_class_name"), "_diffusers_version": cfg.pop("_diffusers_version"),
            **dict(sorted(cfg.items()))}


NONE = [None, None]


def model_index(detection: Detection) -> dict:
    spec = detection.spec
    sched = scheduler_config(detection)["_class_name"]
    idx: dict = {"_class_name": detection.pipeline, "_diffusers_version": DIFFUSERS_VERSION}
    encoders = {s.component: s for s in spec.text_encoders}
    te1 = encoders.get("text_encoder")
    te2 = encoders.get("text_encoder_2")
    if detection.family in (SDXL, SDXL_REFINER):
        refiner = detection.family == SDXL_REFINER
        idx.update({
            "feature_extractor": NONE,
            "force_zeros_for_empty_prompt": not refiner,
            "image_encoder": NONE,
            "scheduler": ["diffusers", sched],
            "text_encoder": NONE if te1 is None else ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"] if te2 else NONE,
            "tokenizer": NONE if te1 is None else ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"] if te2 else NONE,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
        idx["add_watermarker"] = None
        if refiner:
            idx["requires_aesthetics_score"] = True
        if detection.variant == "pix2pix":  # StableDiffusionXLInstructPix2PixPipeline takes neither
            del idx["image_encoder"], idx["feature_extractor"]
        return dict(sorted(idx.items(), key=lambda kv: (not kv[0].startswith("_"), kv[0])))
    idx.update({
        "feature_extractor": NONE,
        "image_encoder": NONE,
        "requires_safety_checker": False,
        "safety_checker": NONE,
        "scheduler": ["diffusers", sched],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    if detection.variant == "depth":
        # the DPT depth estimator is not in the single file: the pipeline needs it supplied
        idx["depth_estimator"] = NONE
        del idx["image_encoder"], idx["requires_safety_checker"], idx["safety_checker"]
    return dict(sorted(idx.items(), key=lambda kv: (not kv[0].startswith("_"), kv[0])))


# ---- all of them -----------------------------------------------------------------------------------------

def component_configs(detection: Detection, shapes_by_component: dict[str, Shapes]) -> dict[str, dict]:
    """Relative path -> config for every component with weights, plus scheduler and model_index."""
    out: dict[str, dict] = {}
    sbc = {k: {kk: tuple(vv) for kk, vv in v.items()} for k, v in shapes_by_component.items()}
    if sbc.get("unet"):
        out[CONFIG_FILES["unet"]] = unet_config(sbc["unet"], detection, sbc.get("text_encoder_2"))
    if sbc.get("vae"):
        out[CONFIG_FILES["vae"]] = vae_config(sbc["vae"], detection)
    for slot in detection.spec.text_encoders:
        if sbc.get(slot.component):
            out[CONFIG_FILES[slot.component]] = text_encoder_config(sbc[slot.component], slot)
    out[CONFIG_FILES["scheduler"]] = scheduler_config(detection)
    out[CONFIG_FILES["model_index"]] = model_index(detection)
    return out


def tokenizer_folders(detection: Detection, config: str | Path | Contained | None = None,
                      notes: list[str] | None = None) -> dict[str, bytes]:
    """Relative path -> bytes of the tokenizer folders this family needs (``tokenizer/``, ``tokenizer_2/``).

    With ``config`` (a diffusers folder: ``--config``), each is that folder's own tokenizer; one it
    lacks is the bundled CLIP tokenizer, and ``notes`` gets a line saying so."""
    box = contained(config) if config is not None else None
    out = {}
    for folder, pad in detection.tokenizers().items():
        files = tokenizer_files_from(box, folder) if box is not None else None
        if files is None:
            files = tokenizer_files(pad)
            if box is not None and notes is not None:
                notes.append(f"{folder}/: not in {box.given}, so the bundled CLIP tokenizer was written")
        out.update({f"{folder}/{name}": data for name, data in files.items()})
    return out


# ---- configs from a folder (--config FOLDER) ---------------------------------------------------------------

def read_json_object(path: Path, missing: str = "missing") -> dict:
    """The JSON object in ``path`` (a config, a model index); a ParseError naming the file otherwise,
    ``missing`` its message when there is no such file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParseError(missing, path=path) from None
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise ParseError("expected a JSON object", path=path)
    return data


def check_component_names(folder: Contained, index: dict) -> None:
    """``model_index.json`` names component folders: each name it lists must lie inside the folder."""
    for name, value in index.items():
        if not name.startswith("_") and isinstance(value, (list, tuple)):
            folder.resolve(name)


def _same(name: str, have: object, want: object, facts: dict[str, Fact]) -> bool:
    if isinstance(have, tuple):
        have = list(have)
    if name == "addition_time_embed_dim" and have is not None:
        return True  # the weights cannot tell it from the pooled width: trust the folder
    if name == "time_embedding_dim" and want is None:
        return have is None or have == 4 * facts["block_out_channels"].value[0]
    if name == "transformer_layers_per_block":
        types = facts["down_block_types"].value
        n = len(types)

        def expand(v: object) -> list:
            return list(v) if isinstance(v, (list, tuple)) else [v] * n

        h, w = expand(1 if have is None else have), expand(want)
        return len(h) == n and all(h[i] == w[i] for i in range(n) if types[i].startswith("CrossAttn"))
    return have == want


def _check(rel: str, config: dict, facts: dict[str, Fact], folder: Path) -> None:
    for name, fact in facts.items():
        have = config.get(name)
        if not _same(name, have, fact.value, facts):
            key, shape = fact.key, fact.shape
            if fact.items and isinstance(have, (list, tuple)):
                diff = [i for i, (h, w) in enumerate(zip(have, fact.value)) if h != w]
                if diff and len(have) == len(fact.value):
                    key, shape = fact.items[diff[0]]
            shape = f" has shape {list(shape)}" if shape is not None else ""
            raise UsageError(
                f"{rel} in {folder} says {name} = {have!r}, but the weights say {fact.value!r} "
                f"(key {key}{shape}): these configs do not fit this checkpoint; leave out {option('config', None)} to derive "
                f"them from the weights", location=rel)


def configs_from_folder(folder: str | Path | Contained, detection: Detection,
                        shapes_by_component: dict[str, Shapes]) -> dict[str, dict]:
    """``--config FOLDER``: the component configs of an existing diffusers folder, each checked
    against the weights' shapes; same relative paths as :func:`component_configs`.

    A component with weights but no config file in the folder is an error. The scheduler config
    is the folder's when it has one (else derived); ``model_index.json`` is always ours, because it
    must list exactly the components written (a hub folder's lists a safety checker we do not
    write), with the scheduler class of the scheduler config used. Every file must lie inside
    ``folder`` (:mod:`tensorsafe.paths`).
    """
    box = contained(folder)
    folder = box.given
    sbc = {k: {kk: tuple(vv) for kk, vv in v.items()} for k, v in shapes_by_component.items()}
    out: dict[str, dict] = {}
    for name, rel in CONFIG_FILES.items():
        if name == "model_index":
            continue
        path = box.resolve(rel)
        if path.is_file():
            out[rel] = read_json_object(path)
        elif sbc.get(name):
            raise UsageError(f"{option('config', folder)} has no {rel}, but the checkpoint has {name} weights",
                             location=rel)
    sched = out.setdefault(CONFIG_FILES["scheduler"], scheduler_config(detection))
    index = model_index(detection)
    if sched.get("_class_name"):
        index["scheduler"] = ["diffusers", sched["_class_name"]]
    out[CONFIG_FILES["model_index"]] = index
    if sbc.get("unet"):
        _check(CONFIG_FILES["unet"], out[CONFIG_FILES["unet"]],
               unet_facts(sbc["unet"], detection, sbc.get("text_encoder_2")), folder)
    if sbc.get("vae"):
        _check(CONFIG_FILES["vae"], out[CONFIG_FILES["vae"]], vae_facts(sbc["vae"]), folder)
    for slot in detection.spec.text_encoders:
        if sbc.get(slot.component):
            rel = CONFIG_FILES[slot.component]
            _check(rel, out[rel], text_encoder_facts(sbc[slot.component], slot), folder)
    return out


load_folder_configs = configs_from_folder
