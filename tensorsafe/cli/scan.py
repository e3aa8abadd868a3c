"""``tensorsafe scan``: the command line over :func:`tensorsafe.api.scan`.

Loaded only for ``tensorsafe scan`` (see :mod:`tensorsafe.cli.main`); the Hub client loads only for
an ``hf://`` path, the executor only for ``--jobs`` other than 1, fickling only for ``--explain``.
"""
from __future__ import annotations

import argparse

from tensorsafe import api
from tensorsafe.cli.arguments import add_jobs_option, float_range, int_range, path
from tensorsafe.cli.hub import scan_remote, split_paths
from tensorsafe.cli.output import add_format_options, echo, emit
from tensorsafe.cli.policy import policy_config, policy_info, with_options
from tensorsafe.limits import (
    DEFAULT_MAX_REMOTE_BYTES,
    MAX_ARCHIVE_DEPTH,
    MAX_DECOMPRESSED_BYTES,
    MAX_SCAN_SECONDS,
    ScanLimits,
)
from tensorsafe.pickles.policy import Policy
from tensorsafe.report import Report, printable_lines

DESCRIPTION = """\
Scan files and folders for pickles that can run code.

Every file is judged by its bytes, not its name: PyTorch zip and legacy checkpoints, raw and
compressed pickles, numpy and joblib files, tar and zip archives, nested to any depth.

The policy is --policy FILE, else the [tool.tensorsafe] table of the pyproject.toml in the
folder the command runs in (or above it, up to the folder holding .git), else the built-in
one; never a file found inside or near the scanned paths. The report names it.

Examples:
  tensorsafe scan model.ckpt
  tensorsafe scan ./my-model-repo --sarif -o tensorsafe.sarif
  tensorsafe scan suspicious.bin --explain
  tensorsafe scan hf://stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned.ckpt --hub-verdicts
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=path(), metavar="PATHS",
                        help="Files and folders to scan, and hf:// paths (a repository, a folder or a file).")
    add_format_options(parser)
    add_jobs_option(parser)
    parser.add_argument("--policy", dest="policy_file", type=path(exists=True, dir_okay=False), metavar="FILE",
                        help="TOML policy file that extends the allowlist (instead of the [tool.tensorsafe] table "
                             "of the pyproject.toml in the folder the command runs in; a file inside a scanned "
                             "path is never read).")
    parser.add_argument("--allow-unscanned", action="store_true",
                        help="Let files that no reader identifies pass (never a file with a model extension); "
                             "the policy file's allow_unscanned = true.")
    parser.add_argument("--allow-empty", action="store_true", help="A path that yields no files is not an error.")
    parser.add_argument("--explain", action="store_true",
                        help="Print fickling's decompiled view of every failing pickle.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="List clean files and every import with its tier.")
    parser.add_argument("--max-depth", type=int_range(0), default=MAX_ARCHIVE_DEPTH, metavar="N",
                        help="Deepest archive nesting to follow. [default: %(default)s; x>=0]")
    parser.add_argument("--max-decompressed", type=int_range(1), default=MAX_DECOMPRESSED_BYTES, metavar="BYTES",
                        help="Most bytes one compressed stream may decompress to. [default: %(default)s; x>=1]")
    parser.add_argument("--timeout", type=float_range(0.001), default=MAX_SCAN_SECONDS, metavar="SECONDS",
                        help="Seconds allowed per file. [default: %(default)s; x>=0.001]")
    parser.add_argument("--deep", action="store_true",
                        help="hf:// paths: download each file (huggingface_hub's cache) and scan it whole, instead "
                             "of reading only the bytes the scan needs by range requests.")
    parser.add_argument("--hub-verdicts", action="store_true",
                        help="hf:// paths: show the Hub's own security scan of each file beside ours; a "
                             "disagreement is a HUB-01 warning.")
    parser.add_argument("--max-remote-bytes", type=int_range(1), default=DEFAULT_MAX_REMOTE_BYTES, metavar="BYTES",
                        help="hf:// paths: most bytes fetched to judge one file (past it: an IO-03 error; use "
                             "--deep). [default: %(default)s; x>=1]")


def run(args: argparse.Namespace) -> int:
    policy = with_options(policy_config(args.policy_file), allow_unscanned=args.allow_unscanned).policy()
    limits = ScanLimits(max_depth=args.max_depth, max_decompressed_bytes=args.max_decompressed,
                        timeout_seconds=args.timeout)
    paths, urls = split_paths(args.paths)
    report = _scan_local(paths, policy, limits, args)
    if urls:
        report.extend(scan_remote(urls, policy, limits, explain=args.explain, deep=args.deep,
                                  verdicts=args.hub_verdicts, max_bytes=args.max_remote_bytes))
    report.policy = policy_info(policy, args.paths, allow_empty=args.allow_empty)
    emit(report, args.fmt, args.output, args.verbose)
    if args.explain:
        for fr in report.files:
            for where, source in fr.explanations:
                echo(printable_lines(["", f"--- {fr.path} [{where or 'pickle'}] decompiled by fickling (not executed) ---"]),
                     err=True)
                echo(source, err=True)
    return report.exit_code


def _scan_local(paths: list, policy: Policy, limits: ScanLimits, args: argparse.Namespace) -> Report:
    if args.jobs == 1:
        return api.scan(paths, policy, limits, explain=args.explain, allow_empty=args.allow_empty)
    from tensorsafe.batch import collect, scan_many  # the executor: only for --jobs other than 1

    return collect(scan_many(paths, policy, limits, explain=args.explain, jobs=args.jobs, ordered=True,
                             allow_empty=args.allow_empty))

