"""Turn a walked pickle into findings: every import judged by the policy, every call checked."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tensorsafe.errors import LimitExceeded, PickleParseError
from tensorsafe.pickles.allocation import ItemSize, allocating_callees, allocation_bombs
from tensorsafe.pickles.policy import (ALLOWED, INDIRECT_CALLERS, NESTED_PICKLE_LOADERS, STATE_SETTERS, Invoked,
                                       Judgement, Policy, Tier)
from tensorsafe.pickles.values import BytesRef, Call, Global, Unresolved
from tensorsafe.pickles.walker import PickleTrace, installed_setstates
from tensorsafe.report import Finding, Location
from tensorsafe.rules import PICKLE_LIMIT_RULES

_INVOKING_KINDS = frozenset({"reduce", "obj", "inst", "setstate"})
"""Opcodes that always run the callee (``cls(*args)``); INST and OBJ without arguments run only
``cls.__new__(cls)`` in CPython, but no protocol-2+ pickler writes them, so they are judged as calls."""
_NEW_KINDS = frozenset({"newobj", "newobj_ex"})
"""``cls.__new__(cls, *args, **kwargs)``: with no arguments this is how protocol 2+ pickles an object
(BUILD then sets its state), so a benign class may be built that way; with arguments it is a call."""
_OBJECT = ("builtins", "object")
_BIT_GENERATOR_CTOR = ("numpy.random._pickle", "__bit_generator_ctor")
_NUMPY_CTORS = frozenset({"__generator_ctor", "__randomstate_ctor"})


@dataclass
class NestedPayload:
    """Bytes a pickle hands to a loader: scanned as a nested pickle by the scanner."""

    data: bytes | BytesRef
    offset: int
    loader: str



@dataclass
class Verdicts:
    findings: list[Finding] = field(default_factory=list)
    imports: Counter = field(default_factory=Counter)
    tiers: dict[tuple[str, str], Tier] = field(default_factory=dict)
    nested: list[NestedPayload] = field(default_factory=list)


class TraceJudge:
    """Judges one :class:`PickleTrace` found at ``location`` in ``path``."""

    def __init__(self, policy: Policy, path: str, location: Location, base: int = 0,
                 dtype_itemsize: ItemSize | None = None):
        self.policy = policy
        self.dtype_itemsize = dtype_itemsize
        self.base = base
        self.path = path
        self.location = location
        self.out = Verdicts()
        self._judged: dict[tuple[str, str], Judgement] = {}

    def judge(self, trace: PickleTrace) -> Verdicts:
        self._imports(trace)
        plain = self._plain_globals(trace)
        for call in trace.calls:
            if id(call.func) not in plain:
                self._call(call)
        self._allocations(trace)
        for offset, target, opcode in trace.modified:
            self._add("PK-C03", f"{opcode} modifies the imported object {_describe(target)}",
                      offset, _describe(target))
        for offset, cls in trace.class_changes:
            self._add("PK-C03", f"BUILD sets __class__ of an object (by name, or by a key or mapping computed at load time) "
                      f"to {_describe(cls)}: it turns into another class "
                      "after it was built (joblib then reads array bytes after it that the pickle's own view "
                      "reads as opcodes)", offset, "__class__")
        if trace.deep_key_offset is not None:
            self._add("PK-L01", "a dict key or set item is nested more than 64 deep: hashing it can crash the "
                      "loader (limit MAX_KEY_NESTING)", trace.deep_key_offset, "MAX_KEY_NESTING")
        for offset in trace.out_of_band:
            self._add("PK-S05", "NEXT_BUFFER refers to an out-of-band buffer that is not in the file", offset)
        for offset, message in trace.framing:
            self._add("PK-S06", message, offset, "FRAME")
        self._error(trace)
        return self.out

    # -- imports ---------------------------------------------------------------------------------
    def _imports(self, trace: PickleTrace) -> None:
        first_offset: dict[tuple[str, str], int] = {}
        for g in trace.globals:
            if isinstance(g, Unresolved):
                self._add("PK-I04", f"import cannot be resolved without running the pickle: {g.reason}",
                          g.offset, g.opcode)
                continue
            key = (g.module, g.name)
            self.out.imports[key] += 1
            first_offset.setdefault(key, g.offset)
        for key, offset in first_offset.items():
            j = self._judgement(key)
            self.out.tiers[key] = j.tier
            qualified = f"{key[0]}.{key[1]}"
            count = self.out.imports[key]
            times = f" ({count} times)" if count > 1 else ""
            if j.tier is Tier.DANGEROUS:
                self._add("PK-I01", f"imports {qualified}{times}: {j.reason}", offset, qualified)
            elif j.tier is Tier.UNKNOWN:
                self._add("PK-I02", f"imports {qualified}{times}, which is not in the allowlist", offset, qualified)
            elif j.tier is Tier.BENIGN:
                self._add("PK-I03", f"references {qualified}{times}: {j.reason}", offset, qualified)

    def _plain_globals(self, trace: PickleTrace) -> set[int]:
        """Imports whose calls need no further look: allowed (or invocable benign), not calling an
        argument, not a loader. A checkpoint calls the same few thousands of times, through the
        same few ``Global`` objects (the memo hands out the object its import made), so they are
        known by identity: ``id()`` of objects the trace keeps alive. Any other callee, even an
        equal ``Global``, is judged in full."""
        plain_keys = {key for key, j in self._judged.items()
                      if (j.tier is Tier.ALLOWED or (j.tier is Tier.BENIGN and j.invocable))
                      and key not in INDIRECT_CALLERS and key not in NESTED_PICKLE_LOADERS and key not in STATE_SETTERS}
        return {id(g) for g in trace.globals if type(g) is Global and (g.module, g.name) in plain_keys}

    def _judgement(self, key: tuple[str, str]) -> Judgement:
        j = self._judged.get(key)
        if j is None:
            j = self._judged[key] = self.policy.judge(*key)
        return j

    # -- calls -----------------------------------------------------------------------------------
    def _call(self, call: Call) -> None:
        func = call.func
        if call.kind == "additems":
            return
        if isinstance(func, Unresolved):
            return
        if not isinstance(func, Global):
            self._add("PK-C01", f"{call.kind.upper()} calls {_describe(func)}, which is not an imported global",
                      call.offset, _describe(func))
            return
        key = (func.module, func.name)
        j = self._judgement(key)
        if call.kind in _INVOKING_KINDS or (call.kind in _NEW_KINDS and not _without_arguments(call)):
            self._check_invocation(func, j, call.offset, call.kind.upper())
        invoked = INDIRECT_CALLERS.get(key)
        if invoked is not None:
            self._indirect(call, invoked)
        if key in NESTED_PICKLE_LOADERS:
            self._nested(call, func)
        if key in STATE_SETTERS:
            self._state_setter(call, STATE_SETTERS[key])

    def _check_invocation(self, func: Global, j: Judgement, offset: int, how: str) -> None:
        if j.tier is Tier.BENIGN and not j.invocable:
            self._add("PK-C02", f"{how} calls {func.qualified} with arguments, which runs its constructor",
                      offset, func.qualified)

    def _indirect(self, call: Call, invoked: tuple[Invoked, ...]) -> None:
        """Judge the arguments a helper calls (``INDIRECT_CALLERS``) as calls of their own."""
        caller = _describe(call.func)
        if not isinstance(call.args, tuple):
            self._add("PK-C01", f"{caller} gets arguments computed at load time ({_describe(call.args)}), "
                      "so what it calls cannot be known", call.offset, caller)
            return
        args = call.args
        for inv in invoked:
            if inv.index >= len(args) or args[inv.index] is None or isinstance(args[inv.index], Unresolved):
                continue
            target = args[inv.index]
            how = f"{caller} (argument {inv.index})"
            if inv.how == "class_of":
                base = args[1] if len(args) > 1 else None
                if not _is_object(base):
                    self._invoked(target, call, how)
                elif not isinstance(target, Global):
                    self._computed(target, call, caller)
            elif inv.how == "name_or_class":
                if isinstance(target, str) or (isinstance(target, Call) and _is_bit_generator_call(target)):
                    continue
                self._invoked(target, call, how)
            elif inv.how == "tensor":
                if not (isinstance(target, Call) and _is_tensor_rebuild(target)):
                    self._add("PK-C01", f"{caller} calls a method of {_describe(target)}, which is not a tensor "
                              "torch rebuilt", call.offset, _describe(target))
            else:
                self._invoked(target, call, how)

    def _state_setter(self, call: Call, index: int) -> None:
        """A ``__setstate__`` the helper's state argument installs is called by a later BUILD."""
        caller = _describe(call.func)
        if not isinstance(call.args, tuple):
            if call.func.module != "torch._tensor":  # _rebuild_from_type_v2: reported by _indirect
                self._add("PK-C01", f"{caller} gets arguments computed at load time ({_describe(call.args)}), "
                          "so the attributes its state sets cannot be known", call.offset, caller)
            return
        if len(call.args) <= index:
            return
        state = call.args[index]
        parts = state if type(state) is tuple and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, (Call, Global, Unresolved)):
                self._add("PK-C01", f"{caller} sets attributes from {_describe(part)}, which is computed at load "
                          "time: it may install a __setstate__ that a later BUILD calls", call.offset, caller)
        for target in installed_setstates(state):
            self._invoked(target, call, f"{caller} (a __setstate__ its state installs)")

    def _invoked(self, target: object, call: Call, how: str) -> None:
        if not isinstance(target, Global):
            self._computed(target, call, _describe(call.func))
            return
        key = (target.module, target.name)
        if key == _OBJECT:
            return
        if key == _BIT_GENERATOR_CTOR and _is_numpy_ctor(call.func):
            return  # numpy's own default: it gets argument 0, already judged by the same rule it applies
        if key in INDIRECT_CALLERS or key in NESTED_PICKLE_LOADERS:
            self._add("PK-C01", f"{_describe(call.func)} is handed {target.qualified}, which calls its own "
                      "arguments: what those are is not in the file", call.offset, target.qualified)
            return
        self._check_invocation(target, self._judgement(key), call.offset, how)

    def _computed(self, target: object, call: Call, caller: str) -> None:
        self._add("PK-C01", f"{caller} is handed {_describe(target)} to call, which is not an imported global",
                  call.offset, _describe(target))

    def _nested(self, call: Call, func: Global) -> None:
        for payload in _byte_arguments(_data_argument(call.args)):
            self.out.nested.append(NestedPayload(payload, call.offset, func.qualified))

    def _allocations(self, trace: PickleTrace) -> None:
        """PK-A01: allowed calls that make the loader allocate what the file does not hold
        (``tensorsafe.pickles.allocation``); a trace importing no allocating callee costs one pass
        over its imports."""
        callees = allocating_callees(trace)
        if callees:
            for bomb in allocation_bombs(trace, callees, self.dtype_itemsize):
                self._add("PK-A01", bomb.message, bomb.offset, bomb.trigger)

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, trace: PickleTrace) -> None:
        err = trace.error
        if err is None:
            return
        if isinstance(err, LimitExceeded):
            rule_id = PICKLE_LIMIT_RULES.get(err.limit, "PK-L01")
            self._add(rule_id, f"{err.message} (limit {err.limit})", trace.end, err.limit)
        elif isinstance(err, PickleParseError):
            rule_id = "PK-S02" if trace.truncated else "PK-S01"
            self._add(rule_id, err.message, err.offset)

    def _add(self, rule_id: str, message: str, offset: int | None, trigger: str | None = None) -> None:
        where = self.location.at(None if offset is None else offset - self.base)
        self.out.findings.append(Finding(self.path, rule_id, message, where, trigger))


