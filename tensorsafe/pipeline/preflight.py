"""Everything ``render`` can check before torch builds or allocates anything: configs, options, memory.

``read_folder_configs`` reads and checks each component's config (the single place the pipeline
reads them); ``plan_render`` adds the options and refuses a render the memory estimate
(:mod:`tensorsafe.pipeline.budget`) puts over the limit. Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tensorsafe.errors import ParseError, UsageError
from tensorsafe.pipeline import budget
from tensorsafe.pipeline.configs import unet_config, vae_config
from tensorsafe.pipeline.validate import (
    MAX_SIDE,
    check_options,
    check_scheduler,
    check_side,
    check_text_encoder,
)

ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
DEFAULT_SAMPLE_SIZE = 64
DTYPE_BYTES = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}


@dataclass
class FolderConfigs:
    unet: dict
    vae: dict
    text_encoders: dict[str, dict] = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    model_index: dict = field(default_factory=dict)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    def default_size(self) -> int:
        return (self.unet.get("sample_size") or DEFAULT_SAMPLE_SIZE) * self.scale_factor

    def copies(self, guidance: float) -> int:
        """Batch rows under classifier-free guidance: 2, or 3 for pix2pix (as ``pipeline.Guidance``)."""
        if guidance <= 1.0:
            return 1
        return 3 if self.unet["in_channels"] - self.vae["latent_channels"] == self.vae["latent_channels"] else 2


def read_folder_configs(root: Path) -> FolderConfigs:
    """Every config the pipeline reads, with defaults filled in and each value checked against its range."""
    from tensorsafe.pipeline.configs import read_config

    model_index = read_config(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    unet = unet_config(read_config(root / "unet" / "config.json"), root / "unet" / "config.json")
    vae = vae_config(read_config(root / "vae" / "config.json"), root / "vae" / "config.json")
    encoders = {}
    for name, _ in ENCODERS:
        path = root / name / "config.json"
        if path.is_file():
            cfg = read_config(path)
            check_text_encoder(cfg, path, f"{name}/config.json")
            encoders[name] = cfg
    if not encoders:
        raise ParseError("the folder has no text encoder (text_encoder/ or text_encoder_2/)", path=root)
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler = read_config(scheduler_path)
    check_scheduler(scheduler, scheduler_path)
    return FolderConfigs(unet, vae, encoders, scheduler, model_index)


def image_size(size, configs: FolderConfigs) -> tuple[int, int]:
    """``(width, height)`` from ``size`` (one side, ``(width, height)`` or None for the model's own)."""
    f = configs.scale_factor
    if size is None:
        side = configs.default_size()
        if side > MAX_SIDE:
            raise UsageError(f"the model's own size {side} (unet sample_size x VAE factor {f}) is over {MAX_SIDE}: "
                             "pass a smaller size")
        return side, side
    if not isinstance(size, (tuple, list)):
        side = check_side("size", size, f)
        return side, side
    if len(size) != 2:
        raise UsageError(f"size must be an int or (width, height), not {size!r}")
    return check_side("width", size[0], f), check_side("height", size[1], f)


def plan_render(root: Path, size, *, steps: int, guidance: float, seed: int, strength: float, prompt: str,
                negative_prompt: str, dtype: str, device: str, max_memory_bytes: int | None
                ) -> tuple[FolderConfigs, tuple[int, int], budget.Estimate]:
    """Check the folder's configs and the options, estimate the render's memory and refuse it if over the limit."""
    check_options(steps=steps, guidance=guidance, seed=seed, strength=strength, prompt=prompt,
                  negative_prompt=negative_prompt, max_memory_bytes=max_memory_bytes)
    configs = read_folder_configs(root)
    width, height = image_size(size, configs)
    est = estimate_folder(root, configs, width, height, guidance, dtype, device)
    budget.require_within(est, max_memory_bytes, device)
    return configs, (width, height), est


def compute_bytes(dtype: str, vae_cfg: dict) -> tuple[int, int]:
    """Bytes per element in the UNet/text encoders and in the VAE (fp16 pipelines decode in fp32 when force_upcast)."""
    try:
        size = DTYPE_BYTES[str(dtype).lower()]
    except KeyError:
        raise UsageError(f"dtype must be one of fp32, fp16, bf16, not {dtype!r}") from None
    vae = 4 if str(dtype).lower() in ("fp16", "float16") and vae_cfg.get("force_upcast", True) else size
    return size, vae


def estimate_folder(root: Path, configs: FolderConfigs, width: int, height: int, guidance: float,
                    dtype: str, device: str = "cpu") -> budget.Estimate:
    size, vae_size = compute_bytes(dtype, configs.vae)
    act, vae_act = budget.activation_bytes(device, size, vae_size)
    weights = [budget.component_weights(root / "unet", size), budget.component_weights(root / "vae", vae_size)]
    weights += [budget.component_weights(root / name, size) for name in configs.text_encoders]
    return budget.estimate(unet=configs.unet, vae=configs.vae, text_encoders=list(configs.text_encoders.values()),
                           weights=weights, width=width, height=height, copies=configs.copies(guidance),
                           dtype_bytes=act, vae_dtype_bytes=vae_act)
