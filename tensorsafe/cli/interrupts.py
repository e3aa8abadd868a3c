"""Ctrl-C handling shared by the console entry and the commands: one line, exit 130."""
from __future__ import annotations

import _thread
import signal
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130
MESSAGE = "tensorsafe: interrupted\n"


def _interrupt_once(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def redeliver_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook``: a Ctrl-C that lands where Python cannot raise it (a weakref callback,
    such as the import system's module-lock clean-up, a ``__del__``, the garbage collector) would be
    printed as "Exception ignored" with a traceback, and then lost: the work would go on. Deliver it
    again instead, from another thread (raised here, it would be swallowed again): the main thread
    raises it in the code it runs next. Anything else is printed as usual."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        try:
            signal.signal(signal.SIGINT, _interrupt_once)  # ValueError outside the main thread
        except ValueError:
            pass
        else:
            _thread.start_new_thread(_thread.interrupt_main, ())
            return
    sys.__unraisablehook__(unraisable)


def interrupted() -> NoReturn:
    """Say so in one line and exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write(MESSAGE)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or a broken pipe: the exit code still says it
        pass
    sys.exit(EXIT_INTERRUPTED)
