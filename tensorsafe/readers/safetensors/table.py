"""The tensors of a header as columns, so that the checks run as a few passes of built-ins.

Every check over the columns is an *all-clear* predicate: it says "nothing to report" only when
the exact per-tensor check (the reference's arithmetic, in :mod:`.offsets` and the policy rules)
would report nothing; on any doubt the caller runs the exact check. The columns are plain tuples
and lists of Python integers: ``map``, ``max``, ``sorted`` and list comparisons run in C, cost
next to nothing on a small header (where numpy's per-call overhead would dominate) and are
exact at any size (no fixed-width overflow to guard against).
"""
from __future__ import annotations

from itertools import chain
from math import prod
from operator import mul
from typing import Sequence

from tensorsafe.readers.safetensors.model import Entry
from tensorsafe.tensors import DTYPE_BITS


class TensorTable:
    """The tensors in text order, as columns (``names``, ``dtypes``, ``shapes``, ``begins``,
    ``ends``) and, on demand, as rows (name, dtype, shape, begin, end)."""

    def __init__(self, names: tuple[str, ...], dtypes: tuple[str, ...], shapes: tuple[tuple[int, ...], ...],
                 begins: Sequence[int], ends: Sequence[int]):
        self.names, self.dtypes, self.shapes, self.begins, self.ends = names, dtypes, shapes, begins, ends
        self._rows: list[Entry] | None = None
        self._dims = self._numel = self._element_bytes = self._nbytes = self._dtype_set = None

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> "TensorTable":
        if not entries:
            return cls((), (), (), (), ())
        names, dtypes, shapes, begins, ends = zip(*entries)
        table = cls(names, dtypes, shapes, begins, ends)
        table._rows = entries
        return table

    def __len__(self) -> int:
        return len(self.names)

    def rows(self) -> list[Entry]:
        """The tensors as (name, dtype, shape, begin, end) tuples, in text order."""
        if self._rows is None:
            self._rows = list(zip(self.names, self.dtypes, self.shapes, self.begins, self.ends))
        return self._rows

    @property
    def dims(self) -> list[int]:
        """Every tensor's dimensions, concatenated."""
        if self._dims is None:
            self._dims = list(chain.from_iterable(self.shapes))
        return self._dims

    @property
    def numel(self) -> list[int]:
        """Elements per tensor (exact: Python integers)."""
        if self._numel is None:
            self._numel = list(map(prod, self.shapes))
        return self._numel

    @property
    def element_bytes(self) -> list[int]:
        """Bytes per element, per tensor (1 for the sub-byte dtypes: their alignment unit)."""
        if self._element_bytes is None:
            self._element_bytes = list(map(ELEMENT_BYTES.__getitem__, self.dtypes))
        return self._element_bytes

    @property
    def nbytes(self) -> list[int]:
        """Elements times bytes per element, per tensor (not a size for the sub-byte dtypes)."""
        if self._nbytes is None:
            self._nbytes = list(map(mul, self.numel, self.element_bytes))
        return self._nbytes

    @property
    def dtype_set(self) -> frozenset[str]:
        """The dtypes that occur."""
        if self._dtype_set is None:
            self._dtype_set = frozenset(self.dtypes)
        return self._dtype_set


ELEMENT_BYTES = {dtype: max(1, bits >> 3) for dtype, bits in DTYPE_BITS.items()}
"""Alignment unit of one element, per dtype."""
