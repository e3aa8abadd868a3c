"""Archives built in memory for tests: a zip or a tar holding the given members, nothing else."""
from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Mapping


def zip_bytes(members: Mapping[str, bytes | str], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip with ``members`` (name -> bytes or text) in order, written by ``zipfile``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def tar_bytes(members: Mapping[str, bytes], mode: str = "w", format: int = tarfile.DEFAULT_FORMAT) -> bytes:
    """A tar with ``members`` (name -> bytes) as regular files; ``mode`` may compress it (``"w:gz"``)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=format) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()
