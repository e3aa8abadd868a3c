"""A lease break's ``SourceChangedError`` that lands where Python cannot raise (a ``__del__``, a weakref
callback) is not printed as "Exception ignored": the source is marked broken and the commit check
reports it. Anything else that cannot be raised there is still printed."""
import gc
import sys

import pytest

from tensorsafe.converter.source_io import SourceChangedError, leases_held

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="leases are Linux-only")


class _RaisesOnDelete:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def __del__(self):
        raise self.exc


def _drop(exc: BaseException) -> None:
    obj = _RaisesOnDelete(exc)
    del obj
    gc.collect()


def test_a_swallowed_source_change_is_not_printed_while_leases_are_held(monkeypatch):
    reached = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reached.append(unraisable.exc_value))
    with leases_held():
        _drop(SourceChangedError("model.ckpt", "another process started to truncate or write it"))
        _drop(ValueError("something else"))
    assert [type(e) for e in reached] == [ValueError]


def test_the_hook_is_put_back_after_the_leases():
    before = sys.unraisablehook
    with leases_held():
        assert sys.unraisablehook is not before
    assert sys.unraisablehook is before