def _without_arguments(call: Call) -> bool:
    """True when NEWOBJ(_EX) provably passes no arguments (a list or dict only grows after the call)."""
    if not (isinstance(call.args, (tuple, list)) and len(call.args) == 0):
        return False
    return call.kwargs is None or (isinstance(call.kwargs, dict) and not call.kwargs)


def _is_object(value: object) -> bool:
    return isinstance(value, Global) and (value.module, value.name) == _OBJECT


def _is_bit_generator_call(value: Call) -> bool:
    """A generator numpy's own ``__bit_generator_ctor`` built: the callee takes it as it is."""
    return isinstance(value.func, Global) and (value.func.module, value.func.name) == _BIT_GENERATOR_CTOR


def _is_numpy_ctor(func: object) -> bool:
    return isinstance(func, Global) and func.module == _BIT_GENERATOR_CTOR[0] and func.name in _NUMPY_CTORS


def _is_tensor_rebuild(value: Call) -> bool:
    func = value.func
    return (isinstance(func, Global) and value.kind == "reduce" and func.module in ("torch._utils", "torch._tensor")
            and func.name.startswith("_rebuild_") and (func.module, func.name) in ALLOWED)


def _data_argument(args: object) -> object:
    """The argument a loader unpickles, or a wrapping call turns into bytes: the first positional one
    (``pickle.loads(data)``, ``torch.load(f, map_location)``, ``_codecs.encode(text, "latin1")``,
    ``io.BytesIO(data)``). The others are options (an encoding name, a device), never a payload.
    Arguments computed at load time are followed as they are."""
    if isinstance(args, (tuple, list)):
        return args[0] if args else None
    return args


