"""Read one component of a diffusers folder with tensorsafe's safe readers and load it into a module.

Files are validated (safetensors) or scanned and read without running pickle code (``.bin``) by
:mod:`tensorsafe.converter.sources`. The module is built on the meta device from its config and the
tensors are assigned to it, so no random initialisation runs and nothing is held twice. Every
tensor the config needs must be there with the shape the config implies, and nothing else may be:
a mismatch is refused with the key, the expected and the found shape.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tensorsafe.errors import ParseError
from tensorsafe.paths import Contained
from tensorsafe.pipeline.configs import read_config  # noqa: F401  (the pipeline's config reader)

MAX_LISTED = 6


def read_tensors(folder: Path, root: Contained | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a component folder by key, and a name for the file(s) they came from.

    Every file read must lie inside ``root`` (the model folder; default ``folder``)."""
    from tensorsafe.converter.sources import open_folder_component
    from tensorsafe.load import to_torch

    source = open_folder_component(folder, root=root)
    if source is None:
        raise ParseError("no weights (diffusion_pytorch_model.safetensors, model.safetensors, a shard index or "
                         ".bin) in this folder", path=folder)
    with source:
        files = sorted({located.path for located in source.tensors.values()})
        state = {key: to_torch(located.ref, located.buf) for key, located in source.tensors.items()}
    return state, files[0] if len(files) == 1 else f"{folder} ({len(files)} shards)"


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def load_module(make: Callable[[], nn.Module], state: dict[str, torch.Tensor], *, component: str, source: str,
                device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Build ``make()`` without allocating, check ``state`` against it, and assign the cast tensors.

    ``state`` is consumed (emptied) as its tensors are moved into the module.
    """
    with torch.device("meta"):
        module = make()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ParseError(f"{component}: {len(missing)} tensors that {component}/config.json implies are missing: "
                         f"{_listed(missing)}; the config and the weights do not describe the same model", path=source)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ParseError(f"{component}: {len(unexpected)} tensors are not part of the model {component}/config.json "
                         f"describes: {_listed(unexpected)}", path=source)
    for key, shape in expected.items():
        found = tuple(state[key].shape)
        if found != shape:
            raise ParseError(f"{component}: {key} has shape {list(found)}, but {component}/config.json implies "
                             f"{list(shape)}", path=source)
    cast = {}
    for key in list(state):  # one tensor at a time, so a dtype change never holds two copies of the model
        value = state.pop(key)
        cast[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval().requires_grad_(False)
