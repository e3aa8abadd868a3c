"""Tiny LoRAs and embeddings for the tiny pipelines of ``tests/pipeline_tiny``, made the way tools make them.

- diffusers/PEFT LoRAs: PEFT adapters (random, non-zero up weights, per-module ranks and alphas) on the
  tiny UNet and text encoders, saved with diffusers' own ``save_lora_weights``;
- kohya LoRAs: the same kind of weights under kohya's ``lora_unet_*``/``lora_te_*`` names with ``.alpha``
  scalars (SD1.x: kohya flattens the diffusers module paths, which is how kohya names SD1.x LoRAs).

diffusers is the oracle: :func:`fused_state` is what ``load_lora_weights`` + ``fuse_lora`` make of a file.
Nothing here is product code.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

from tests import pipeline_tiny

# every kind of name a LoRA meets (attention, projections, feed-forward, resnet convolutions, the down/up
# samplers' conv, shortcuts) in every block, with few modules: PEFT takes ~7 ms to inject each
UNET_TARGETS = ["attn2.to_k", "attn1.to_out.0", "proj_in", "ff.net.2", "conv1", "conv", "conv_shortcut"]
TEXT_TARGETS = ["q_proj", "fc1"]
ENCODERS = {"sd1": ("text_encoder",), "sd2": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}


def allow_installed_peft() -> None:
    """transformers 5.25 asks for peft >= 0.22 before it loads a text-encoder adapter, a release that does not
    exist yet; 0.21's LoRA layers are what it uses either way. Test-only: lets diffusers' own
    ``load_lora_weights`` load text-encoder LoRAs here."""
    import transformers.integrations.peft as tp

    tp.check_peft_version = lambda min_version: None


def fresh_pipeline(case: str):
    """A diffusers pipeline of the case with its own copies of the models (safe to fuse into)."""
    allow_installed_peft()
    pipe = pipeline_tiny.build_pipeline(case)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, copy.deepcopy(getattr(pipe, name)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def peft_lora(case: str, folder: Path, *, seed: int = 1, with_text: bool = True,
              targets: list[str] = UNET_TARGETS) -> Path:
    """A diffusers-format LoRA (``pytorch_lora_weights.safetensors``) saved by diffusers itself.

    Attention projections keep ``lora_alpha``; pick ``targets`` so that it stays the most common alpha, or
    diffusers misreads the kohya conversion of the file (see :func:`kohya_lora_sd1`)."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    pipe = fresh_pipeline(case)
    layers, metadata = {}, {}
    alphas = {k: v for k, v in {"conv1": 1.0, "proj_in": 6.0, "ff.net.2": 2.0}.items() if k in targets}
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                             rank_pattern={"proj_in": 2}, alpha_pattern=alphas)
    pipe.unet.add_adapter(unet_config)
    layers["unet_lora_layers"] = get_peft_model_state_dict(pipe.unet)
    metadata["unet_lora_adapter_metadata"] = unet_config.to_dict()
    for name in ENCODERS[pipeline_tiny.CASES[case][0]] if with_text else ():
        config = LoraConfig(r=2, lora_alpha=4, target_modules=TEXT_TARGETS, init_lora_weights=False)
        getattr(pipe, name).add_adapter(config)
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(getattr(pipe, name))
        metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    _shrink(layers)
    folder.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(folder, **layers, **metadata, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def _shrink(layers: dict) -> None:
    """Keep the updates small (a LoRA nudges a model; random full-size ones would swamp the tiny weights)."""
    for state in layers.values():
        for key, value in state.items():
            if "lora_B" in key:
                value.mul_(0.3)


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def kohya_lora_sd1(path: Path, *, seed: int = 2, save_as: str = "safetensors", missing_alpha: bool = False,
                   text_targets: list[str] = TEXT_TARGETS) -> Path:
    """An SD1.x kohya LoRA: ``lora_unet_<diffusers path with _>``, ``lora_te_<CLIP path with _>``, alphas
    that differ from the ranks and between modules.

    diffusers 0.42 reads a kohya alpha of an attention projection only when it is the file's most common
    alpha (its alpha_pattern keys for them end in ``processor.to_k_lora.down.weight`` and match nothing),
    reads text-encoder alphas under ``text_model.`` names that transformers 5's flattened CLIP lacks, and
    gives a module without an alpha the most common alpha where kohya, A1111 and ComfyUI use scale 1.
    So that diffusers can be the oracle, attention projections and the text encoder share one alpha, and
    every module has one unless ``missing_alpha``."""
    import torch

    torch.manual_seed(seed)
    pipe = fresh_pipeline("sd1")
    state = {}
    modules = [("lora_unet_", n, m) for n, m in pipe.unet.named_modules() if _targeted(n, UNET_TARGETS)]
    modules += [("lora_te_", "text_model." + n if not n.startswith("text_model.") else n, m)
                for n, m in pipe.text_encoder.named_modules() if _targeted(n, text_targets)]
    for i, (prefix, name, module) in enumerate(modules):
        rank = 4 if i % 3 else 2
        weight = module.weight
        down_shape = (rank, weight.shape[1], *weight.shape[2:])
        up_shape = (weight.shape[0], rank, *([1, 1] if weight.dim() == 4 else []))
        base = prefix + name.replace(".", "_")
        state[f"{base}.lora_down.weight"] = torch.randn(down_shape) * 0.2
        state[f"{base}.lora_up.weight"] = torch.randn(up_shape) * 0.2
        if not (missing_alpha and i == 1):
            alpha = 3.0 if prefix == "lora_te_" or _targeted(name, list(ATTENTION)) else float(1 + i % 5)
            state[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    if save_as == "pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path, metadata={"ss_network_module": "networks.lora"})
    return path


def _targeted(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def fused_state(case: str, lora: Path | list[tuple[Path, float]], scale: float = 1.0) -> dict:
    """What diffusers makes of LoRA file(s): ``load_lora_weights`` (+ ``set_adapters``) + ``fuse_lora``,
    as ``component/key -> tensor``."""
    pipe = fresh_pipeline(case)
    loras = [(Path(lora), scale)] if not isinstance(lora, list) else lora
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()
    state = model_state(pipe)
    for path, scale in loras:
        add_kohya_text_attention(state, path, scale)
    return state


KOHYA_TEXT_ATTENTION = re.compile(r"lora_te([12]?)_text_model_encoder_layers_(\d+)_self_attn_(q|k|v|out)_proj")


def add_kohya_text_attention(state: dict, path: Path, scale: float) -> None:
    """diffusers 0.42 with transformers 5 silently skips a kohya file's text-encoder attention modules
    (``lora_te_..._self_attn_q_proj``: its ``to_q_lora`` keys never reach PEFT), which A1111 and ComfyUI
    apply. They are added here by kohya's rule, ``W += scale * alpha / rank * up @ down``."""
    import torch
    from safetensors import safe_open

    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    else:
        tensors = torch.load(path, weights_only=True)  # the test's own file, as an oracle
    for key, down in tensors.items():
        m = KOHYA_TEXT_ATTENTION.fullmatch(key.removesuffix(".lora_down.weight"))
        if m is None or not key.endswith(".lora_down.weight"):
            continue
        base = key.removesuffix(".lora_down.weight")
        down, up = down.float(), tensors[f"{base}.lora_up.weight"].float()
        alpha = float(tensors[f"{base}.alpha"]) if f"{base}.alpha" in tensors else down.shape[0]
        encoder = "text_encoder_2" if m.group(1) == "2" else "text_encoder"
        name = f"{encoder}/encoder.layers.{m.group(2)}.self_attn.{m.group(3)}_proj.weight"
        name = name if name in state else name.replace("/", "/text_model.", 1)
        state[name] = state[name] + scale * alpha / down.shape[0] * (up @ down).to(state[name].dtype)


def model_state(pipe) -> dict:
    out = {}
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for key, value in module.state_dict().items():
            out[f"{name}/{key}"] = value.detach().clone()
    return out


def changed(before: dict, after: dict, atol: float = 0.0) -> set[str]:
    import torch

    return {k for k in before if not torch.allclose(before[k], after[k], atol=atol, rtol=0)}
