"""The size of a render nobody gave a size for: the model's own, capped where a first render should be short.

On a CPU a denoising step costs about the square of the side: SDXL at its native 1024 takes tens
of minutes for 20 steps, at 512 a few. ``tensorsafe render`` on a CPU therefore caps the default
side at :data:`CPU_FIRST_SIDE` and says how to ask for the full size; a size given (``--size``,
or an input picture's) is never changed.
"""
from __future__ import annotations

from pathlib import Path

from tensorsafe.pipeline.preflight import read_folder_configs

CPU_FIRST_SIDE = 512  # SD1's own size: SD1 renders at full size, SD2-768 and SDXL at 512


def capped_size(root: Path, size, cap: int | None) -> int | tuple[int, int] | None:
    """``size`` unchanged when given or no cap applies, else the cap (a multiple of the VAE's factor)
    when the model's own side in ``root`` is larger; None (the model's own) otherwise."""
    if size is not None or cap is None:
        return size
    configs = read_folder_configs(root)
    side = cap // configs.scale_factor * configs.scale_factor
    return side if 0 < side < configs.default_size() else None


def default_side_for(device: str) -> int | None:
    """The cap on the default side for a device: :data:`CPU_FIRST_SIDE` on a CPU, none on a GPU."""
    return CPU_FIRST_SIDE if str(device).split(":")[0] == "cpu" else None
