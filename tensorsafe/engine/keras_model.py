"""Keras model configs (v3 ``.keras`` zips and legacy HDF5): find the code loading would run.

Loading a Keras model rebuilds it from a JSON config. Three things in that config run code:
a ``Lambda`` layer (its function is Python bytecode, base64 in the config, or a function looked up
by module and name), any other serialized Python function (``"class_name": "__lambda__"``, a
legacy ``"function_type": "lambda"``), and a ``"module"`` outside Keras, which Keras imports to find
a custom class. Each is a finding (KERAS-01 code, KERAS-02 foreign module); a config that is not
readable JSON is KERAS-03 (unscanned). Duplicate JSON keys are all walked, whichever a reader keeps.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from tensorsafe.readers.json_pairs import JsonObject, read_json_pairs
from tensorsafe.readers.zip import member_span
from tensorsafe.errors import LimitExceeded, ParseError
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.readers.zip import ZipView
    from tensorsafe.engine.scanner import FileScan

KERAS_MODULES = ("keras", "tf_keras", "tensorflow.keras")
"""A ``module`` of these (or below them) is Keras's own; anything else is imported as a custom class."""
KERAS_GADGETS = {
    "TorchModuleWrapper": "loading runs torch.load on the pickled module in its config (CVE-2025-49655)",
    "TFSMLayer": "loading loads the TensorFlow SavedModel at a path its config names (CVE-2026-1462)",
    "get_file": "loading calls keras.utils.get_file: downloads and extracts files (CVE-2025-8747)",
    "enable_unsafe_deserialization": "loading turns Keras safe mode off for what follows (CVE-2025-9906)",
}
"""Keras's own classes and functions that a config can name and that run code or write files when
it is loaded, with or without safe mode (a ``module`` inside Keras does not make them safe)."""
KERAS_FUNCTION_SECTIONS = frozenset({"activations", "constraints", "initializers", "losses", "metrics", "optimizers",
                                     "regularizers", "ops", "random"})
"""Where a function reference (``"class_name": "function"``) may point inside Keras: the modules
Keras itself searches for built-in functions (``BUILTIN_MODULES`` in keras/src/saving/
serialization_lib.py) and the tensor math of ``keras.ops`` and ``keras.random`` (an activation such
as ``keras.ops.gelu`` is saved so). Keras resolves ``module + "." + config`` among its public API,
and releases before its ``NON_MODELING_APIS`` list resolve any of it (``keras.utils.get_file``,
``keras.models.load_model``, ``keras.config.enable_unsafe_deserialization``, ...)."""
IDENTIFIER_KEYS = ("activation", "initializer", "regularizer", "constraint", "loss", "losses", "metrics",
                   "optimizer", "function")
"""Config keys (or their ``_``-suffixes) whose string values Keras resolves by name."""
MAX_KERAS_CONFIG_BYTES = 64 * 1024 * 1024
MAX_KERAS_FINDINGS = 20
"""Findings reported per config (the rest are counted in one more line)."""
CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER = "config.json", "metadata.json", "model.weights.h5"


def parse_config(raw: bytes | str) -> object:
    """The config as nested lists and ``JsonObject``; ``ParseError`` when it is not JSON."""
    try:
        return read_json_pairs(raw)
    except ParseError as exc:
        raise ParseError(f"config is {exc.message}") from exc


def is_keras_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in KERAS_MODULES)


def config_findings(config: object) -> Iterator[tuple[str, str, str]]:
    """``(rule_id, message, trigger)`` for every piece of code or foreign module in the config."""
    stack: list[tuple[object, str]] = [(config, "$")]
    while stack:
        obj, path = stack.pop()
        if isinstance(obj, JsonObject):
            yield from _object_findings(obj, path)
            stack.extend((v, f"{path}.{k}") for k, v in reversed(obj))
        elif isinstance(obj, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(obj))))


def _object_findings(obj: JsonObject, path: str) -> Iterator[tuple[str, str, str]]:
    layer = obj.get("config")
    name = layer.get("name") if isinstance(layer, JsonObject) else None
    label = f"{path}" + (f" (layer {name!r})" if isinstance(name, str) else "")
    for key, value in obj:
        if key in ("class_name", "registered_name") and isinstance(value, str):
            short = _short_name(value)
            if short == "Lambda":
                yield "KERAS-01", f"Lambda layer at {label}: loading runs its Python function", value
            elif short in KERAS_GADGETS:
                yield "KERAS-01", f"{short} at {label}: {KERAS_GADGETS[short]}", value
            elif value == "function" and key == "class_name":
                yield from _function_reference_findings(obj, label)
            elif value == "__lambda__":
                yield "KERAS-01", f"serialized Python lambda (bytecode) at {label}", value
        elif key == "function_type" and value == "lambda":
            yield "KERAS-01", f"serialized Python function (function_type 'lambda') at {label}", "function_type"
        elif key == "function" and isinstance(value, list) and value and isinstance(value[0], str):
            yield "KERAS-01", f"serialized Python function (bytecode dump) at {label}", "function"
        elif _holds_identifiers(key) and (gadget := _gadget_named(value)):
            yield "KERAS-01", f"{key} {gadget!r} at {label}: {KERAS_GADGETS[_short_name(gadget)]}", gadget
        elif key == "module":
            if not isinstance(value, str):
                yield "KERAS-02", f"module at {label} is not a name ({type(value).__name__})", "module"
            elif not is_keras_module(value):
                what = obj.get("registered_name") or obj.get("class_name")
                yield "KERAS-02", (f"{label} names module {value!r} outside Keras"
                                   + (f" (class {what!r})" if isinstance(what, str) else "")
                                   + ": loading imports it"), value


