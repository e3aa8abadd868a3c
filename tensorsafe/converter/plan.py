"""A conversion plan: every output tensor, the source tensors it comes from, and the byte operation.

Key maps produce plans; the streaming writer executes them. Keeping the plan as plain data means
the same plan can be printed (``--dry-run``), verified after writing, and inverted for tests.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Op(str, enum.Enum):
    COPY = "copy"            # same bytes, same shape
    RESHAPE = "reshape"      # same bytes, new shape (e.g. VAE attention [C, C, 1, 1] <-> [C, C])
    ROWS = "rows"            # rows [start, stop) of the first dimension: a contiguous byte range
    CONCAT_ROWS = "concat_rows"  # sources stacked along the first dimension (q, k, v -> in_proj)
    TRANSPOSE = "transpose"  # 2-D transpose: the only op that shuffles elements (text_projection)


@dataclass(frozen=True)
class Target:
    """One output tensor: ``component`` ("" for a single file) and ``key`` name where it goes."""

    component: str
    key: str
    sources: tuple[str, ...]
    op: Op
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None


@dataclass
class Plan:
    targets: list[Target] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    """Source keys deliberately not carried over, with the documented reason."""
    unmapped: list[str] = field(default_factory=list)
    """Source keys the map does not know: the conversion fails unless --allow-unmapped."""
    notes: list[str] = field(default_factory=list)
    """What was assumed or chosen (EMA, prediction type, ...), for the summary."""

    def components(self) -> list[str]:
        return sorted({t.component for t in self.targets})
