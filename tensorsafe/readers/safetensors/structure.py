"""One walk over a parsed header tree: its nesting depth and the first repeated key."""
from __future__ import annotations

from typing import NamedTuple

from tensorsafe.readers.safetensors.json_values import Obj


class Shape(NamedTuple):
    depth: int
    """Nesting depth, the root container counting 1 (0 for a scalar)."""
    duplicate: str | None
    """Where the first repeated key is, in words; ``None`` when every object's keys are unique."""
    duplicate_key: str | None


def walk(doc: object) -> Shape:
    """Iterative (no recursion): ``doc`` may nest up to serde's limit."""
    max_depth = 0
    duplicate = duplicate_key = None
    stack: list[tuple[object, int, str]] = [(doc, 1, "")] if type(doc) in _CONTAINERS else []
    while stack:
        value, depth, where = stack.pop()
        kind = type(value)
        if kind is Obj:
            max_depth = max(max_depth, depth)
            seen: set[str] = set()
            for key, item in value:
                if key in seen and duplicate is None:
                    duplicate, duplicate_key = _describe(where, key, depth), key
                seen.add(key)
                if type(item) in _CONTAINERS:
                    stack.append((item, depth + 1, where or key))
        else:
            max_depth = max(max_depth, depth)
            stack.extend((item, depth + 1, where) for item in value if type(item) in _CONTAINERS)
    return Shape(max_depth, duplicate, duplicate_key)


_CONTAINERS = (Obj, list)


def nesting(value: object) -> int:
    """Nesting depth of one value (0 for a scalar)."""
    return walk(value).depth


def _describe(where: str, key: str, depth: int) -> str:
    if depth == 1:
        return f"tensor {key!r} is declared twice" if key != "__metadata__" else "`__metadata__` appears twice"
    if where == "__metadata__" and depth == 2:
        return f"__metadata__ key {key!r} appears twice"
    if depth == 2:
        return f"field {key!r} appears twice in tensor {where!r}"
    return f"key {key!r} appears twice in an object inside {where!r}"
