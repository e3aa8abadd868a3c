"""Judge a Jinja chat template by its syntax tree: does it reach Python internals?

Python loaders of GGUF files (llama-cpp-python before 0.2.72, and any code that renders
``tokenizer.chat_template`` with a plain ``jinja2.Environment``) run the template unsandboxed, so
``{{ cycler.__init__.__globals__.os.popen(...) }}`` runs a command. Templates that only format
messages never touch an attribute whose name starts with ``_`` or names an interpreter internal.

The template is parsed with jinja2's own parser (never a regex) and every place that looks an
attribute up is checked: ``x.name``, ``x['name']``, ``x|attr('name')``, the ``attribute=`` of
``map``/``selectattr``/``sort``/... (dotted paths are split the way jinja2 splits them), keyword
names (``dict(__class__=1)|first``) and bare names. Strings the template *builds* (``~``, ``+``,
``*``, ``%``, ``format``, ``join``, ``replace``, ``.format()``, ``{% set %}`` variables holding
them) are folded from their constant parts; a built string that spells a suspicious name anywhere
is a hit, and an attribute lookup whose name is built from something that cannot be folded is a
hit too (a benign template looks attributes up by literal names or by its data's keys).
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2
    import jinja2.parser

SUSPICIOUS_NAMES = frozenset({
    "mro", "func_globals", "func_code", "f_globals", "f_locals", "f_builtins", "f_back", "f_code",
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "tb_frame", "tb_next", "co_code",
    "im_func", "os", "popen", "system", "eval", "exec", "subprocess", "import_module", "builtins",
    "getattr", "setattr", "globals", "locals", "compile", "open", "spawn", "execv", "execve",
})
"""Attribute names a chat template has no use for; every name starting with ``_`` is suspicious too."""

ATTRIBUTE_FILTERS = frozenset({"map", "selectattr", "rejectattr", "sort", "groupby", "sum", "unique", "min",
                               "max", "attr"})
"""Filters that look up an attribute named by a string argument (``attribute=`` or positional)."""
BUILDING_FILTERS = frozenset({"format", "join", "replace", "lower", "upper", "title", "capitalize", "reverse",
                              "string", "trim", "first", "last", "list", "center", "striptags", "safe", "e",
                              "escape", "forceescape", "pprint", "urlencode", "indent", "wordwrap", "truncate",
                              "batch", "slice", "default", "d"})
BUILDING_METHODS = frozenset({"format", "join", "replace", "lower", "upper", "strip", "lstrip", "rstrip",
                              "title", "capitalize", "swapcase", "casefold", "removeprefix", "removesuffix",
                              "format_map", "center", "ljust", "rjust", "zfill", "expandtabs"})
MAX_FOLDED_CHARS = 4096
MAX_FOLD_VALUES = 64
MAX_FOLD_DEPTH = 50


COMMON_WORDS = frozenset({"os", "system", "eval", "exec", "open", "compile", "spawn", "globals", "locals",
                          "getattr", "setattr", "builtins"})
"""Suspicious as attribute names, but ordinary words in text a template writes (``'system'`` is a role)."""


def is_suspicious(name: object) -> bool:
    return isinstance(name, str) and (name.startswith("_") or name in SUSPICIOUS_NAMES)


def _const_spells_internal(value: object) -> bool:
    """A literal string holding ``__`` or a word naming an interpreter internal (not an ordinary word):
    strings can reach a lookup in ways no folding follows (macro arguments, namespaces, loops)."""
    return isinstance(value, str) and ("__" in value or any(
        w in SUSPICIOUS_NAMES and w not in COMMON_WORDS for w in re.split(r"\W+", value)))


def _spells_internal(text: str) -> bool:
    """A built string holding ``__x__`` or an internal (or a dotted path through one)."""
    return any(is_suspicious(p) and (p.startswith("__") or p not in COMMON_WORDS)
               for p in text.replace("[", ".").split("."))


@dataclass(frozen=True)
class TemplateHit:
    chain: str
    reason: str


class TemplateSyntaxProblem(Exception):
    """jinja2 cannot parse the template (no loader would render it; it cannot be judged)."""


def check_template(source: str) -> list[TemplateHit]:
    """Every way the template reaches a suspicious attribute; raises ``TemplateSyntaxProblem``."""
    import jinja2
    from jinja2 import nodes

    try:
        tree = _parser().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(f"line {exc.lineno}: {exc.message}") from exc
    except RecursionError as exc:
        raise TemplateSyntaxProblem("template nested too deeply to parse") from exc
    return _Checker(nodes).run(tree)


@functools.lru_cache(maxsize=1)
def _parser() -> "jinja2.Environment":
    """A ``jinja2.Environment`` that parses what transformers renders: its chat template environment
    adds ``loopcontrols`` (``{% break %}``, ``{% continue %}``) and a ``{% generation %}`` block
    (the assistant-token mask). The block's body is kept in the tree, so it is checked like the rest."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols

    class GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser: "jinja2.parser.Parser") -> nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return jinja2.Environment(extensions=[loopcontrols, GenerationBlock])