def _byte_arguments(value: object, depth: int = 0) -> list[bytes | BytesRef]:
    """Bytes a loader is handed as ``value``, looking through tuples, lists and the data argument of
    simple wrapping calls (how protocols 0-2 carry bytes: ``_codecs.encode(text, "latin1")``)."""
    if depth > 4:
        return []
    if isinstance(value, (bytes, BytesRef)):
        return [value]
    if isinstance(value, str):
        return [value.encode("latin-1", "replace")]
    found: list[bytes | BytesRef] = []
    if isinstance(value, (tuple, list)):
        for a in value:
            found.extend(_byte_arguments(a, depth + 1))
    elif isinstance(value, Call):
        found.extend(_byte_arguments(_data_argument(value.args), depth + 1))
    return found


def _describe(value: object) -> str:
    if isinstance(value, Global):
        return value.qualified
    if isinstance(value, Call):
        return f"the result of calling {_describe(value.func)}"
    if isinstance(value, Unresolved):
        return f"an unresolved import ({value.reason})"
    return f"a {type(value).__name__} value"


def judge_trace(trace: PickleTrace, policy: Policy, path: str, location: Location, base: int = 0,
                dtype_itemsize: ItemSize | None = None) -> Verdicts:
    """Findings for ``trace``; offsets are reported relative to ``base`` (the stream's start).
    ``dtype_itemsize`` sizes the dtypes a pickle hands numpy (PK-A01); without it an element is 1 byte."""
    if not (trace.globals or trace.calls or trace.modified or trace.class_changes or trace.out_of_band
            or trace.framing or trace.error or trace.deep_key_offset is not None):
        return Verdicts()  # what TraceJudge.judge finds in a trace with none of the things it looks at
    return TraceJudge(policy, path, location, base, dtype_itemsize).judge(trace)
