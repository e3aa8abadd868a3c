"""``tensorsafe convert``: the command line over :func:`tensorsafe.converter.run.convert`.

Loaded only for ``tensorsafe convert`` (see :mod:`tensorsafe.cli.main`): the converter and numpy load
with it, the render pipeline only for ``--check-render``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorsafe.cli.arguments import INPUT_FILE, INPUT_FOLDER, int_range, key_value, path
from tensorsafe.cli.hub import local_source, path_or_hub
from tensorsafe.cli.output import echo
from tensorsafe.cli.render import require_render_extra
from tensorsafe.converter.execute import DEFAULT_MAX_SHARD_BYTES
from tensorsafe.converter.run import ConversionResult, ConvertOptions, convert
from tensorsafe.report import printable, printable_lines


def _progress_factory(quiet: bool):
    """A tqdm bar over bytes (tensors in the postfix) on a terminal; nothing in pipes or with --quiet."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    def make(total_bytes: int, tensors: int):
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{tensors} tensors",
                   file=sys.stderr, dynamic_ncols=True)
        return bar.update

    return make


def _summary(r: ConversionResult) -> str:
    """Each line escaped whole: paths, tensor names and notes come from the (untrusted) source."""
    if _writes_weights(r):
        return printable_lines(_weights_summary(r))
    lines = [f"converted {r.src} -> {r.dst} ({r.direction})",
             f"  family: {r.family}",
             f"  components: {', '.join(r.components)}",
             f"  {r.tensors} tensors, {r.bytes_written / 1e6:,.1f} MB in {r.seconds:.1f} s"]
    lines += [f"  evidence: {e}" for e in r.evidence]
    lines += [f"  note: {n}" for n in r.notes]
    if r.dropped:
        lines.append(f"  dropped {len(r.dropped)} keys on purpose (e.g. {next(iter(r.dropped))}: "
                     f"{next(iter(r.dropped.values()))})")
    if r.unmapped:
        lines.append(f"  left out {len(r.unmapped)} unknown keys (--allow-unmapped): {', '.join(r.unmapped[:5])}")
    lines += [f"  read through a symlink leading out of its folder (--allow-symlinks): {s}" for s in r.symlinked]
    return printable_lines(lines)


SHOWN = 20


def _writes_weights(r: ConversionResult) -> bool:
    return r.direction.endswith(("-> safetensors", "-> safetensors folder"))


def _weights_summary(r: ConversionResult) -> list[str]:
    """Writing safetensors weights: every name dropped (nothing silently), the tied aliases, the files."""
    lines = [f"converted {r.src} -> {r.dst} ({r.direction})",
             f"  {r.tensors} tensors, {r.bytes_written / 1e6:,.1f} MB in {r.seconds:.1f} s"]
    lines += [f"  note: {n}" for n in r.notes]
    lines += [f"  wrote {new} (from {old})" for new, old in list(r.files.items())[:SHOWN]]
    if r.aliases:
        shown = ", ".join(f"{a} = {k}" for a, k in list(r.aliases.items())[:SHOWN])
        lines.append(f"  tied: {len(r.aliases)} names written once, the alias recorded in __metadata__: {shown}")
    lines += [f"  dropped {name}: {why}" for name, why in list(r.dropped.items())[:SHOWN]]
    if len(r.dropped) > SHOWN:
        lines.append(f"  ... and {len(r.dropped) - SHOWN} more dropped")
    if r.metadata:
        lines.append(f"  __metadata__: {', '.join(sorted(r.metadata))}")
    lines += [f"  read through a symlink leading out of its folder (--allow-symlinks): {s}" for s in r.symlinked]
    return lines


