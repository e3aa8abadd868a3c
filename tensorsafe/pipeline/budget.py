"""What a render will cost, estimated from the configs, the safetensors headers and the size before anything is built.

``render`` refuses a render whose estimate is over ``max_memory_bytes`` (default: half the
machine's RAM, or 90% of the GPU's memory for ``device="cuda"``) with one line, before torch
allocates anything. The estimate is an upper bound of what the render adds to the process
(Python and torch themselves not counted), in four parts:

* weights: every tensor's element count from the safetensors headers (read without loading),
  at the compute dtype; while a component loads, its file is mapped and copied once, so the load
  peak is the components already loaded plus twice the one being read;
* activations (at 4 bytes an element on the CPU, whatever the dtype): the UNet's skip connections plus the largest working set of any block (a resnet's
  input, normed copy and outputs; a transformer's residual stream, q/k/v and GEGLU feed-forward),
  per guidance copy; the VAE's largest decoder (or encoder) block at its resolution; the text
  encoders' hidden states;
* per output pixel: the generated input pictures, the float image and its PNG conversion;
* a fixed overhead for the tokenizers' tables and torch's first-call scratch.

Attention maps are not counted at heads × tokens² elements: torch's fused attention kernels
(CPU flash attention, CUDA flash/memory-efficient) work on blocks and never hold the whole map —
measured with torch 2.13 on CPU, an 8-head attention over 4096 tokens adds 3 MB where the map
would be 1 GB. What the map does bound is the work: it grows with the square of the number of
latent pixels, so a size whose highest-resolution attention block attends over more than
``MAX_ATTENTION_TOKENS`` positions (SD1 past 2048 pixels a side) is refused as absurd on any
device, whatever memory it would fit in. Everything else a render does grows linearly with the
pixel count and is bounded by the memory limit.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from tensorsafe.converter.sources import component_weight_files
from tensorsafe.errors import LimitExceeded, ParseError, option
from tensorsafe.paths import contained
from tensorsafe.readers.safetensors.layout import FileSource
from tensorsafe.readers.safetensors.model import HeaderFormatError
from tensorsafe.readers.safetensors.read import read_checked_header
from tensorsafe.tensors import DTYPE_BITS, DTYPES, FLOAT_DTYPES

MEMORY_FRACTION = 0.5          # default max_memory_bytes: this share of the machine's RAM
GPU_MEMORY_FRACTION = 0.9      # ... or of the GPU's memory when rendering on CUDA
FALLBACK_MEMORY_BYTES = 8 << 30  # where the RAM size is unknown
MAX_ATTENTION_TOKENS = 65_536  # positions one attention block may attend over (a 256x256 latent)
FIXED_OVERHEAD_BYTES = 96 << 20  # torch's first-call scratch (oneDNN kernels, thread buffers)
TOKENIZER_BYTES = 64 << 20     # one CLIP tokenizer: the vocabulary and merges in Python and in tokenizers
PIXEL_BYTES = 192              # generated inputs, float image, PNG conversion, per output pixel
RESNET_WORK = 8                # a resnet block: input, normed copy, conv outputs and oneDNN reorders, x channels
TRANSFORMER_WORK = 28          # a transformer block holds ~ 28 x channels per token
UPSAMPLE_WORK = 12             # input + nearest x2 + conv (4 + 4), and reorders
FLOAT_BYTES = {name: DTYPES[name].itemsize for name in FLOAT_DTYPES}


@dataclass(frozen=True)
class Weights:
    stored: int
    """Bytes in the files."""
    compute: int
    """Bytes once loaded at the compute dtype."""


@dataclass(frozen=True)
class Estimate:
    width: int
    height: int
    weights: int
    loading: int
    """Peak while the components load, one after another."""
    activations: int
    overhead: int
    attention_tokens: int
    """Positions the highest-resolution attention block attends over."""

    @property
    def total(self) -> int:
        return max(self.loading, self.weights + self.activations) + self.overhead

    def describe(self) -> str:
        return (f"about {human(self.total)} (weights {human(self.weights)}, activations {human(self.activations)}, "
                f"overhead {human(self.overhead)})")


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PiB"


# ---- weights --------------------------------------------------------------------------------------------------

def weight_files(folder: Path) -> list[Path]:
    """The files ``open_folder_component`` reads, in the same order of preference."""
    return component_weight_files(contained(folder, allow_symlinks=True)) or []


def component_weights(folder: Path, compute_bytes: int) -> Weights:
    """Bytes of a component's weights as stored and at the compute dtype, from the headers only.

    A ``.bin`` has no header to read without walking its pickle: its size stands for the stored
    bytes, and the compute bytes assume half-precision storage.
    """
    stored = compute = 0
    for path in weight_files(folder):
        if path.suffix == ".bin":
            size = path.stat().st_size
            stored += size
            compute += size * max(1, compute_bytes // 2)
            continue
        s, c = _safetensors_weights(path, compute_bytes)
        stored, compute = stored + s, compute + c
    return Weights(stored, compute)


def _safetensors_weights(path: Path, compute_bytes: int) -> tuple[int, int]:
    try:
        with FileSource(path) as src:
            header = read_checked_header(src)
    except HeaderFormatError as exc:
        raise ParseError(f"not a valid safetensors file: {exc.message}", path=path) from None
    table = header.table
    stored = compute = 0
    for dtype, begin, end in zip(table.dtypes, table.begins, table.ends):
        size = max(0, end - begin)
        stored += size
        if dtype in FLOAT_BYTES:
            compute += size * 8 // DTYPE_BITS[dtype] * compute_bytes
        else:
            compute += size
    return stored, compute


# ---- activations ----------------------------------------------------------------------------------------------

def _area(side_h: int, side_w: int, halvings: int) -> int:
    return math.ceil(side_h / 2 ** halvings) * math.ceil(side_w / 2 ** halvings)


def unet_activations(cfg: dict, lat_h: int, lat_w: int, copies: int) -> tuple[int, int]:
    """(elements the UNet holds at its peak, positions of its highest-resolution attention block)."""
    from tensorsafe.pipeline.configs import levels

    down, up = levels(cfg)
    n = len(down)
    widths = [lv.channels for lv in down]
    skips = widths[0] * _area(lat_h, lat_w, 0)
    work = 0
    tokens = 0
    for i, lv in enumerate(down):
        a = _area(lat_h, lat_w, i)
        cin = widths[i - 1] if i else widths[0]
        skips += lv.layers * lv.channels * a + (lv.channels * _area(lat_h, lat_w, i + 1) if i < n - 1 else 0)
        work = max(work, (cin + RESNET_WORK * lv.channels) * a)
        if lv.cross:
            work = max(work, TRANSFORMER_WORK * lv.channels * a)
            tokens = max(tokens, a)
    mid = _area(lat_h, lat_w, n - 1)
    work = max(work, (TRANSFORMER_WORK + RESNET_WORK) * widths[-1] * mid)
    if cfg.get("mid_block_type"):
        tokens = max(tokens, mid)
    for j, lv in enumerate(up):
        a = _area(lat_h, lat_w, n - 1 - j)
        cat = 2 * max(widths) + lv.channels
        work = max(work, (2 * cat + RESNET_WORK * lv.channels) * a)
        if lv.cross:
            work = max(work, TRANSFORMER_WORK * lv.channels * a)
            tokens = max(tokens, a)
        if j < n - 1:
            work = max(work, UPSAMPLE_WORK * lv.channels * a)
    return copies * (skips + work), tokens


def vae_activations(cfg: dict, height: int, width: int) -> tuple[int, int]:
    """(elements the VAE's decoder or encoder holds at its peak, positions of its mid-block attention)."""
    widths = list(cfg["block_out_channels"])
    n = len(widths)
    full = height * width
    work = 0
    for i in range(n):  # decoder level i runs at 1/2^(n-1-i) of the image side; the encoder mirrors it
        a = _area(height, width, n - 1 - i)
        cout, cin = widths[::-1][i], widths[::-1][max(i - 1, 0)]
        work = max(work, (cin + RESNET_WORK * cout) * a, (UPSAMPLE_WORK * cout * a) if i < n - 1 else 0)
        enc_in = widths[max(i - 1, 0)]
        work = max(work, (enc_in + RESNET_WORK * widths[i]) * _area(height, width, i))
    latent = _area(height, width, n - 1)
    work = max(work, (TRANSFORMER_WORK + RESNET_WORK) * widths[-1] * latent)
    tokens = latent if cfg.get("mid_block_add_attention", True) else 0
    return work + 8 * full, tokens


def text_activations(cfg: dict, copies: int, max_length: int = 77) -> int:
    width, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    inner = cfg["intermediate_size"]
    return copies * max_length * ((layers + 1) * width + 8 * width + 2 * inner)


def activation_bytes(device: str, dtype_bytes: int, vae_dtype_bytes: int) -> tuple[int, int]:
    """Bytes per activation element: the compute dtype's on CUDA; 4 on the CPU, whose half-precision
    kernels work through float32 buffers (measured: a bf16 render takes as much as an fp32 one)."""
    if str(device).startswith("cuda"):
        return dtype_bytes, vae_dtype_bytes
    return max(4, dtype_bytes), max(4, vae_dtype_bytes)


# ---- the estimate and the limit -------------------------------------------------------------------------------

def estimate(*, unet: dict, vae: dict, text_encoders: list[dict], weights: list[Weights], width: int, height: int,
             copies: int, dtype_bytes: int, vae_dtype_bytes: int) -> Estimate:
    """The memory a render at ``width`` x ``height`` needs (see the module docstring)."""
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    lat_h, lat_w = height // factor, width // factor
    unet_elems, unet_tokens = unet_activations(unet, lat_h, lat_w, copies)
    vae_elems, vae_tokens = vae_activations(vae, height, width)
    text = sum(text_activations(cfg, copies) for cfg in text_encoders)
    activations = max(unet_elems * dtype_bytes, vae_elems * vae_dtype_bytes) + text * dtype_bytes
    activations += PIXEL_BYTES * height * width
    loaded = loading = 0
    for w in weights:
        loading = max(loading, loaded + max(2 * w.stored, w.compute))
        loaded += w.compute
    overhead = FIXED_OVERHEAD_BYTES + TOKENIZER_BYTES * len(text_encoders)
    return Estimate(width, height, loaded, loading, activations, overhead, max(unet_tokens, vae_tokens))


def default_memory_limit(device: str = "cpu") -> int:
    """Half the machine's RAM (``os.sysconf``), or 90% of the GPU's memory for a CUDA device."""
    if str(device).startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * GPU_MEMORY_FRACTION)
        except (ImportError, RuntimeError, AssertionError, ValueError):  # no GPU: the device check says so
            return FALLBACK_MEMORY_BYTES
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY_BYTES
    return int(ram * MEMORY_FRACTION) if ram > 0 else FALLBACK_MEMORY_BYTES


def require_within(est: Estimate, max_memory_bytes: int | None, device: str = "cpu") -> None:
    """Refuse (``LimitExceeded``) a render over the memory limit or with an absurd attention span."""
    if est.attention_tokens > MAX_ATTENTION_TOKENS:
        raise LimitExceeded("max_attention_tokens", MAX_ATTENTION_TOKENS,
                            f"size {est.width}x{est.height}: an attention block would attend over "
                            f"{est.attention_tokens:,} positions (limit {MAX_ATTENTION_TOKENS:,}); its work grows with "
                            "the square of that: choose a smaller size")
    limit = max_memory_bytes if max_memory_bytes is not None else default_memory_limit(device)
    if est.total > limit:
        memory = option("max_memory_bytes", None, cli="--max-memory")
        where = memory if max_memory_bytes is not None else \
            f"default: {'90% of the GPU' if str(device).startswith('cuda') else 'half the RAM'}; {memory}"
        raise LimitExceeded("max_memory_bytes", limit,
                            f"size {est.width}x{est.height} needs {est.describe()}, over the limit of {human(limit)} "
                            f"({where})")
