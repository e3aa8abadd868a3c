"""``tensorsafe inspect``: a model file's tensors, metadata, totals and identification.

Loaded only for ``tensorsafe inspect`` (see :mod:`tensorsafe.cli.main`).
"""
from __future__ import annotations

import argparse
import json

from tensorsafe.cli.hub import inspect_remote_safetensors, local_source, path_or_hub
from tensorsafe.cli.output import echo
from tensorsafe.converter.describe import inspect_local, with_identification
from tensorsafe.report import printable_lines
from tensorsafe.safetensors.inspect import to_dict, to_table

DESCRIPTION = """\
Show a model file's tensors (name, dtype, shape, bytes), metadata, totals and what it is.

A safetensors file is read from its header (and the few bytes of its LoRA alphas); a file that
breaks a format rule is refused (exit 2; run `tensorsafe validate` for the policy findings). A
torch checkpoint is scanned first and read without running its pickle; tensors nested anywhere
in it are listed. The file is identified: a checkpoint and its family (SD1/SD2/SDXL, or SD3,
Flux.1 dev/schnell, SVD, ... by the key that shows it), a LoRA / LyCORIS / DoRA adapter (base
family, ranks and alphas per block, targeted parts, trigger words and training facts from its
metadata), a textual inversion (vectors), a VAE or a ControlNet, each with its evidence.

Examples:
  tensorsafe inspect model.safetensors
  tensorsafe inspect v1-5-pruned.ckpt --json
  tensorsafe inspect hf://OWNER/REPO/unet/diffusion_pytorch_model.safetensors

An hf:// safetensors file is read by range requests (its 8 + N header bytes); other hf:// files
are downloaded into huggingface_hub's cache first.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=path_or_hub(dir_okay=False), metavar="PATH",
                        help="A model file, or an hf:// file.")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="Print JSON: tensors, metadata, totals and identification.")


def run(args: argparse.Namespace) -> int:
    source = args.path
    if isinstance(source, str) and source.endswith(".safetensors"):
        ins, bytes_read = inspect_remote_safetensors(source)
        data, lines = to_dict(ins), to_table(ins).splitlines() + [f"read {bytes_read:,} bytes from the Hub"]
        data["bytes_read"] = bytes_read
        data, lines = with_identification(data, lines, {t.name: (t.dtype, t.shape) for t in ins.tensors},
                                          ins.metadata)  # header only: alphas are not read
    else:
        data, lines = inspect_local(local_source(source))
    echo(json.dumps(data, indent=2, default=str) if args.as_json else printable_lines(lines))
    return 0