DESCRIPTION = """\
Convert a single-file SD checkpoint to a diffusers folder, or a diffusers folder back to one file;
or any pickle checkpoint to safetensors weights.

The direction follows SRC and DST: a DST ending in .safetensors is one file (from a diffusers
folder: the single-file layout; from a checkpoint file: the same tensors, names and bytes); a
folder of .bin weights (transformers, diffusers) becomes the same folder with .safetensors
weights. A LoRA converts between the kohya/A1111/ComfyUI and diffusers formats (--to), a
textual-inversion embedding to safetensors, a VAE file to a diffusers AutoencoderKL folder and
back. Pickle checkpoints are scanned first and read without running any
pickle code. Output is written beside DST and renamed into place only when complete and
verified; DST is never touched without --overwrite. DST's parent folder must exist, whether DST
is a folder or a file (as with cp: parent folders are not created; mkdir -p them first).

Examples:
  tensorsafe convert v1-5-pruned-emaonly.safetensors ./sd15-diffusers
  tensorsafe convert model.ckpt ./out --dtype fp16 --ema yes
  tensorsafe convert ./sdxl-diffusers sdxl.safetensors
  tensorsafe convert model.ckpt model.safetensors --ema no
  tensorsafe convert training.pt weights.safetensors --key model_ema
  tensorsafe convert ./bert-base ./bert-base-safetensors
  tensorsafe convert model.ckpt ./out --check-render
  tensorsafe convert style_lora.safetensors pytorch_lora_weights.safetensors --to diffusers
  tensorsafe convert pytorch_lora_weights.safetensors style_lora.safetensors --to kohya
  tensorsafe convert vae-ft-mse.safetensors ./vae-diffusers
  tensorsafe convert hf://OWNER/REPO/model.ckpt ./out

An hf:// SRC (a file, or a diffusers folder or repository) is downloaded into
huggingface_hub's cache first, then converted like a local one.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=path_or_hub(exists=True), metavar="SRC",
                        help="A checkpoint file, a diffusers or weights folder, or an hf:// file or folder.")
    parser.add_argument("dst", type=path(), metavar="DST", help="The folder or .safetensors file to write.")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="Cast float tensors (default: keep).")
    parser.add_argument("--ema", choices=["auto", "yes", "no"], default="auto",
                        help="To a diffusers folder: use the EMA copy of the UNet when the checkpoint carries one. "
                             "To a .safetensors file: keep every tensor (auto), drop model_ema.* (no), or write the "
                             "EMA copy under the UNet's names (yes). [default: %(default)s]")
    parser.add_argument("--key", metavar="PATH",
                        help="To a .safetensors file from a pickle: the dotted path of the entry holding the weights "
                             "(default: state_dict, model_state_dict, model, module, net, network are unwrapped).")
    parser.add_argument("--metadata", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="To safetensors weights: a __metadata__ entry (repeatable); added to format=pt.")
    parser.add_argument("--vae", type=INPUT_FILE, metavar="FILE",
                        help="Take the VAE from this file instead.")
    parser.add_argument("--config", dest="config_folder", type=INPUT_FOLDER, metavar="FOLDER",
                        help="Take component configs, scheduler and tokenizers from this diffusers folder (a "
                             "tokenizer folder it lacks gets the bundled CLIP tokenizer; the summary says so).")
    parser.add_argument("--base", dest="base_folder", type=INPUT_FOLDER, metavar="FOLDER",
                        help="Take the components the file lacks (VAE, text encoders of a UNet-only file) from this "
                             "diffusers folder.")
    parser.add_argument("--model-type", metavar="FAMILY",
                        help="Override the detected family: sd1, sd2, sdxl, sdxl-refiner.")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                        help="Where the weights cannot tell (SD2 512 vs 768-v).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace DST if it exists (only once the new output is complete).")
    parser.add_argument("--allow-unmapped", action="store_true",
                        help="Convert even when some keys are unknown to the key maps.")
    parser.add_argument("--allow-symlinks", action="store_true",
                        help="Follow symlinks in a source, --config or --base folder that lead out of it (weights "
                             "kept in a shared cache); the summary lists them. By default they are refused.")
    parser.add_argument("--max-shard-size", type=int_range(1), default=DEFAULT_MAX_SHARD_BYTES, metavar="BYTES",
                        help="Bytes per weights file before sharding with an index. [default: %(default)s; x>=1]")
    parser.add_argument("--check-render", action="store_true",
                        help="Then render a small picture from the output with the reference pipeline (render "
                             "extra) and write it beside DST as NAME.check.png.")
    parser.add_argument("--to", choices=["diffusers", "kohya"],
                        help="A LoRA file: the format to write (default: the other one). kohya is what A1111 and "
                             "ComfyUI load, diffusers what load_lora_weights loads.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress bar and no summary.")


def run(args: argparse.Namespace) -> int:
    if args.check_render:
        require_render_extra()
    options = ConvertOptions(dtype=args.dtype, ema=args.ema, key=args.key, metadata=dict(args.metadata) or None,
                             vae=args.vae, config=args.config_folder, base=args.base_folder,
                             model_type=args.model_type, prediction_type=args.prediction_type,
                             overwrite=args.overwrite, allow_unmapped=args.allow_unmapped,
                             max_shard_bytes=args.max_shard_size, allow_symlinks=args.allow_symlinks, to=args.to)
    src = local_source(args.src)
    result = convert(src, args.dst, options=options, progress_factory=_progress_factory(args.quiet))
    if not args.quiet:
        echo(_summary(result))
    if args.check_render:
        _check_render(Path(result.dst), args.quiet)
    return 0


def _check_render(dst: Path, quiet: bool) -> None:
    from tensorsafe.errors import TensorsafeError
    from tensorsafe.pipeline import check_render

    try:
        from tensorsafe.cli.progress import step_reporter

        png = check_render(dst, progress=step_reporter(quiet, label="check render"))
    except TensorsafeError as exc:
        exc.message = f"converted, but the check render failed: {exc.raw_message}"
        raise
    if not quiet:
        from tensorsafe.cli.progress import check_render_note

        echo(printable(f"  check render: {png}{check_render_note(png)}"))
