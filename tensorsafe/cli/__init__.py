"""The command line: argparse commands, a thin layer over the library.

``main`` (:func:`tensorsafe.cli.main.main`) loads on first use, so the console entry
(:mod:`tensorsafe.cli.entry`) has its Ctrl-C handler in place before anything else is imported."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "main":
        raise AttributeError(f"module 'tensorsafe.cli' has no attribute {name!r}")
    from tensorsafe.cli.main import main

    return main


__all__ = ["main"]
