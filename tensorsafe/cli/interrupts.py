"""Ctrl-C handling shared by the console entry and the click commands: one line, exit 130."""
from __future__ import annotations

import signal
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130
MESSAGE = "tensorsafe: interrupted\n"


def _interrupt_once(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def interrupted() -> NoReturn:
    """Say so in one line and exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write(MESSAGE)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or a broken pipe: the exit code still says it
        pass
    sys.exit(EXIT_INTERRUPTED)
