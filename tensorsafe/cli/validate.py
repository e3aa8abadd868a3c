"""``tensorsafe validate``: the command line over :func:`tensorsafe.api.validate`.

Loaded only for ``tensorsafe validate`` (see :mod:`tensorsafe.cli.main`); the Hub client loads only
for an ``hf://`` path, the executor only for ``--jobs`` other than 1.
"""
from __future__ import annotations

import argparse

from tensorsafe import api
from tensorsafe.cli.arguments import add_jobs_option, path
from tensorsafe.cli.hub import split_paths, validate_remote
from tensorsafe.cli.output import add_format_options, emit
from tensorsafe.cli.policy import policy_config, policy_info, with_options
from tensorsafe.errors import UsageError
from tensorsafe.limits import HeaderLimits, describe_limits
from tensorsafe.report import Report

DESCRIPTION = f"""\
Validate safetensors headers against the format and the policy limits.

Reads the 8-byte length and the JSON header of each file (never the tensor data unless --deep),
whatever the file is named, and reports the reference reader's first format error (ST-Fxx,
exit 2), policy findings (ST-Pxx, exit 1) and advisories (ST-Axx). Folders are searched for
*.safetensors files and files that start like one.

Limits (NAME = default), set with --limit NAME=VALUE or in a policy file's [limits] table:
{describe_limits()}

Examples:
  tensorsafe validate model.safetensors
  tensorsafe validate ./repo --limit max_tensors=500000 --sarif -o header.sarif
  tensorsafe validate model.safetensors --deep --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=path(), metavar="PATHS",
                        help="Files and folders to validate, and hf:// paths.")
    add_format_options(parser)
    parser.add_argument("--policy", dest="policy_file", type=path(exists=True, dir_okay=False), metavar="FILE",
                        help="TOML policy file whose [limits] table applies (instead of the "
                             "[tool.tensorsafe.limits] of the pyproject.toml in the folder the command runs in; "
                             "never a file inside a validated path).")
    parser.add_argument("--limit", dest="limit_values", action="append", default=[], metavar="NAME=VALUE",
                        help="Set one policy limit (repeatable); the names are listed above.")
    add_jobs_option(parser)
    parser.add_argument("--deep", action="store_true",
                        help="Also read the tensor data, in bounded chunks: NaN/Inf counts per float tensor and a "
                             "SHA-256.")
    parser.add_argument("-v", "--verbose", action="store_true", help="List clean files too.")


def run(args: argparse.Namespace) -> int:
    overrides = dict(limit_assignment(v) for v in args.limit_values)
    config = policy_config(args.policy_file)
    limits = config.header_limits()
    paths, urls = split_paths(args.paths)
    report = _validate_local(paths, limits, overrides, args)
    if urls:
        report.extend(validate_remote(urls, limits, deep=args.deep, overrides=overrides))
    report.policy = policy_info(with_options(config, limits=overrides).policy(), args.paths)
    emit(report, args.fmt, args.output, args.verbose)
    return report.exit_code


def _validate_local(paths: list, limits: HeaderLimits, overrides: dict[str, int], args: argparse.Namespace) -> Report:
    if args.jobs == 1:
        return api.validate(paths, limits, deep=args.deep, overrides=overrides)
    from tensorsafe.batch import collect, validate_many  # the executor: only for --jobs other than 1

    return collect(validate_many(paths, limits, deep=args.deep, overrides=overrides, jobs=args.jobs, ordered=True))


def limit_assignment(text: str) -> tuple[str, int]:
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
