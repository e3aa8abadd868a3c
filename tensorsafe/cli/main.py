"""The ``tensorsafe`` command line: a table of commands, each loaded only when it is the one run.

Start-up is most of what a pre-commit hook or a CI step pays for a small file, so the top level
imports only :mod:`argparse` and this table; ``tensorsafe scan`` then imports the scan command's
module (:mod:`tensorsafe.cli.scan`), never the converter, the render pipeline, numpy or another
command's module. Each command module has a ``DESCRIPTION`` (its ``--help`` text), an
``add_arguments(parser)`` that fills its own parser, and a ``run(args)`` that returns the exit code.

Exit codes: 0 clean, 1 a finding fails the policy, 2 a file could not be read or parsed, or bad
usage (argparse's usage line and one ``error:`` line), 130 interrupted (Ctrl-C). A
:class:`~tensorsafe.errors.TensorsafeError` is one line, ``tensorsafe: error: ...``; ``--debug``
shows its traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple, NoReturn

from tensorsafe.cli.interrupts import interrupted
from tensorsafe.errors import TensorsafeError
from tensorsafe.report import EXIT_UNREADABLE, printable
from tensorsafe.version import __version__

PROG = "tensorsafe"


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "scan": Command("tensorsafe.cli.scan", "Scan files and folders for pickles that can run code."),
    "validate": Command("tensorsafe.cli.validate",
                        "Validate safetensors headers against the format and the policy limits."),
    "inspect": Command("tensorsafe.cli.inspect",
                       "Show a model file's tensors, metadata, totals and what it is."),
    "convert": Command("tensorsafe.cli.convert",
                       "Convert an SD checkpoint to a diffusers folder and back, or a pickle to safetensors."),
    "render": Command("tensorsafe.cli.render",
                      "Render a picture with a converted diffusers folder or a single-file checkpoint."),
}
"""Each command's module and the line ``tensorsafe --help`` shows for it."""

DESCRIPTION = """\
Make community model files safe to load: scan pickles, validate safetensors headers.

Exit codes: 0 clean, 1 a finding fails the policy, 2 a file could not be read or parsed
(or bad usage).
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A command's description as written (its paragraphs and Examples keep their line breaks), and an
    option with a value shown once as ``-o, --output FILE``: how Python 3.13's argparse writes it, here
    on every Python, so that ``--help`` and docs/cli.md (made from it) read the same everywhere."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


class Parser(argparse.ArgumentParser):
    """argparse's parser, its ``error:`` line escaped: it repeats words of the command line, and a
    ``find ... -exec tensorsafe scan {} +`` puts file names there."""

    def error(self, message: str) -> NoReturn:
        super().error(printable(message))


def top_parser() -> argparse.ArgumentParser:
    """``tensorsafe [--version] [--debug] COMMAND``; ``--help`` lists the commands of the table."""
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:{width}}  {command.summary}" for name, command in COMMANDS.items())
    parser = Parser(
        prog=PROG, usage=f"{PROG} [-h] [--version] [--debug] COMMAND [ARGS]...", description=DESCRIPTION,
        epilog=f"commands:\n{listing}\n\n'{PROG} COMMAND --help' shows a command's options.",
        formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"{PROG}, version {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for errors.")
    parser.add_argument("command", metavar="COMMAND", choices=list(COMMANDS), help="The command to run (below).")
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    """The parser of command ``name`` and its module, imported now (the only command module loaded)."""
    module = importlib.import_module(COMMANDS[name].module)
    parser = Parser(prog=f"{PROG} {name}", description=module.DESCRIPTION, formatter_class=HelpFormatter,
                    allow_abbrev=False)
    module.add_arguments(parser)
    parser.usage = f"%(prog)s [OPTIONS] {_operands(parser)}"  # the options are listed below it
    return parser, module


def _operands(parser: argparse.ArgumentParser) -> str:
    """``PATHS...``, ``SRC DST``: the positional arguments, as a usage line names them."""
    positionals = [a for a in parser._actions if not a.option_strings]  # argparse has no public list
    return " ".join(f"{a.metavar}..." if a.nargs in ("+", "*") else str(a.metavar) for a in positionals)


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the global options and the command name, the command's own arguments): the global options
    are flags, so the first word that is not an option is the command."""
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            return list(argv[:i + 1]), list(argv[i + 1:])
    return list(argv), []


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``tensorsafe`` with ``argv`` (default: ``sys.argv[1:]``) and exit with its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    top = top_parser()
    if not argv:  # as a bare `git`: the help, as a usage error
        top.print_help(sys.stderr)
        sys.exit(EXIT_UNREADABLE)
    head, rest = split_command(argv)
    options = top.parse_args(head)
    try:
        parser, module = command_parser(options.command)
        args = parser.parse_intermixed_args(rest)  # options may follow the paths, as in `scan a.pt --json`
        code = module.run(args)
    except TensorsafeError as exc:
        if options.debug:
            raise
        sys.stderr.write(f"{PROG}: error: {printable(exc.cli_message())}\n")  # one line, whatever the file is named
        sys.stderr.flush()
        code = EXIT_UNREADABLE
    except KeyboardInterrupt:
        interrupted()
    except BrokenPipeError:  # the reader went away (`tensorsafe scan ... | head`): exit 1, no traceback
        _stdout_to_devnull()
        code = 1
    sys.exit(code)


def _stdout_to_devnull() -> None:
    """So that flushing stdout at exit does not fail a second time, with a message."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's stream): nothing to flush into a pipe
        pass


if __name__ == "__main__":
    main()
