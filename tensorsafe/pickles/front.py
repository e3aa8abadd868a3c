"""What a loader gets from the first bytes of any file read as a pickle: the rule every front check uses.

``pickle.load`` runs opcodes one by one until STOP or its first error: every import
(``find_class``) and call reached before an error has already happened. So a front that imports or
calls anything acts, even when it errors later; one that errors first, having done neither, gives
a loader nothing at all. Used by the safetensors polyglot check (ST-P08/ST-A04) and by the scanner
for the front of every other container (a tar whose first member name is a pickle).
"""
from __future__ import annotations

import pickletools

from tensorsafe.pickles.values import Global, Unresolved
from tensorsafe.pickles.walker import PickleTrace

_FAILS_FIRST = frozenset(b".012abedlostuR\x81\x85\x86\x87\x90\x91\x92\x93\x94\x98Qqrpghj")
"""Opcodes that pop the stack, need a MARK or read the memo (PUT stores the stack top, GET reads
the memo): as a stream's first opcode they fail before importing or calling anything."""
CANNOT_START = frozenset(range(256)) - {ord(op.code) for op in pickletools.opcodes} | _FAILS_FIRST
"""First bytes with which a pickle stream fails at once, having done nothing (most header lengths
start that way)."""
PROTO = 0x80
_NO_EFFECT_CALLS = frozenset({"additems"})
"""Call kinds that call no imported object (``ADDITEMS`` adds to a set the stream built).

Persistent ids alone are no effect either: ``pickle.load`` has no ``persistent_load`` and fails at
them, and no loader reads a file's first pickle with one (``torch.load`` of a non-zip file reads
its magic number with plain ``pickle.load``); a call or import after one still counts."""


def cannot_be_pickle(front: bytes) -> bool:
    """The file's first bytes (3 are enough) already fail as a pickle stream, before any import or
    call: no walk is needed.

    Its first opcode cannot start a stream, or it is PROTO (which changes nothing the next opcode
    depends on) followed by one that cannot."""
    if not front:
        return False
    if front[0] in CANNOT_START:
        return True
    return front[0] == PROTO and len(front) > 2 and front[2] in CANNOT_START


def front_effects(trace: PickleTrace) -> list[tuple[int, str, str]]:
    """(offset, what, trigger) of every import and call a loader reaches: those the walk met
    before the first import that cannot succeed (where the loader stops, see :func:`importable`)."""
    cut = failed_import(trace)
    out = []
    for g in trace.globals:
        if isinstance(g, Global):
            out.append((g.offset, f"imports {g.qualified} ({g.opcode})", g.qualified))
        elif isinstance(g, Unresolved):
            out.append((g.offset, f"imports an object unknown until load time ({g.opcode})", g.opcode))
    out += [(c.offset, f"calls {_callee(c.func)} ({c.kind.upper()})", c.kind.upper())
            for c in trace.calls if c.kind not in _NO_EFFECT_CALLS]
    return out if cut is None else [e for e in out if e[0] < cut]


def failed_import(trace: PickleTrace) -> int | None:
    """The offset of the first GLOBAL, INST or STACK_GLOBAL whose module cannot be imported."""
    return min((g.offset for g in trace.globals if isinstance(g, Global) and not importable(g.module)),
               default=None)


def importable(module: str) -> bool:
    """``__import__(module)`` may import something: its first dotted part has no NUL.

    ``find_class`` imports a dotted name's parents first, outermost first; a part holding a NUL
    names no file, no built-in and no ``sys.modules`` entry, so the import fails there before
    anything runs. Fronts made of a header length (zero bytes) then JSON text read that way when
    a GLOBAL opcode starts them."""
    return "\0" not in module.partition(".")[0]


def _callee(func: object) -> str:
    return func.qualified if isinstance(func, Global) else f"a {type(func).__name__} value"
