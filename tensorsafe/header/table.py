"""The tensors of a header as columns, so that big headers are checked with numpy, not a loop.

Every vectorised check here is an *all-clear* predicate: it says "nothing to report" only when the
exact per-tensor check (the reference's arithmetic, in :mod:`.offsets` and :mod:`.policy_rules`)
would report nothing; on any doubt the caller runs the exact check.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from tensorsafe.header.dtypes import DTYPE_BITS
from tensorsafe.header.model import Entry

VECTOR_MIN = 128
"""Below this many tensors a plain loop beats numpy's per-call overhead; checks skip the predicates."""
EXACT_BOUND = float(1 << 56)
"""Products of non-zero dimensions below this are exact in uint64 even times 64 bits per element."""


class TensorTable:
    """Tensors as rows (name, dtype, shape, begin, end) and as columns (names, dtypes, shapes as
    ``"2,3"`` text, begin/end offsets as uint64), each built from the other on first use."""

    def __init__(self, names: tuple[str, ...], dtypes: tuple[str, ...], begins: np.ndarray, ends: np.ndarray,
                 shapes: "ShapeColumns", shape_source: Callable[[], tuple[str, ...]]):
        """Columns of a big header; ``shape_source`` gives the shape texts, only when rows are needed."""
        self.names = names
        self.dtypes = dtypes
        self.begins = begins
        self.ends = ends
        self.__dict__["shapes"] = shapes
        self.__dict__["shape_source_"] = shape_source

    @classmethod
    def from_entries(cls, entries: list[Entry]) -> "TensorTable":
        table = cls.__new__(cls)
        table.__dict__["rows_"] = list(entries)
        return table

    def __getattr__(self, column: str):
        """Columns of a table built from rows, computed once (``__getattr__`` only runs for missing ones)."""
        if column == "shape_text" and "shape_source_" in self.__dict__:
            self.shape_text = self.__dict__.pop("shape_source_")()
            return self.shape_text
        rows = self.__dict__.get("rows_")
        if rows is None or column not in _COLUMNS:
            raise AttributeError(column)
        if column in ("begins", "ends"):
            self.begins = np.array([r[3] for r in rows], dtype=np.uint64)
            self.ends = np.array([r[4] for r in rows], dtype=np.uint64)
        elif column == "shape_text":
            self.shape_text = tuple(",".join(map(str, r[2])) for r in rows)
        else:
            self.names = tuple(r[0] for r in rows)
            self.dtypes = tuple(r[1] for r in rows)
        return getattr(self, column)

    def __len__(self) -> int:
        rows = self.__dict__.get("rows_")
        return len(rows) if rows is not None else len(self.names)

    @property
    def large(self) -> bool:
        """Worth checking with numpy first (see :data:`VECTOR_MIN`)."""
        return len(self) >= VECTOR_MIN

    def rows(self) -> list[Entry]:
        """The tensors as (name, dtype, shape, begin, end) tuples, in text order."""
        rows = self.__dict__.get("rows_")
        if rows is None:
            rows = self.__dict__["rows_"] = [
                (n, d, tuple(map(int, s.split(","))) if s else (), int(b), int(e))
                for n, d, s, b, e in zip(self.names, self.dtypes, self.shape_text, self.begins.tolist(),
                                         self.ends.tolist())]
        return rows

    @functools.cached_property
    def bits(self) -> np.ndarray:
        return np.fromiter(map(DTYPE_BITS.__getitem__, self.dtypes), np.uint64, len(self))

    @functools.cached_property
    def shapes(self) -> "ShapeColumns":
        """(Tables built from rows; big tables get theirs from the reader.)"""
        rows = self.rows()
        return ShapeColumns(np.fromiter((d for r in rows for d in r[2]), np.uint64),
                            np.fromiter(map(len, (r[2] for r in rows)), np.int64, len(rows)))


_COLUMNS = frozenset({"names", "dtypes", "shape_text", "begins", "ends"})


class ShapeColumns:
    """Per-tensor rank, largest dimension, element count and product of non-zero dimensions."""

    def __init__(self, dims: np.ndarray, ranks: np.ndarray):
        """``dims``: every tensor's dimensions, concatenated (uint64); ``ranks``: how many each has."""
        n = len(ranks)
        self.dims, self.ranks = dims, ranks
        self.max_rank = int(ranks.max()) if n else 0
        self.max_dim = int(dims.max()) if dims.size else 0
        has_dims = ranks > 0
        starts = (np.cumsum(ranks) - ranks)[has_dims]
        self.numel = np.ones(n, np.uint64)
        self.nonzero_product = np.ones(n, np.uint64)
        self.exact = True
        """Every product is below :data:`EXACT_BOUND`: ``numel`` and ``nonzero_product`` are exact and
        no size arithmetic can overflow."""
        if not starts.size:
            return
        nonzero = np.where(dims == 0, np.uint64(1), dims)
        with np.errstate(over="ignore"):  # an overflow to inf is what the bound below is for
            approx = np.multiply.reduceat(nonzero.astype(np.float64), starts)
        if approx.max() >= EXACT_BOUND:
            self.exact = False
            return
        self.numel[has_dims] = np.multiply.reduceat(dims, starts)
        self.nonzero_product[has_dims] = np.multiply.reduceat(nonzero, starts)
