"""TorchServe model archives (``.mar``): the Python code TorchServe imports when it serves the model.

``torch-model-archiver`` writes a zip with ``MAR-INF/MANIFEST.json`` at its root, the serialized
model, and the handler, model and extra files it was given. TorchServe unpacks the archive, puts
it on ``sys.path`` and imports the handler module (and the model file for eager models); with
``install_py_dep_per_model`` it also pip-installs the archive's ``requirements.txt`` (not reported:
off by default). So a member that Python can import runs when the model is served: it cannot be
proven safe by reading the archive, and is a finding (ZIP-10). The serialized model and every other
member are still scanned as what their bytes are.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

MANIFEST = "MAR-INF/MANIFEST.json"
"""At the archive's root (zip), or under the model's folder (``--archive-format tgz``)."""
IMPORTABLE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".so", ".pyd")
"""What Python imports from a folder on ``sys.path``: source, bytecode without source, native modules."""


def archive_code(names: Iterable[str]) -> list[str]:
    """The members serving a TorchServe archive would import; none when the names hold no manifest."""
    names = list(names)
    if not any(n == MANIFEST or n.endswith("/" + MANIFEST) for n in names):
        return []
    return [n for n in names if n.rsplit("/", 1)[-1].lower().endswith(IMPORTABLE_SUFFIXES)]


def report_model_archive_code(fs: "FileScan", names: Iterable[str], location: Location) -> None:
    """ZIP-10 for each member of a TorchServe archive (zip or tar) that serving it would import."""
    for name in archive_code(names):
        fs.add("ZIP-10", f"TorchServe model archive holds Python code {name!r}, which serving the model imports",
               location.inside(name), name.rsplit("/", 1)[-1])
