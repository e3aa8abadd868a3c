"""The public surface: what ``import tensorsafe`` offers, and that the suite tests what pip installed."""
from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import sys
from importlib.resources import files
from pathlib import Path

import tensorsafe
import tensorsafe.errors

ROOT = Path(__file__).resolve().parent.parent


def _public_exceptions() -> list[type[BaseException]]:
    return [value for name, value in vars(tensorsafe.errors).items()
            if not name.startswith("_") and inspect.isclass(value) and issubclass(value, BaseException)
            and value.__module__ == tensorsafe.errors.__name__]


def test_every_public_exception_is_exported_at_the_top():
    """``from tensorsafe import SomeError`` works for the whole hierarchy, so a new class in
    tensorsafe/errors.py cannot be forgotten in tensorsafe/__init__.py."""
    classes = _public_exceptions()
    assert tensorsafe.errors.TensorsafeError in classes and len(classes) > 5
    for cls in classes:
        assert getattr(tensorsafe, cls.__name__, None) is cls, f"tensorsafe.{cls.__name__} is not exported"
        assert cls.__name__ in tensorsafe.__all__, f"{cls.__name__} is missing from tensorsafe.__all__"
        assert issubclass(cls, tensorsafe.TensorsafeError), f"{cls.__name__} is outside the one hierarchy"


def test_every_name_in_all_resolves():
    missing = [name for name in tensorsafe.__all__ if not hasattr(tensorsafe, name)]
    assert not missing and len(set(tensorsafe.__all__)) == len(tensorsafe.__all__)


def test_type_information_is_shipped():
    """PEP 561: the py.typed marker is in the installed package (package data, not just the checkout)."""
    assert files("tensorsafe").joinpath("py.typed").is_file()


def test_the_suite_tests_the_installed_package():
    """A plain ``pip install .`` must be what the tests import, not the checkout beside them
    (tests/conftest.py); an editable install is the checkout."""
    installed = [entry for entry in sys.path if Path(entry or os.curdir).resolve() != ROOT]  # not the build's egg-info
    dist = next(iter(importlib.metadata.distributions(name="tensorsafe", path=installed)), None)
    assert dist is not None, "tensorsafe is not installed: run `pip install '.[test]'` first"
    editable = json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable", False)
    imported = Path(tensorsafe.__file__).resolve()
    assert imported.is_relative_to(ROOT) == editable, \
        f"tensorsafe imported from {imported}, but the {'editable' if editable else 'plain'} install is elsewhere"
