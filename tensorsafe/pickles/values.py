"""Inert stand-ins for what a pickle would build: nothing here is ever imported or called."""
from __future__ import annotations


class Global:
    """An import (``GLOBAL``, ``STACK_GLOBAL``, ``INST``): module and attribute path, never resolved."""

    __slots__ = ("module", "name", "offset", "opcode")

    def __init__(self, module: str, name: str, offset: int, opcode: str):
        self.module = module
        self.name = name
        self.offset = offset
        self.opcode = opcode

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Global) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self) -> int:
        return hash((self.module, self.name))

    def __repr__(self) -> str:
        return f"Global({self.module!r}, {self.name!r})"


class Unresolved:
    """An import whose target cannot be known statically (``EXT*`` codes, non-string operands)."""

    __slots__ = ("reason", "offset", "opcode")

    def __init__(self, reason: str, offset: int, opcode: str):
        self.reason = reason
        self.offset = offset
        self.opcode = opcode

    def __repr__(self) -> str:
        return f"Unresolved({self.reason!r})"


class Call:
    """The result of calling ``func`` (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ``, ``INST``).

    ``state`` is what ``BUILD`` would pass to ``__setstate__``; ``items`` and ``appended`` collect
    ``SETITEM(S)`` and ``APPEND(S)`` applied to the object (an ``OrderedDict`` is built that way).
    """

    __slots__ = ("func", "args", "kwargs", "kind", "offset", "state", "items", "appended")

    def __init__(self, func: object, args: object, kind: str, offset: int, kwargs: object = None):
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.kind = kind
        self.offset = offset
        self.state: object = None
        self.items: list[tuple[object, object]] | None = None
        self.appended: list[object] | None = None

    def __repr__(self) -> str:
        return f"Call({self.func!r}, kind={self.kind})"


class PersistentRef:
    """A persistent id (``PERSID``/``BINPERSID``): torch uses it to point at storage data."""

    __slots__ = ("pid", "offset")

    def __init__(self, pid: object, offset: int):
        self.pid = pid
        self.offset = offset

    def __repr__(self) -> str:
        return f"PersistentRef({self.pid!r})"


class BytesRef:
    """A large bytes argument left in the source buffer instead of copied (``start``, ``length``)."""

    __slots__ = ("start", "length", "kind")

    def __init__(self, start: int, length: int, kind: str):
        self.start = start
        self.length = length
        self.kind = kind

    def __repr__(self) -> str:
        return f"BytesRef({self.start}, {self.length})"


class OutOfBand:
    """A protocol-5 out-of-band buffer (``NEXT_BUFFER``): its bytes are not in the stream."""

    __slots__ = ("offset",)

    def __init__(self, offset: int):
        self.offset = offset
