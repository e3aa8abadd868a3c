"""Input pictures for a render (``--image``, ``--mask``, ``--depth-map``): read from files or taken as given.

A picture file is untrusted input like a model: its size is read from the header and bounded
before Pillow decodes the pixels (a 100x100-byte PNG can claim 60000x60000 pixels), and a file
Pillow cannot read is refused with one line naming it. Pillow is the render extra's; numpy
arrays and torch tensors are taken as they are (a depth map is 2-D, larger values nearer, as
DPT/MiDaS write them).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tensorsafe.errors import ParseError, UsageError
from tensorsafe.pipeline.validate import MAX_SIDE

MAX_PIXELS = 1 << 26  # 64 Mpx: far above any render, far below what would exhaust memory decoding it


def open_picture(source, what: str):
    """A ``PIL.Image`` from a path or an image, its size checked before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        _check_size(source.size, what, None)
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"{what} must be a picture file or a PIL image, not {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist or is not a file", path=path)
    try:
        with Image.open(path) as image:
            _check_size(image.size, what, path)
            image.load()
            return image.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ParseError(f"{what}: not a picture Pillow can read ({detail})", path=path) from None


def _check_size(size: tuple[int, int], what: str, path: Path | None) -> None:
    width, height = size
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise ParseError(f"{what} is {width}x{height} pixels; the limit is {MAX_SIDE} a side and "
                         f"{MAX_PIXELS >> 20} Mpx", path=path if path is not None else what)


def load_image(source, what: str = "image"):
    """An RGB picture (img2img, inpaint, depth and pix2pix input); alpha is dropped as diffusers drops it."""
    return open_picture(source, what).convert("RGB")


def load_mask(source, what: str = "mask"):
    """A greyscale mask: white (>= half) is repainted, black kept, as diffusers binarises it."""
    return open_picture(source, what).convert("L")


def load_depth(source, what: str = "depth map") -> np.ndarray:
    """A 2-D float32 depth map (larger is nearer) from a picture file (8/16-bit grey or float), an array or a tensor.

    Only the relative values matter: the pipeline rescales the map to [-1, 1] as diffusers does."""
    if type(source).__module__.startswith("torch"):
        source = source.detach().float().cpu().numpy()
    if isinstance(source, np.ndarray):
        depth = np.asarray(source, dtype=np.float32)
        depth = depth[0] if depth.ndim == 3 and depth.shape[0] == 1 else depth
        if depth.ndim != 2:
            raise UsageError(f"{what} must be 2-D (height, width), not of shape {tuple(source.shape)}")
        _check_size((depth.shape[1], depth.shape[0]), what, None)
    else:
        picture = open_picture(source, what)
        if picture.mode not in ("I", "I;16", "I;16B", "I;16L", "F", "L"):
            picture = picture.convert("L")
        depth = np.asarray(picture).astype(np.float32)
    if not np.isfinite(depth).all():
        raise UsageError(f"{what} holds NaN or infinite values")
    if float(depth.max()) == float(depth.min()):
        raise UsageError(f"{what} is flat (every value {float(depth.min())}): a depth map needs some relief")
    return depth


def picture_size(image, multiple: int = 8) -> tuple[int, int]:
    """``(width, height)`` of a picture rounded down to the VAE's multiple, as diffusers' image processor does."""
    width, height = image.size
    if width < multiple or height < multiple:
        raise UsageError(f"the input image is {width}x{height}; it must be at least {multiple} pixels a side")
    return width // multiple * multiple, height // multiple * multiple


# ---- generated inputs ------------------------------------------------------------------------------------

def generated_inputs(task: str, width: int, height: int) -> dict:
    """The input pictures a model of this task needs, made up deterministically."""
    if task == "inpaint":
        return {"image": colour_field(width, height), "mask": ellipse_mask(width, height)}
    if task == "depth":
        return {"image": colour_field(width, height), "depth": radial_depth(width, height)}
    if task in ("img2img", "pix2pix"):
        return {"image": colour_field(width, height)}
    return {}


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x / max(width - 1, 1), y / max(height - 1, 1)


def colour_field(width: int, height: int):
    """A smooth RGB gradient: red left to right, green top to bottom, blue in a soft disc."""
    from PIL import Image

    x, y = _grid(width, height)
    disc = np.clip(1.0 - 2.0 * np.hypot(x - 0.5, y - 0.5), 0.0, 1.0)
    rgb = np.stack([x, y, disc], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def ellipse_mask(width: int, height: int):
    """White (repaint) inside a centred ellipse half the picture's size, black outside."""
    from PIL import Image

    x, y = _grid(width, height)
    inside = ((x - 0.5) / 0.25) ** 2 + ((y - 0.5) / 0.25) ** 2 <= 1.0
    return Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), "L")


def radial_depth(width: int, height: int) -> np.ndarray:
    """A depth map (larger is nearer, as DPT's output) of a sphere in front of a far wall."""
    x, y = _grid(width, height)
    r2 = (x - 0.5) ** 2 + (y - 0.5) ** 2
    return np.sqrt(np.clip(0.16 - r2, 0.0, None)).astype(np.float32) + 0.1