def _function_reference_findings(obj: JsonObject, label: str) -> Iterator[tuple[str, str, str]]:
    """A ``"class_name": "function"`` object: Keras looks up the function named by ``config`` in
    ``module`` (each duplicate key counts). A Keras gadget, or a Keras function outside
    ``KERAS_FUNCTION_SECTIONS``, is code a loader resolves and calls; a foreign module is KERAS-02."""
    for name in obj.every("config"):
        if not isinstance(name, str):
            continue
        short = _short_name(name)
        if short in KERAS_GADGETS:
            if short not in {_short_name(r) for r in obj.every("registered_name") if isinstance(r, str)}:
                yield "KERAS-01", f"function {name!r} at {label}: {KERAS_GADGETS[short]}", name  # else found above
            continue
        for module in obj.every("module"):
            if isinstance(module, str) and is_keras_module(module) and _keras_section(module) not in \
                    KERAS_FUNCTION_SECTIONS:
                yield "KERAS-01", (f"function {module}.{name} at {label}: a Keras function outside its activations, "
                                   "losses, metrics, initializers and ops (loading resolves it among Keras's "
                                   "public API and calls it)"), f"{module}.{name}"


def _keras_section(module: str) -> str:
    """``keras.utils`` -> ``utils``; ``keras.src.losses.losses`` -> ``losses``; ``keras`` -> ``""``."""
    prefix = max((m for m in KERAS_MODULES if module == m or module.startswith(m + ".")), key=len)
    parts = module[len(prefix) + 1:].split(".")
    return parts[1] if parts[0] == "src" and len(parts) > 1 else parts[0]


def _short_name(value: str) -> str:
    """The name after a module path or a registration package: ``keras.utils>get_file`` -> ``get_file``."""
    return value.replace(">", ".").rsplit(".", 1)[-1]


def _holds_identifiers(key: str) -> bool:
    """A config key whose string value Keras looks up as a function or object name (``activation``,
    ``kernel_initializer``, ``loss``, ``metrics``, ...), unlike a layer's ``name`` or its
    ``keras_history``, which may spell anything."""
    return any(key == k or key.endswith("_" + k) for k in IDENTIFIER_KEYS)


def _gadget_named(value: object) -> str | None:
    """The string (``value`` or an item of it) that names a Keras gadget as an identifier a loader
    could look up (``"get_file"``, ``"keras.utils.get_file"``), or ``None``."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and _short_name(v) in KERAS_GADGETS and v.replace(">", "_").replace(".", "_").isidentifier():
            return v
    return None


def judge_config(fs: FileScan, raw: bytes | str, location: Location, what: str) -> None:
    try:
        config = parse_config(raw)
    except ParseError as exc:
        fs.add("KERAS-03", f"{what}: {exc.message}", location)
        return
    if not isinstance(config, JsonObject):
        fs.add("KERAS-03", f"{what}: the config is not a JSON object ({type(config).__name__}): it cannot be judged",
               location)
    findings = list(config_findings(config))
    for rule_id, message, trigger in findings[:MAX_KERAS_FINDINGS]:
        fs.add(rule_id, f"{what}: {message}", location, trigger)
    if len(findings) > MAX_KERAS_FINDINGS:
        rules = sorted({r for r, _, _ in findings[MAX_KERAS_FINDINGS:]})
        fs.add(rules[0], f"{what}: {len(findings) - MAX_KERAS_FINDINGS} more findings like these", location)


def is_keras_archive(view: ZipView, path: str) -> bool:
    """A Keras v3 archive: ``config.json`` at the top, with ``metadata.json`` or the weights, or a ``.keras`` name."""
    names = {m.name for m in view.members}
    return CONFIG_MEMBER in names and (METADATA_MEMBER in names or WEIGHTS_MEMBER in names
                                       or path.lower().endswith(".keras"))


def scan_keras_archive(fs: FileScan, view: ZipView, location: Location, *, rename: bool = True) -> bool:
    """Judge the config of a Keras v3 zip (its members are still scanned one by one); False if it is none.

    Also for a zip that looks like a PyTorch checkpoint too (``rename=False`` keeps that kind):
    Keras reads ``config.json`` whatever else the archive holds."""
    if not is_keras_archive(view, fs.path if not location.members else location.members[-1]):
        return False
    if rename and fs.kinds:
        fs.kinds[-1] = "keras"
    for m in view.members:
        if m.name != CONFIG_MEMBER:
            continue
        where = location.inside(m.name)
        try:
            span, _ = member_span(view, m, MAX_KERAS_CONFIG_BYTES)
            raw = span.tobytes(MAX_KERAS_CONFIG_BYTES)
        except LimitExceeded as exc:
            fs.add("KERAS-03", f"config.json is too large to read ({exc.message}; limit MAX_KERAS_CONFIG_BYTES)",
                   where, "MAX_KERAS_CONFIG_BYTES")
            continue
        except ParseError as exc:
            fs.add("KERAS-03", f"config.json cannot be read: {exc.message}", where)
            continue
        judge_config(fs, raw, where, "Keras config.json")
    return True
