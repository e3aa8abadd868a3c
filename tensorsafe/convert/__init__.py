"""Convert single-file Stable Diffusion checkpoints to the diffusers folder layout and back.

``tensorsafe.convert(src, dst, ...)`` is the library form of ``tensorsafe convert``: this package is
callable (it forwards to :func:`tensorsafe.convert.run.convert`), so the name serves both as the
function the API promises and as the package that holds the converter's parts.
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, src, dst, **kwargs):
        from tensorsafe.convert.run import convert

        return convert(src, dst, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
