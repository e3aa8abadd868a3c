"""Rename rules shared by every part's key map: one table, read in both directions.

A :class:`Rule` pairs an original-layout name with a diffusers-layout name. A name ending in "."
is a prefix (everything after it is carried over, through the rule's ``inner`` renames); any other
name is a whole key. Both directions are lookups in the same list of rules, so the map from the
single file to the folder and the map back cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tensorsafe.converter.plan import Op

Shape = tuple[int, ...]
Shapes = dict[str, Shape]


@dataclass(frozen=True)
class Rule:
    orig: str
    diff: str
    inner: tuple[tuple[str, str], ...] = ()
    """Renames of the first path segments after the prefix, ``(orig, diff)``. Several entries may
    share one orig name: the first is what is written, the others are older diffusers spellings
    accepted on the way back."""


def _rename_inner(rest: str, inner: tuple[tuple[str, str], ...], forward: bool) -> str:
    for o, d in inner:
        a, b = (o, d) if forward else (d, o)
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


class RuleSet:
    """Fast lookup of a list of rules, longest prefix first, in either direction."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self._exact: tuple[dict[str, Rule], dict[str, Rule]] = ({}, {})
        self._prefix: tuple[dict[str, Rule], dict[str, Rule]] = ({}, {})
        for r in rules:
            for side, name in ((0, r.orig), (1, r.diff)):
                table = self._prefix[side] if name.endswith(".") else self._exact[side]
                if name in table:
                    raise ValueError(f"two rules claim the name {name!r}")
                table[name] = r

    def to_diff(self, key: str) -> str | None:
        return self._lookup(key, forward=True)

    def to_orig(self, key: str) -> str | None:
        return self._lookup(key, forward=False)

    def _lookup(self, key: str, forward: bool) -> str | None:
        side = 0 if forward else 1
        rule = self._exact[side].get(key)
        if rule is not None:
            return rule.diff if forward else rule.orig
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:i]) + "."
            rule = self._prefix[side].get(prefix)
            if rule is not None:
                rest = _rename_inner(key[len(prefix):], rule.inner, forward)
                return (rule.diff if forward else rule.orig) + rest
        return None


@dataclass(frozen=True)
class PartTarget:
    """One output tensor of a part, with source keys local to the part (prefixes added later)."""

    key: str
    sources: tuple[str, ...]
    op: Op
    shape: Shape
    rows: tuple[int, int] | None = None


@dataclass
class PartPlan:
    targets: list[PartTarget] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def copy_or_unmapped(shapes: Shapes, translate, plan: PartPlan) -> list[tuple[str, str, Shape]]:
    """Translate every key; untranslatable ones go to ``plan.unmapped``. Returns (src, dst, shape)."""
    out = []
    for key in sorted(shapes):
        if key in plan.dropped:
            continue
        new = translate(key)
        if new is None:
            plan.unmapped.append(key)
        else:
            out.append((key, new, shapes[key]))
    return out


def indices(keys, prefix: str) -> dict[int, set[str]]:
    """``prefix`` N ``.rest`` -> {N: {rest, ...}} for the integer N right after the prefix."""
    found: dict[int, set[str]] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        head, _, rest = key[len(prefix):].partition(".")
        if head.isdigit():
            found.setdefault(int(head), set()).add(rest)
    return found