class _Checker:
    def __init__(self, nodes):
        self.n = nodes
        self.hits: list[TemplateHit] = []
        self.variables: dict[str, list] = {}
        self.built_names: set[str] = set()
        self.fold_heights: dict[int, int] = {}

    def run(self, tree) -> list[TemplateHit]:
        all_nodes = list(_walk(tree))
        self._measure_fold_heights(all_nodes)
        self._bind_variables(all_nodes)
        n = self.n
        for node in all_nodes:
            if isinstance(node, n.Getattr):
                self._name(node.attr, node)
            elif isinstance(node, n.Getitem):
                self._key(node.arg, node)
            elif isinstance(node, n.Filter) and node.name in ATTRIBUTE_FILTERS:
                self._attribute_filter(node)
            elif isinstance(node, n.Keyword):
                if is_suspicious(node.key):
                    self._hit(node, f"keyword name {node.key!r}")
            elif isinstance(node, n.Name):
                if is_suspicious(node.name):
                    self._hit(node, f"name {node.name!r}")
            elif isinstance(node, n.Const) and _const_spells_internal(node.value):
                self._hit(node, f"string constant {node.value[:80]!r} spells a Python internal")
            elif isinstance(node, (n.Macro, n.CallBlock, n.AssignBlock)):
                self._value_text(node)
            if isinstance(node, (n.Concat, n.Add, n.Mul, n.Mod, n.Filter, n.Call)):
                for value in self._fold(node):
                    if any(_spells_internal(part) for part in _parts(value)):
                        self._hit(node, f"builds the string {value!r}")
                        break
        return _dedup(self.hits)

    # -- sinks ------------------------------------------------------------------------------------
    def _name(self, name: str, node) -> None:
        if is_suspicious(name):
            self._hit(node, f"attribute {name!r}")

    def _key(self, key, node) -> None:
        values = self._fold(key)
        if values:
            for value in values:
                if is_suspicious(value):
                    self._hit(node, f"attribute {value!r}")
        elif self._built(key):
            self._hit(node, "attribute name built in the template from parts that cannot be read statically")

    def _value_text(self, node) -> None:
        """Text inside a macro, call or ``{% set %}`` block becomes a string value (``cycler[m()]``)."""
        for sub in _walk(node):
            if isinstance(sub, self.n.TemplateData) and _const_spells_internal(sub.data):
                self._hit(sub, f"block text {sub.data[:80]!r} (a string value) spells a Python internal")

    def _attribute_filter(self, node) -> None:
        n = self.n
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            self._hit(node, f"|{node.name} with arguments unpacked at render time (*args/**kwargs)")
        args = [kw.value for kw in node.kwargs if kw.key == "attribute" or (node.name == "attr" and kw.key == "name")]
        if node.name in {"attr", "selectattr", "rejectattr", "sort", "groupby", "sum", "unique"}:
            args += node.args[:1]
        strict = node.name == "attr"
        if node.name == "map" and node.args:  # map('attr', name): the first argument names a filter
            filters = self._fold(node.args[0])
            if not filters:
                self._hit(node, "|map with a filter chosen at render time")
            elif any(f in ATTRIBUTE_FILTERS for f in filters):
                args += node.args[1:2]
                strict = True
        for arg in args:
            values = self._fold(arg)
            if not values and (strict or self._built(arg)) and not isinstance(arg, n.Const):
                self._hit(node, f"|{node.name} with an attribute name computed at render time")
            for value in values:
                if any(is_suspicious(part) for part in str(value).split(".")):
                    self._hit(node, f"|{node.name}({value!r})")

    def _hit(self, node, reason: str) -> None:
        self.hits.append(TemplateHit(_chain(self.n, node), reason))

    # -- folding constant strings -------------------------------------------------------------------
    def _bind_variables(self, all_nodes) -> None:
        """``{% set x = ... %}`` and ``{% for x in [...] %}``: every value a name may hold (flow-insensitive)."""
        n = self.n
        for _ in range(3):  # a few rounds let variables built from variables fold
            for node in all_nodes:
                if isinstance(node, n.Assign) and isinstance(node.target, n.Name):
                    self._bind(node.target.name, self._fold(node.node))
                    if self._built(node.node):
                        self.built_names.add(node.target.name)
                elif isinstance(node, n.For) and isinstance(node.target, n.Name) \
                        and isinstance(node.iter, (n.List, n.Tuple)):
                    for item in node.iter.items:
                        self._bind(node.target.name, self._fold(item))

    def _bind(self, name: str, values: list) -> None:
        if not values:
            return
        known = self.variables.setdefault(name, [])
        for v in values:
            if v not in known and len(known) < MAX_FOLD_VALUES:
                known.append(v)

    def _measure_fold_heights(self, all_nodes: list) -> None:
        """How deep ``_fold`` recurses below each node (capped past the limit), children first.

        Any [] an operand folds to makes its parent fold to [], so a node whose recursion would
        pass ``MAX_FOLD_DEPTH`` folds to [] at once: the same answer, without walking a chain of
        thousands of filters or ``+`` 50 levels down from each of its nodes (linear, not 50x)."""
        n, heights = self.n, self.fold_heights
        for node in reversed(all_nodes):  # _walk lists a node before its descendants
            heights[id(node)] = min(MAX_FOLD_DEPTH + 1, 1 + max(
                (heights.get(id(c), 0) for c in _fold_operands(n, node)), default=-1))

    def _fold(self, node, depth: int = 0) -> list:
        """The constant strings (or lists of them) ``node`` can evaluate to; [] when unknown."""
        n = self.n
        if depth + self.fold_heights.get(id(node), 0) > MAX_FOLD_DEPTH:
            return []
        if isinstance(node, n.Const):
            return [node.value] if isinstance(node.value, (str, int)) and not isinstance(node.value, bool) else []
        if isinstance(node, n.Name):
            return list(self.variables.get(node.name, []))
        if isinstance(node, (n.List, n.Tuple)):
            items = [self._fold(i, depth + 1) for i in node.items]
            return [[v[0] for v in items]] if items and all(len(v) == 1 for v in items) else []
        if isinstance(node, (n.Concat, n.Add, n.Mul, n.Mod)):
            if isinstance(node, n.Concat):
                operands = [self._fold(x, depth + 1) for x in node.nodes]
            else:
                operands = [self._fold(node.left, depth + 1), self._fold(node.right, depth + 1)]
            if not all(operands):
                return []
            return _combine(node, n, operands)
        if isinstance(node, n.Filter) and node.node is not None:
            return _apply(node.name, self._fold(node.node, depth + 1),
                          [self._fold(a, depth + 1) for a in node.args])
        if isinstance(node, n.Call) and isinstance(node.node, n.Getattr) and node.node.attr in BUILDING_METHODS:
            return _apply(node.node.attr, self._fold(node.node.node, depth + 1),
                          [self._fold(a, depth + 1) for a in node.args])
        return []

    def _built(self, node) -> bool:
        """Does the expression build a string (rather than read a key from the data)?"""
        n = self.n
        for sub in _walk(node):
            if isinstance(sub, (n.Concat, n.Mod)):
                return True
            if isinstance(sub, (n.Add, n.Mul)) and any(isinstance(c, n.Const) and isinstance(c.value, str)
                                                       for c in _walk(sub)):
                return True
            if isinstance(sub, n.Filter) and sub.name in BUILDING_FILTERS:
                return True
            if isinstance(sub, n.Call) and isinstance(sub.node, n.Getattr) and sub.node.attr in BUILDING_METHODS:
                return True
            if isinstance(sub, n.Name) and (sub.name in self.variables or sub.name in self.built_names):
                return True
        return False


