"""A decompiled view of a failing pickle, by fickling, for a person to read (never executed)."""
from __future__ import annotations

import ast

MAX_EXPLAIN_BYTES = 1 << 20
MAX_EXPLAIN_LINES = 200


def decompile(data: bytes) -> str:
    """Python-like source of what the pickle would do; a short note when fickling cannot say."""
    if len(data) > MAX_EXPLAIN_BYTES:
        return f"# pickle of {len(data):,} bytes is too large to decompile (limit {MAX_EXPLAIN_BYTES:,})"
    try:
        from fickling.fickle import Pickled

        text = ast.unparse(Pickled.load(data).ast)
    except Exception as exc:  # fickling is a second opinion: any failure is reported, never raised
        return f"# fickling could not decompile this pickle: {type(exc).__name__}: {exc}"
    lines = text.splitlines()
    if len(lines) > MAX_EXPLAIN_LINES:
        lines = lines[:MAX_EXPLAIN_LINES] + [f"# ... {len(lines) - MAX_EXPLAIN_LINES} more lines"]
    return "\n".join(lines)
