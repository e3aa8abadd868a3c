"""What the commands print: a line on stdout or stderr, and a report as text, JSON or SARIF.

A report goes to standard output, or with ``-o FILE`` into FILE (written whole, then renamed into
place), with its summary line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tensorsafe.cli.arguments import path
from tensorsafe.errors import OutputError
from tensorsafe.formats import to_json, to_sarif, to_text
from tensorsafe.report import Report, printable_lines


def echo(text: str, *, err: bool = False) -> None:
    """``text`` and a newline on stdout (stderr with ``err``), flushed so the two keep their order.

    The terminal boundary: no control or format character but ``text``'s own line breaks gets out
    (names in it come from hostile files). A caller that joins lines holding names escapes each line
    whole first (:func:`~tensorsafe.report.printable_lines`), so a newline in a name forges no line."""
    stream = sys.stderr if err else sys.stdout
    if not text.replace("\n", " ").isprintable():  # one C pass first: a large JSON report is all printable
        text = printable_lines(text.split("\n"))
    stream.write(text + "\n")
    stream.flush()


def add_format_options(parser: argparse.ArgumentParser) -> None:
    """``-o/--output`` and ``--text/--sarif/--json`` (the last one given wins); read back as
    ``args.output`` and ``args.fmt``."""
    parser.add_argument("-o", "--output", type=path(dir_okay=False), metavar="FILE",
                        help="Write the report to this file instead of standard output.")
    parser.add_argument("--text", dest="fmt", action="store_const", const="text", default="text",
                        help="Print readable text (default).")
    parser.add_argument("--sarif", dest="fmt", action="store_const", const="sarif",
                        help="Print the report as SARIF 2.1.0.")
    parser.add_argument("--json", dest="fmt", action="store_const", const="json",
                        help="Print the report as JSON (stable schema).")


def emit(report: Report, fmt: str, output: Path | None, verbose: bool) -> None:
    if fmt == "json":
        text = json.dumps(to_json(report), indent=2)
    elif fmt == "sarif":
        text = json.dumps(to_sarif(report), indent=2)
    else:
        text = to_text(report, verbose=verbose)
    if output is None:
        echo(text)
    else:
        write_atomically(output, text + "\n")
        echo(to_text(report, verbose=False).splitlines()[-1], err=True)


def write_atomically(file: Path, text: str) -> None:
    """Through the converter's staged output (a temporary file beside ``file``, renamed into place
    when complete, removed on failure): a missing folder or a failed write is a one-line error."""
    from tensorsafe.converter.output import staged  # its imports are paid only with -o

    try:
        with staged(file, overwrite=True, folder=False) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the report: {exc.strerror or exc}", path=file) from None
