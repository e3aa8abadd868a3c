"""Archive member names that extraction would write outside the target folder."""
from __future__ import annotations

import posixpath


def escapes_folder(name: str) -> bool:
    """An absolute name (``/x``, ``\\x``, ``C:x``) or one that climbs out with ``..``, with either
    slash: what ``tar -x``, ``unzip`` and naive ``extractall`` loops write outside their folder."""
    name = name.replace("\\", "/")
    return name.startswith("/") or ".." in name.split("/") or posixpath.isabs(name) or (len(name) > 1 and name[1] == ":")