def _fold_operands(n, node) -> list:
    """The nodes ``_Checker._fold`` folds to fold ``node`` (keep the two in step)."""
    if isinstance(node, (n.List, n.Tuple)):
        return list(node.items)
    if isinstance(node, n.Concat):
        return list(node.nodes)
    if isinstance(node, (n.Add, n.Mul, n.Mod)):
        return [node.left, node.right]
    if isinstance(node, n.Filter) and node.node is not None:
        return [node.node, *node.args]
    if isinstance(node, n.Call) and isinstance(node.node, n.Getattr) and node.node.attr in BUILDING_METHODS:
        return [node.node.node, *node.args]
    return []


def _combine(node, n, operands: list[list]) -> list:
    out: list = []
    combos: list[list] = [[]]
    for values in operands:
        combos = [c + [v] for c in combos for v in values][:MAX_FOLD_VALUES]
    for combo in combos:
        try:
            if isinstance(node, n.Concat):
                value = "".join(str(v) for v in combo)
            elif isinstance(node, n.Add):
                value = combo[0] + combo[1]
            elif isinstance(node, n.Mul):
                if isinstance(combo[1], int) and abs(combo[1]) > MAX_FOLDED_CHARS:
                    continue
                value = combo[0] * combo[1]
            else:
                value = combo[0] % (tuple(combo[1]) if isinstance(combo[1], list) else combo[1])
        except (TypeError, ValueError, OverflowError, MemoryError):
            continue
        if isinstance(value, (str, int)) and len(str(value)) <= MAX_FOLDED_CHARS:
            out.append(value)
    return out


