"""``load_state_dict``: a safe drop-in for ``torch.load`` on checkpoints (no pickle code runs)."""
from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from tensorsafe.checkpoint import read_checkpoint
from tensorsafe.errors import UsageError
from tensorsafe.pickles.policy import Policy
from tensorsafe.tensors import TensorRef


def load_state_dict(path: str | os.PathLike, *, framework: str = "numpy", policy: Policy | None = None) -> dict:
    """Tensors of a checkpoint by name, after a clean scan.

    ``framework="numpy"`` gives read-only arrays backed by the file (bfloat16 is widened to
    float32, which is exact; float8 needs torch); ``framework="torch"`` gives torch tensors.
    """
    if framework not in ("numpy", "torch"):
        raise UsageError(f"framework must be 'numpy' or 'torch', not {framework!r}")
    ckpt = read_checkpoint(path, policy=policy)
    with open(os.fspath(path), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    convert = to_numpy if framework == "numpy" else to_torch
    return {name: convert(ref, buf) for name, ref in ckpt.tensors.items()}


def raw_bytes_view(ref: TensorRef, buf: bytes | mmap.mmap) -> np.ndarray:
    """The tensor's elements as a strided ``uint8`` view over ``buf``: shape + (itemsize,)."""
    itemsize = ref.dtype.itemsize
    if not ref.numel:
        return np.zeros(ref.shape + (itemsize,), dtype=np.uint8)
    base = np.frombuffer(buf, dtype=np.uint8, count=ref.span_bytes(), offset=ref.byte_offset)
    strides = tuple(s * itemsize for s in ref.stride) + (1,)
    return np.lib.stride_tricks.as_strided(base, shape=ref.shape + (itemsize,), strides=strides, writeable=False)


def to_numpy(ref: TensorRef, buf: bytes | mmap.mmap) -> np.ndarray:
    if not ref.numel:
        return np.zeros(ref.shape, dtype=ref.dtype.numpy or np.float32)
    raw = raw_bytes_view(ref, buf)
    if ref.dtype.numpy is not None:
        if ref.is_contiguous:
            return np.frombuffer(buf, dtype=ref.dtype.numpy, count=ref.numel, offset=ref.byte_offset).reshape(ref.shape)
        return np.ascontiguousarray(raw).view(ref.dtype.numpy).reshape(ref.shape)
    if ref.dtype.name == "BF16":
        bits = np.ascontiguousarray(raw).view("<u2").reshape(ref.shape).astype(np.uint32) << 16
        return bits.view(np.float32)
    raise UsageError(f"numpy has no {ref.dtype.name}; use framework='torch'")


def to_torch(ref: TensorRef, buf: bytes | mmap.mmap) -> Any:  # a torch.Tensor (torch is optional)
    import torch

    dtype = getattr(torch, ref.dtype.torch)
    if not ref.numel:
        return torch.empty(ref.shape, dtype=dtype)
    raw = np.ascontiguousarray(raw_bytes_view(ref, buf)).reshape(-1)
    return torch.from_numpy(raw.copy()).view(dtype).reshape(ref.shape)
