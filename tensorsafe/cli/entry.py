"""The ``tensorsafe`` console command: Ctrl-C handling first, then the CLI.

An interrupt can come at any moment, also while the CLI's modules are still being imported,
before a command runs. It ends the process with one line on stderr and exit code 130 (128 + SIGINT,
what shells report), never with a traceback, and never with exit 1, which means "a finding fails
the policy". The interrupt unwinds the stack as ``KeyboardInterrupt``, so a conversion removes its
staging folder on the way out; a second Ctrl-C during that clean-up is ignored, so it cannot leave
one behind. This module imports nothing heavy, so its handler is in place within milliseconds.

What no module can cover: the interpreter's own start-up (``site``, ``.pth`` files) and
``import tensorsafe`` itself, which run before this code; there Python's default handling applies.
"""
from __future__ import annotations

import signal

import sys

from tensorsafe.cli.interrupts import _interrupt_once, interrupted, redeliver_swallowed  # noqa: F401  (re-exported)


def main() -> None:
    """Run the CLI; any Ctrl-C, from start-up to exit, ends in :func:`interrupted`."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
            signal.signal(signal.SIGINT, _interrupt_once)
            sys.unraisablehook = redeliver_swallowed
        from tensorsafe.cli.main import main as cli

        cli()
    except KeyboardInterrupt:
        interrupted()
    finally:  # the work is done: a Ctrl-C during interpreter shutdown must not turn into a signal death
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.unraisablehook = sys.__unraisablehook__


if __name__ == "__main__":
    main()