def _apply(name: str, bases: list, args: list[list]) -> list:
    if not bases or not all(args):
        return []
    out = []
    for base in bases[:MAX_FOLD_VALUES]:
        a = [v[0] for v in args]
        try:
            if name == "format":
                value = base % tuple(a) if "%" in str(base) and not isinstance(base, list) else str(base).format(*a)
            elif name == "join":
                value = (a[0] if a else "").join(str(x) for x in base) if isinstance(base, list) \
                    else str(base).join(str(x) for x in (a[0] if a and isinstance(a[0], list) else []))
            elif name == "replace" and len(a) >= 2:
                value = str(base).replace(str(a[0]), str(a[1]))
            elif name in {"lower", "upper", "title", "capitalize", "strip", "trim", "lstrip", "rstrip",
                          "swapcase", "casefold"}:
                value = getattr(str(base), "strip" if name == "trim" else name)()
            elif name == "string":
                value = base if isinstance(base, str) else str(base)
            elif name == "reverse":
                value = base[::-1] if isinstance(base, (str, list)) else None
            elif name in {"first", "last"} and isinstance(base, (str, list)) and base:
                value = base[0] if name == "first" else base[-1]
            else:
                continue
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            continue
        if isinstance(value, (str, list)) and len(str(value)) <= MAX_FOLDED_CHARS:
            out.append(value)
    return out


def _parts(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)] if isinstance(value, str) else []


def _walk(node) -> Iterator:
    stack = [node]
    while stack:
        cur = stack.pop()
        yield cur
        stack.extend(reversed(list(cur.iter_child_nodes())))


def _chain(n, node) -> str:
    """``cycler.__init__.__globals__.os`` for the lookup at ``node``, as far as it is literal."""
    parts: list[str] = []
    cur = node
    for _ in range(64):
        if isinstance(cur, n.Getattr):
            parts.append(f".{cur.attr}")
            cur = cur.node
        elif isinstance(cur, n.Getitem):
            key = cur.arg.value if isinstance(cur.arg, n.Const) else "…"
            parts.append(f"[{key!r}]")
            cur = cur.node
        elif isinstance(cur, n.Filter):
            arg = cur.args[0].value if cur.args and isinstance(cur.args[0], n.Const) else "…"
            parts.append(f"|{cur.name}({arg!r})" if cur.args else f"|{cur.name}")
            if cur.node is None:
                break
            cur = cur.node
        elif isinstance(cur, n.Call):
            parts.append("()")
            cur = cur.node
        elif isinstance(cur, n.Name):
            parts.append(cur.name)
            break
        elif isinstance(cur, n.Const):
            parts.append(repr(cur.value))
            break
        else:
            parts.append("(…)")
            break
    return "".join(reversed(parts))[:200]


def _dedup(hits: list[TemplateHit]) -> list[TemplateHit]:
    seen, out = set(), []
    for h in hits:
        if h not in seen:
            seen.add(h)
            out.append(h)
    return out
