"""What a safetensors header says, as the reference reads it, and the typed error for a format rule."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from tensorsafe.errors import ParseError

if TYPE_CHECKING:
    from tensorsafe.readers.safetensors.table import TensorTable

Entry = tuple[str, str, tuple[int, ...], int, int]
"""One tensor as the checks see it: (name, dtype, shape, begin, end); plain tuples keep big headers fast."""


class Issue(NamedTuple):
    """One rule that fired: the rule id, a one-line reason, the file offset and the field at fault."""

    rule_id: str
    message: str
    offset: int | None = None
    trigger: str | None = None


class HeaderFormatError(ParseError):
    """A format rule (ST-Fxx) failed: the file is not valid safetensors. ``offset`` is a file offset."""

    def __init__(self, rule_id: str, message: str, *, offset: int | None = None, trigger: str | None = None,
                 path: str | None = None):
        super().__init__(message, path=path, location=None if offset is None else f"@{offset}")
        self.rule_id = rule_id
        self.offset = offset
        self.trigger = trigger
        self.differentials: list[Issue] = []
        """Format errors the reference lets through, found before this one (reported after it)."""

    def issue(self) -> Issue:
        return Issue(self.rule_id, self.message, self.offset, self.trigger)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor entry of the header; ``begin``/``end`` are relative to the data area."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Header:
    """A header the reference reader accepts up to its layout checks (F14-F18 come after).

    ``table`` keeps what the reference keeps: one entry per name, the last one when a name
    repeats (which is itself ST-F08, recorded in ``differentials``)."""

    length: int
    """N, the declared header length in bytes."""
    file_size: int
    table: "TensorTable"
    metadata: dict[str, str] | None = None
    metadata_null: bool = False
    """``"__metadata__": null``: the reference treats it as absent (ST-P07)."""
    extra_fields: list[tuple[str, str]] = field(default_factory=list)
    """(tensor, field) pairs the reference ignores (ST-P07)."""
    max_depth: int = 0
    """JSON nesting depth, the root object counting 1 (ST-P07)."""
    leading_whitespace: int = 0
    trailing_padding: str = ""
    differentials: list[Issue] = field(default_factory=list)
    """Format errors the reference lets through (ST-F08, ST-F10 array form, ST-F11 map form)."""

    @property
    def tensors(self) -> list[Entry]:
        """(name, dtype, shape, begin, end) per tensor, in text order."""
        return self.table.rows()

    @property
    def data_start(self) -> int:
        """File offset of the data area."""
        return 8 + self.length

    def tensor_infos(self) -> list[TensorInfo]:
        """The tensors in file order (by offsets), as :class:`TensorInfo`."""
        return [TensorInfo(*t) for t in sorted(self.tensors, key=lambda t: (t[3], t[4]))]
