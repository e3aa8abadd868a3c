"""Which tensors of a pickle checkpoint are its weights, under which names, and what else it holds.

``torch.save`` writes any Python value; the weights are a dict of tensors somewhere inside it: at
the top (``model.state_dict()`` saved as it is) or under a wrapper key (Lightning and Stable
Diffusion checkpoints: ``state_dict``; DeepSpeed: ``module``; fairseq, DeiT: ``model``; the
PyTorch tutorials: ``model_state_dict``). :func:`select` finds that dict, or the one ``key``
names, flattens nested names with dots (``encoder.layers.0.weight``) and sorts every other entry:

- **kept**: plain data (``None``, booleans, numbers, strings, and lists or string-keyed dicts of
  them) whose JSON text is at most :data:`METADATA_VALUE_MAX` characters becomes a ``__metadata__``
  entry under its dotted name, as JSON text (``"global_step": "470000"``; ``json.loads`` gives it back);
- **dropped**, with the reason: anything else (an object the restricted reader does not rebuild,
  bytes, a bare storage, a non-finite float, plain data too long, tensors outside the chosen dict).

Nothing is dropped silently: the conversion's summary lists each dropped name.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterator

from tensorsafe.errors import ParseError, UsageError, option
from tensorsafe.pickles.reader import Opaque, TypedStorage
from tensorsafe.tensors import DType, TensorRef

WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
"""Keys unwrapped automatically, in this order, when a dict holds no tensor itself."""
METADATA_VALUE_MAX = 1024
MAX_ENTRIES = 1_000_000
OPTIMIZER_KEYS = frozenset({"state", "param_groups"})


@dataclass
class Selection:
    """The weights chosen from a checkpoint, and where every other entry went."""

    where: str
    """The dotted key path of the chosen state dict; ``""`` for the top level."""
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    """Plain values for ``__metadata__``: dotted name -> JSON text."""
    dropped: dict[str, str] = field(default_factory=dict)
    flattened: int = 0
    """Tensors whose names were joined from nested containers."""
    _entries: int = 0


def select(root: object, *, key: str | None = None) -> Selection:
    """The state dict of a rebuilt checkpoint (``key``: a dotted path to it, else found by :data:`WRAPPERS`)."""
    chain = _follow(root, key) if key else _unwrap(root)
    chosen = chain[-1][1]
    where = ".".join(step for step, _ in chain[1:])
    _refuse_optimizer(chosen, where)
    sel = Selection(where)
    prefix = ""
    for (_, parent), (step, _) in zip(chain, chain[1:]):
        assert isinstance(parent, (dict, list, tuple))  # the chain only goes through containers
        for name, value in _items(parent, sel, prefix):
            if name != _join(prefix, step):
                _outside(sel, name, value, where)
        prefix = _join(prefix, step)
    _flatten(sel, chosen, chain[-1][0] if isinstance(chosen, TensorRef) else "", 0)
    if not sel.tensors:
        raise ParseError(f"no tensors found{' under ' + repr(where) if where else ''}: the file holds "
                         f"{describe(root)}; there is nothing to write as weights")
    return sel


def describe(v: object) -> str:
    """A few words saying what a rebuilt value is, for messages."""
    if isinstance(v, dict):
        keys = [str(k) for k in list(v)[:6]]
        return f"a dict with keys {', '.join(keys)}{', ...' if len(v) > 6 else ''}" if v else "an empty dict"
    if isinstance(v, (list, tuple)):
        return f"a {type(v).__name__} of {len(v)} items"
    if isinstance(v, Opaque):
        return f"a {v.name} object"
    if isinstance(v, TypedStorage):
        return "a bare storage"
    if isinstance(v, TensorRef):
        return "a tensor"
    if isinstance(v, DType):
        return f"the dtype {v.torch}"
    return f"a {type(v).__name__}"


# -- finding the state dict ----------------------------------------------------------------------
Chain = list[tuple[str, object]]   # (the key taken into this node, the node); the root's key is ""


def _unwrap(root: object) -> Chain:
    chain: Chain = [("", root)]
    node = root
    while isinstance(node, dict) and not any(isinstance(v, TensorRef) for v in node.values()):
        step = next((w for w in WRAPPERS if isinstance(node.get(w), dict) and has_tensor(node[w])), None)
        if step is None:
            break
        node = node[step]
        chain.append((step, node))
    return chain


def _follow(root: object, key: str) -> Chain:
    """The nodes along ``key`` (dots separate levels; a dict key that itself holds dots is matched whole)."""
    parts = key.split(".")
    chain: Chain = [("", root)]
    node, i = root, 0
    while i < len(parts):
        here = ".".join(parts[:i]) or "the top level"
        if isinstance(node, dict):
            j = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in node), None)
            if j is None:
                shown = ", ".join(repr(str(k)) for k in list(node)[:10])
                raise UsageError(f"{option('key', key)}: {here} has no entry {parts[i]!r} (it has {shown})")
            step = ".".join(parts[i:j])
            node = node[step]
        elif isinstance(node, (list, tuple)) and parts[i].isdigit() and int(parts[i]) < len(node):
            j, step = i + 1, parts[i]
            node = node[int(step)]
        else:
            raise UsageError(f"{option('key', key)}: {here} is {describe(node)}, which has no entry {parts[i]!r}")
        chain.append((step, node))
        i = j
    return chain


def _refuse_optimizer(node: object, where: str) -> None:
    if isinstance(node, dict) and OPTIMIZER_KEYS <= set(node) and not any(isinstance(v, TensorRef) for v in node.values()):
        raise ParseError(f"{'the entry ' + repr(where) if where else 'this file'} is an optimizer's state (keys 'state' "
                         "and 'param_groups'): its tensors are per-parameter statistics (momentum, variance) numbered "
                         "by parameter, not weights; convert the model's state dict instead")


def has_tensor(v: object, _seen: dict[int, bool] | None = None) -> bool:
    """Whether ``v`` holds a tensor anywhere (each shared container is looked at once)."""
    if isinstance(v, TensorRef):
        return True
    if not isinstance(v, (dict, list, tuple)):
        return False
    seen = {} if _seen is None else _seen
    if id(v) not in seen:
        seen[id(v)] = False
        items = v.values() if isinstance(v, dict) else v
        seen[id(v)] = any(has_tensor(x, seen) for x in items)
    return seen[id(v)]


# -- names and the metadata rule -----------------------------------------------------------------
def _items(node: dict | list | tuple, sel: Selection, prefix: str) -> Iterator[tuple[str, object]]:
    """``(dotted name, value)`` for each entry of a dict or list; keys that are not text or integers are dropped."""
    pairs: list[tuple[str, object]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str):
                pairs.append((k, v))
            elif isinstance(k, int) and not isinstance(k, bool):
                pairs.append((str(k), v))
            else:
                sel.dropped[_join(prefix, repr(k))] = f"a dict key of type {type(k).__name__}, not text: it cannot name a tensor"
    else:
        pairs = [(str(i), v) for i, v in enumerate(node)]
    for k, v in pairs:
        sel._entries += 1
        if sel._entries > MAX_ENTRIES:
            raise ParseError(f"more than {MAX_ENTRIES:,} entries in the checkpoint's structure")
        yield _join(prefix, k), v


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _outside(sel: Selection, name: str, value: object, where: str) -> None:
    if has_tensor(value):
        sel.dropped[name] = (f"tensors outside the chosen state dict {where!r}; pass --key {name} (key={name!r}) "
                             "to convert them instead")
    else:
        _plain_rule(sel, name, value)


def _flatten(sel: Selection, node: object, prefix: str, depth: int) -> None:
    if isinstance(node, TensorRef):
        name = prefix or "tensor"
        if not _is_utf8(name):
            raise ParseError(f"tensor name {name!r} is not UTF-8 text (a lone surrogate): a safetensors header "
                             "cannot hold it")
        if name in sel.tensors:
            raise ParseError(f"two tensors would both be named {name!r} once nested names are joined with dots")
        sel.tensors[name] = node
        sel.flattened += depth > 1
        return
    if isinstance(node, (dict, list, tuple)) and has_tensor(node):
        for name, value in _items(node, sel, prefix):
            _flatten(sel, value, name, depth + 1)
        return
    _plain_rule(sel, prefix or "(top level)", node)


def _plain_rule(sel: Selection, name: str, value: object) -> None:
    """Keep ``value`` as JSON text when it is short plain data, else drop it with the reason."""
    why = _not_plain(value)
    if why is not None:
        sel.dropped[name] = f"{why}: safetensors holds tensors, and text in __metadata__"
        return
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if not (_is_utf8(name) and _is_utf8(text)):
        sel.dropped[name] = "text that is not UTF-8 (a lone surrogate): a safetensors header cannot hold it"
        return
    if len(text) > METADATA_VALUE_MAX:
        sel.dropped[name] = f"plain data of {len(text):,} characters as JSON: longer than the {METADATA_VALUE_MAX:,} " \
                            "kept in __metadata__"
        return
    sel.kept[name] = text


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: a pickle's strings may hold lone surrogates, a header's may not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_plain(v: object, budget: list[int] | None = None) -> str | None:
    """Why ``v`` is not plain JSON data, or None (a structure of more than :data:`METADATA_VALUE_MAX`
    values is too long anyway)."""
    budget = [METADATA_VALUE_MAX] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        return f"a structure of more than {METADATA_VALUE_MAX:,} values"
    if v is None or isinstance(v, (bool, int, str)):
        return None
    if isinstance(v, float):
        return None if math.isfinite(v) else f"the number {v}, which JSON cannot hold"
    if isinstance(v, (list, tuple)):
        return next((w for w in (_not_plain(x, budget) for x in v) if w), None)
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            return "a dict whose keys are not all text"
        return next((w for w in (_not_plain(x, budget) for x in v.values()) if w), None)
    if isinstance(v, (bytes, bytearray)):
        return f"{len(v):,} bytes of binary data"
    return f"{describe(v)}, not plain data"
