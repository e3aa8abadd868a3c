"""What a conversion is asked to do (:class:`ConvertOptions`) and what it did (:class:`ConversionResult`):
shared by every converter (single file <-> diffusers, to safetensors, adapters) and the dispatcher
:func:`tensorsafe.convert` above them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tensorsafe.converter.execute import DEFAULT_MAX_SHARD_BYTES
from tensorsafe.errors import UsageError, option
from tensorsafe.tensors import DTYPES, DType

DTYPE_NAMES = {"fp16": "F16", "float16": "F16", "bf16": "BF16", "bfloat16": "BF16", "fp32": "F32", "float32": "F32"}


@dataclass
class ConvertOptions:
    """How to convert; the fields match ``tensorsafe convert``'s options.

    Attributes:
        dtype: Cast float tensors to ``fp16``, ``bf16`` or ``fp32``; ``None`` keeps them.
        ema: ``auto``, ``yes`` or ``no``: use the UNet's EMA copy when the checkpoint carries one.
        vae: A file to take the VAE from instead.
        config: A diffusers folder to take component configs, scheduler and tokenizers from.
        base: A diffusers folder to take the components the file lacks from (a UNet-only file).
        model_type: Override the detected family: ``sd1``, ``sd2``, ``sdxl``, ``sdxl-refiner``.
        prediction_type: ``epsilon`` or ``v_prediction``, where the weights cannot tell.
        overwrite: Replace an existing destination (only once the new output is complete).
        allow_unmapped: Convert even when some keys are unknown to the key maps.
        max_shard_bytes: Bytes per weights file before sharding with an index.
        allow_symlinks: Follow symlinks in a source, ``--config`` or ``--base`` folder whose targets are
            outside it (weights kept in a shared cache); by default they are refused.
        key: Writing safetensors from a pickle checkpoint: the dotted path of the entry that holds the
            weights (``state_dict_ema``, ``model.module``); by default the common wrappers are unwrapped.
        metadata: Writing safetensors weights: ``__metadata__`` entries, added to ``{"format": "pt"}``
            (a ``format`` given here replaces it).
        to: Converting a LoRA file: ``diffusers`` or ``kohya`` (default: the other format).
    """

    dtype: str | None = None
    ema: str = "auto"
    vae: str | None = None
    config: str | None = None
    base: str | None = None
    model_type: str | None = None
    prediction_type: str | None = None
    overwrite: bool = False
    allow_unmapped: bool = False
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    allow_symlinks: bool = False
    key: str | None = None
    metadata: dict[str, str] | None = None
    to: str | None = None

    def cast(self) -> DType | None:
        if self.dtype is None:
            return None
        try:
            return DTYPES[DTYPE_NAMES[self.dtype.lower()]]
        except KeyError:
            raise UsageError(f"{option('dtype', None)} must be one of fp16, bf16, fp32, not {self.dtype!r}") from None


@dataclass
class ConversionResult:
    """What a conversion did.

    Attributes:
        src: The source file or folder.
        dst: The destination written.
        direction: ``single-file -> diffusers`` or ``diffusers -> single-file``.
        family: The detected model family, described in one line.
        components: The diffusers components written or read (``unet``, ``vae``, ``text_encoder``, ...).
        tensors: Tensors written.
        bytes_written: Tensor bytes written.
        seconds: Wall time.
        evidence: The keys and shapes the family was detected from.
        notes: What was assumed or taken from elsewhere.
        dropped: Keys left out on purpose, with the reason.
        unmapped: Keys the key maps do not know (converted only with ``allow_unmapped``).
        symlinked: Files read through a symlink leading out of their folder (``allow_symlinks``).
        aliases: Writing safetensors weights: tied names not written, each with the name its bytes were
            written under (also recorded in the file's ``__metadata__``).
        metadata: Writing one safetensors file: its ``__metadata__``.
        files: Writing a folder of safetensors weights: each weights file written, with the file it came from.
    """

    src: str
    dst: str
    direction: str
    family: str
    components: list[str]
    tensors: int
    bytes_written: int
    seconds: float
    evidence: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    symlinked: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


Progress = Callable[[int], None]
