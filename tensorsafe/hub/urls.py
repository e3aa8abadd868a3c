"""How an ``hf://`` path is told from a local one: a string test that loads nothing.

Kept apart from :mod:`tensorsafe.hub.client` so that ``tensorsafe.api`` (and the CLI) can ask the
question for every given path without importing the Hub client on a local scan."""
from __future__ import annotations

import os

HUB_SCHEME = "hf://"


def is_hub_url(p: str | os.PathLike) -> bool:
    """``hf://...`` (also as ``hf:/...``, which is what a ``pathlib.Path`` makes of it), unless a
    local path of that name exists."""
    s = os.fspath(p)
    return s.startswith("hf:/") and not os.path.exists(s)
