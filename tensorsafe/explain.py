"""A decompiled view of a failing pickle, by fickling, for a person to read (never executed)."""
from __future__ import annotations

import ast

MAX_EXPLAIN_BYTES = 1 << 20
MAX_EXPLAIN_LINES = 200
MAX_EXPLAIN_NODES = 1_000_000
"""Syntax nodes ``ast.unparse`` may write: a pickle of memo or DUP references to references (a
"billion laughs") decompiles to a few hundred shared nodes that unparse writes out 10**10 times."""


def decompile(data: bytes) -> str:
    """Python-like source of what the pickle would do; a short note when fickling cannot say."""
    if len(data) > MAX_EXPLAIN_BYTES:
        return f"# pickle of {len(data):,} bytes is too large to decompile (limit {MAX_EXPLAIN_BYTES:,})"
    try:
        from fickling.fickle import Pickled

        tree = Pickled.load(data).ast
        size = unparsed_size(tree)
        if size is None or size > MAX_EXPLAIN_NODES:
            what = "unbounded (a node contains itself)" if size is None else f"{size:,} syntax nodes"
            return (f"# the decompiled view would be {what}: shared references are written out at every use "
                    f"(limit {MAX_EXPLAIN_NODES:,})")
        text = ast.unparse(tree)
    except Exception as exc:  # fickling is a second opinion: any failure is reported, never raised
        return f"# fickling could not decompile this pickle: {type(exc).__name__}: {exc}"
    lines = text.splitlines()
    if len(lines) > MAX_EXPLAIN_LINES:
        lines = lines[:MAX_EXPLAIN_LINES] + [f"# ... {len(lines) - MAX_EXPLAIN_LINES} more lines"]
    return "\n".join(lines)


def unparsed_size(tree: ast.AST) -> int | None:
    """How many nodes ``ast.unparse`` visits (a shared node once per use), counted once per distinct
    node, so in time linear in the tree fickling built; None when a node contains itself."""
    sizes: dict[int, int] = {}
    active: set[int] = set()  # started, not finished: the current path
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in ast.iter_child_nodes(node))
        elif key in active:
            return None
        elif key not in sizes:
            active.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in ast.iter_child_nodes(node))
    return sizes[id(tree)]
