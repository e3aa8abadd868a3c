"""The ``tensorsafe`` command: a thin click layer over the library API."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tensorsafe.version import __version__
from tensorsafe.cli.interrupts import interrupted
from tensorsafe.errors import TensorsafeError, UsageError
from tensorsafe.formats import to_json, to_sarif, to_text
from tensorsafe.limits import DEFAULT_MAX_REMOTE_BYTES, MAX_ARCHIVE_DEPTH, MAX_SCAN_SECONDS, ScanLimits
from tensorsafe.readers.decompress import MAX_DECOMPRESSED_BYTES
from tensorsafe.report import EXIT_UNREADABLE, Report
from tensorsafe.cli.hub import PathOrHub


class _Group(click.Group):
    """Turns known errors into one line naming the file, exit code 2; ``--debug`` keeps tracebacks.

    ``convert`` and ``render`` load on first use (click's lazy subcommands): a ``scan`` or ``validate``
    run does not pay for the converter and its numpy.
    """

    LAZY = {"convert": ("tensorsafe.cli.convert", "convert_command"),
            "render": ("tensorsafe.cli.render", "render_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            import importlib

            module, attr = self.LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TensorsafeError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"tensorsafe: error: {exc.cli_message()}", err=True)
            ctx.exit(EXIT_UNREADABLE)
        except KeyboardInterrupt:
            interrupted()

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        """click's standalone mode, except that Ctrl-C ends in one line and exit 130: click's own
        "Aborted!" exits 1, which here means "a finding fails the policy"."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                interrupted()
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            interrupted()
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="tensorsafe")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Make community model files safe to load: scan pickles, validate safetensors headers.

    Exit codes: 0 clean, 1 a finding fails the policy, 2 a file could not be read or parsed
    (or bad usage).
    """


def _emit(report: Report, fmt: str, output: Path | None, verbose: bool) -> None:
    if fmt == "json":
        text = json.dumps(to_json(report), indent=2)
    elif fmt == "sarif":
        text = json.dumps(to_sarif(report), indent=2)
    else:
        text = to_text(report, verbose=verbose)
    if output is None:
        click.echo(text)
    else:
        _write_atomically(output, text + "\n")
        click.echo(to_text(report, verbose=False).splitlines()[-1], err=True)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tensorsafe-tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _format_option(f):
    f = click.option("--json", "fmt", flag_value="json", help="Print the report as JSON (stable schema).")(f)
    f = click.option("--sarif", "fmt", flag_value="sarif", help="Print the report as SARIF 2.1.0.")(f)
    f = click.option("--text", "fmt", flag_value="text", default=True, help="Print readable text (default).")(f)
    f = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the report to this file instead of standard output.")(f)
    return f


def _jobs_option(f):
    return click.option("-j", "--jobs", type=click.IntRange(0), default=1, show_default=True,
                        help="Files to process at once, in separate processes (0: one per CPU). "
                             "The report is the same, in the same order.")(f)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_format_option
@_jobs_option
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML policy file that extends the allowlist (instead of the [tool.tensorsafe] table of the "
                   "pyproject.toml in the folder the command runs in; a file inside a scanned path is never read).")
@click.option("--allow-unscanned", is_flag=True, help="Let files that no reader identifies pass (never a file "
              "with a model extension); the policy file's allow_unscanned = true.")
@click.option("--allow-empty", is_flag=True, help="A path that yields no files is not an error.")
@click.option("--explain", is_flag=True, help="Print fickling's decompiled view of every failing pickle.")
@click.option("-v", "--verbose", is_flag=True, help="List clean files and every import with its tier.")
@click.option("--max-depth", type=click.IntRange(0), default=MAX_ARCHIVE_DEPTH, show_default=True,
              help="Deepest archive nesting to follow.")
@click.option("--max-decompressed", type=click.IntRange(1), default=MAX_DECOMPRESSED_BYTES, show_default=True,
              help="Most bytes one compressed stream may decompress to.")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=MAX_SCAN_SECONDS, show_default=True,
              help="Seconds allowed per file.")
@click.option("--deep", is_flag=True, help="hf:// paths: download each file (huggingface_hub's cache) and scan it "
              "whole, instead of reading only the bytes the scan needs by range requests.")
@click.option("--hub-verdicts", is_flag=True, help="hf:// paths: show the Hub's own security scan of each file "
              "beside ours; a disagreement is a HUB-01 warning.")
@click.option("--max-remote-bytes", type=click.IntRange(1), default=DEFAULT_MAX_REMOTE_BYTES, show_default=True,
              help="hf:// paths: most bytes fetched to judge one file (past it: an IO-03 error; use --deep).")
def scan(paths: tuple[Path, ...], fmt: str, output: Path | None, policy_file: Path | None, allow_unscanned: bool,
         allow_empty: bool, explain: bool, verbose: bool, max_depth: int, max_decompressed: int, timeout: float,
         jobs: int, deep: bool, hub_verdicts: bool, max_remote_bytes: int) -> None:
    """Scan files and folders for pickles that can run code.

    Every file is judged by its bytes, not its name: PyTorch zip and legacy checkpoints, raw and
    compressed pickles, numpy and joblib files, tar and zip archives, nested to any depth.

    The policy is --policy FILE, else the [tool.tensorsafe] table of the pyproject.toml in the
    folder the command runs in (or above it, up to the folder holding .git), else the built-in
    one; never a file found inside or near the scanned paths. The report names it.

    \b
    Examples:
      tensorsafe scan model.ckpt
      tensorsafe scan ./my-model-repo --sarif -o tensorsafe.sarif
      tensorsafe scan suspicious.bin --explain
      tensorsafe scan hf://stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned.ckpt --hub-verdicts
    """
    from tensorsafe.hub.client import split_paths
    from tensorsafe.api import scan as scan_paths

    given = paths
    policy = _with_options(_policy_config(policy_file), allow_unscanned=allow_unscanned).policy()
    limits = ScanLimits(max_depth=max_depth, max_decompressed_bytes=max_decompressed, timeout_seconds=timeout)
    paths, urls = split_paths(paths)
    if jobs == 1:
        report = scan_paths(paths, policy, limits, explain=explain, allow_empty=allow_empty)
    else:
        from tensorsafe.batch import collect, scan_many

        report = collect(scan_many(paths, policy, limits, explain=explain, jobs=jobs, ordered=True,
                                   allow_empty=allow_empty))
    if urls:
        from tensorsafe.cli.hub import scan_remote

        report.extend(scan_remote(urls, policy, limits, explain=explain, deep=deep, verdicts=hub_verdicts,
                                  max_bytes=max_remote_bytes))
    report.policy = _policy_info(policy, given, allow_empty=allow_empty)
    _emit(report, fmt, output, verbose)
    if explain:
        for fr in report.files:
            for where, source in fr.explanations:
                click.echo(f"\n--- {fr.path} [{where or 'pickle'}] decompiled by fickling (not executed) ---", err=True)
                click.echo(source, err=True)
    sys.exit(report.exit_code)


def _policy_config(policy_file: Path | None):
    """``--policy FILE``, else the configuration of the folder the command runs in (never a scanned path's)."""
    from tensorsafe.policy_file import cwd_config, load_policy_file

    return load_policy_file(policy_file) if policy_file is not None else cwd_config()


def _with_options(config, *, allow_unscanned: bool = False, limits: dict | None = None):
    """The policy's settings with the command-line options on top."""
    from dataclasses import replace

    from tensorsafe.policy_file import BUILT_IN

    if allow_unscanned or limits:
        source = config.source if config.source != BUILT_IN else f"{BUILT_IN}, with command-line options"
        config = replace(config, allow_unscanned=config.allow_unscanned or allow_unscanned,
                         limits={**config.limits, **(limits or {})}, source=source)
    return config


def _policy_info(policy, paths, *, allow_empty: bool = False):
    """What the report says of the policy; notes a policy file that lies inside a scanned path."""
    from dataclasses import replace

    from tensorsafe.policy_file import config_path, describe

    info = describe(policy, allow_empty=allow_empty)
    where = config_path(policy.source)
    if where is not None:
        inside = any(_inside(Path(where), Path(p)) for p in paths if "://" not in str(p))
        info = replace(info, inside_scanned_path=inside)
    return info


def _inside(file: Path, scanned: Path) -> bool:
    file, scanned = file.resolve(), scanned.resolve()
    return file == scanned or scanned in file.parents


# -- safetensors headers ----------------------------------------------------------------------------
def _limits_help() -> str:
    from tensorsafe.limits import describe_limits

    return describe_limits()


VALIDATE_HELP = f"""Validate safetensors headers against the format and the policy limits.

Reads the 8-byte length and the JSON header of each file (never the tensor data unless --deep),
whatever the file is named, and reports the reference reader's first format error (ST-Fxx,
exit 2), policy findings (ST-Pxx, exit 1) and advisories (ST-Axx). Folders are searched for
*.safetensors files and files that start like one.

\b
Limits (NAME = default), set with --limit NAME=VALUE or in a policy file's [limits] table:
{_limits_help()}

\b
Examples:
  tensorsafe validate model.safetensors
  tensorsafe validate ./repo --limit max_tensors=500000 --sarif -o header.sarif
  tensorsafe validate model.safetensors --deep --json
"""


@main.command(help=VALIDATE_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_format_option
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML policy file whose [limits] table applies (instead of the [tool.tensorsafe.limits] of "
                   "the pyproject.toml in the folder the command runs in; never a file inside a validated path).")
@click.option("--limit", "limit_values", multiple=True, metavar="NAME=VALUE",
              help="Set one policy limit (repeatable); the names are listed above.")
@_jobs_option
@click.option("--deep", is_flag=True,
              help="Also read the tensor data, in bounded chunks: NaN/Inf counts per float tensor and a SHA-256.")
@click.option("-v", "--verbose", is_flag=True, help="List clean files too.")
def validate(paths: tuple[Path, ...], fmt: str, output: Path | None, policy_file: Path | None,
             limit_values: tuple[str, ...], deep: bool, verbose: bool, jobs: int) -> None:
    from tensorsafe.api import validate as validate_paths
    from tensorsafe.hub.client import split_paths

    overrides = dict(_limit_assignment(v) for v in limit_values)
    given = paths
    config = _policy_config(policy_file)
    limits = config.header_limits()
    paths, urls = split_paths(paths)
    if jobs == 1:
        report = validate_paths(paths, limits, deep=deep, overrides=overrides)
    else:
        from tensorsafe.batch import collect, validate_many

        report = collect(validate_many(paths, limits, deep=deep, overrides=overrides, jobs=jobs, ordered=True))
    if urls:
        from tensorsafe.cli.hub import validate_remote

        report.extend(validate_remote(urls, limits, deep=deep, overrides=overrides))
    report.policy = _policy_info(_with_options(config, limits=overrides).policy(), given)
    _emit(report, fmt, output, verbose)
    sys.exit(report.exit_code)


@main.command()
@click.argument("path", type=PathOrHub(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON: tensors, metadata, totals and identification.")
def inspect(path: Path, as_json: bool) -> None:
    """Show a model file's tensors (name, dtype, shape, bytes), metadata, totals and what it is.

    A safetensors file is read from its header (and the few bytes of its LoRA alphas); a file that
    breaks a format rule is refused (exit 2; run `tensorsafe validate` for the policy findings). A
    torch checkpoint is scanned first and read without running its pickle; tensors nested anywhere
    in it are listed. The file is identified: a checkpoint and its family (SD1/SD2/SDXL, or SD3,
    Flux.1 dev/schnell, SVD, ... by the key that shows it), a LoRA / LyCORIS / DoRA adapter (base
    family, ranks and alphas per block, targeted parts, trigger words and training facts from its
    metadata), a textual inversion (vectors), a VAE or a ControlNet, each with its evidence.

    \b
    Examples:
      tensorsafe inspect model.safetensors
      tensorsafe inspect v1-5-pruned.ckpt --json
      tensorsafe inspect hf://OWNER/REPO/unet/diffusion_pytorch_model.safetensors

    An hf:// safetensors file is read by range requests (its 8 + N header bytes); other hf:// files
    are downloaded into huggingface_hub's cache first.
    """
    from tensorsafe.cli.hub import inspect_remote_safetensors, local_source
    from tensorsafe.converter.describe import inspect_local, with_identification
    from tensorsafe.safetensors.inspect import to_dict, to_table

    if isinstance(path, str) and path.endswith(".safetensors"):
        ins, bytes_read = inspect_remote_safetensors(path)
        data, lines = to_dict(ins), to_table(ins).splitlines() + [f"read {bytes_read:,} bytes from the Hub"]
        data["bytes_read"] = bytes_read
        data, lines = with_identification(data, lines, {t.name: (t.dtype, t.shape) for t in ins.tensors},
                                          ins.metadata)  # header only: alphas are not read
    else:
        data, lines = inspect_local(local_source(path))
    click.echo(json.dumps(data, indent=2, default=str) if as_json else "\n".join(lines))



def _limit_assignment(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` from the command line (``_`` allowed in VALUE: ``max_tensors=1_000``)."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise UsageError(f"--limit expects NAME=VALUE, got {text!r}")
    try:
        number = int(value.strip(), 0)
    except ValueError:
        raise UsageError(f"--limit {name}: {value.strip()!r} is not an integer") from None
    return name, number


if __name__ == "__main__":
    main()
