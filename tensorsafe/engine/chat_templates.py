"""Chat templates: Jinja that loaders render, wherever a model ships one.

GGUF files keep them under ``tokenizer.chat_template*``; transformers reads them from
``tokenizer_config.json`` (``"chat_template"``: a string, or a list of ``{"name", "template"}``),
``chat_template.json`` and ``chat_template.jinja``. Every one is parsed with jinja2's own parser and
its syntax tree checked (:mod:`tensorsafe.engine.jinja_template`): a template that reaches
Python internals fails; one that cannot be parsed or read cannot be judged (an error).
"""
from __future__ import annotations

import re
from pathlib import PurePath
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.readers.json_pairs import JsonObject, read_json_pairs
from tensorsafe.errors import ParseError
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

MAX_CHAT_TEMPLATE_BYTES = 4 * 1024 * 1024
MAX_TEMPLATE_CONFIG_BYTES = 64 * 1024 * 1024
"""The largest JSON file read for its chat templates (tokenizer configs are kilobytes)."""
TEMPLATE_KEY = re.compile(b'"%s"' % b"".join(rb"(?:%s|\\u00(?i:%02x))" % (bytes([c]), c) for c in b"chat_template"))
"""The key as JSON may spell it: each character itself or a ``\\u`` escape (``"chat\\u005ftemplate"``)."""
MAX_KEY_BYTES = 2 + 6 * len("chat_template")
JINJA_SUFFIXES = frozenset({".jinja", ".jinja2", ".j2"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
"""Training and serving configs (axolotl, LLaMA-Factory, model cards' configs) carry chat templates in YAML."""
YAML_TEMPLATE_KEY = re.compile(rb"chat_template\w*")
MAX_YAML_NODES = 1_000_000


def judge_chat_templates(fs: "FileScan", templates: list[tuple[str, bytes | str]], location: Location,
                         fail_rule: str, error_rule: str, where: str) -> None:
    """``fail_rule`` for each template that reaches Python internals, ``error_rule`` for each that
    cannot be judged (too large, not UTF-8, not Jinja, or jinja2 missing)."""
    try:
        from tensorsafe.engine.jinja_template import TemplateSyntaxProblem, check_template
        import jinja2  # noqa: F401  (the parser the check walks)
    except ImportError:
        fs.add(error_rule, f"the {where} holds a chat template, but jinja2 is not installed to judge it "
               "(install jinja2, or the `formats` extra): unscanned", location, "jinja2")
        return
    for key, raw in templates:
        size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
        if size > MAX_CHAT_TEMPLATE_BYTES:
            fs.add(error_rule, f"chat template {key!r} is {size:,} bytes, more than the {MAX_CHAT_TEMPLATE_BYTES:,} "
                   "judged (limit MAX_CHAT_TEMPLATE_BYTES)", location, key)
            continue
        try:
            text = raw if isinstance(raw, str) else raw.decode("utf-8")
            hits = check_template(text)
        except UnicodeDecodeError as exc:
            fs.add(error_rule, f"chat template {key!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}): "
                   "loaders that drop bad bytes would read another template", location, key)
            continue
        except TemplateSyntaxProblem as exc:
            fs.add(error_rule, f"chat template {key!r} is not valid Jinja ({exc}): it cannot be judged",
                   location, key)
            continue
        if hits:
            shown = "; ".join(f"{h.chain} ({h.reason})" for h in hits[:3])
            more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
            fs.add(fail_rule, f"chat template {key!r} reaches Python internals: {shown}{more}", location, key)


def scan_text_templates(fs: "FileScan", span: Span, location: Location) -> None:
    """A text file that carries chat templates: a ``.jinja`` file, or JSON with a ``chat_template`` key."""
    name = location.members[-1] if location.members else fs.path
    if ".j" in name.lower() and PurePath(name).suffix.lower() in JINJA_SUFFIXES:  # ".j": no Path per text file
        judge_chat_templates(fs, [(PurePath(name).name, span.read(0, span.size))], location,
                             "TPL-01", "TPL-02", "template file")
        return
    if PurePath(name).suffix.lower() in YAML_SUFFIXES:
        _scan_yaml_templates(fs, span, location)
        return
    if not _mentions_templates(span):
        return
    if span.size > MAX_TEMPLATE_CONFIG_BYTES:
        fs.add("TPL-02", f"{span.size:,} bytes of text that may hold a `chat_template`: more than the "
               f"{MAX_TEMPLATE_CONFIG_BYTES:,} read for templates (limit MAX_TEMPLATE_CONFIG_BYTES)", location,
               "chat_template")
        return
    try:
        config = read_json_pairs(span.read(0, span.size).decode("utf-8-sig"))
    except (ParseError, UnicodeDecodeError):
        return  # text that only mentions the key; transformers would not read a template from it
    values = config.every("chat_template") if isinstance(config, JsonObject) else []
    templates: list[tuple[str, bytes | str]] = []
    for value in values:  # every duplicate: JSON readers disagree on which one wins
        found = _templates_of(value)
        if found is None:
            fs.add("TPL-02", "`chat_template` is neither a string nor a list of {name, template} objects: "
                   "it cannot be judged", location, "chat_template")
            return
        templates += found
    judge_chat_templates(fs, templates, location, "TPL-01", "TPL-02", "JSON file")


def _mentions_templates(span: Span) -> bool:
    step = 1 << 20
    return any(TEMPLATE_KEY.search(span.read(pos, step + MAX_KEY_BYTES)) for pos in range(0, span.size, step))


def _templates_of(value: object) -> list[tuple[str, str]] | None:
    """The templates a loader reads from one ``chat_template`` value ([] when none), None when malformed."""
    if value is None:
        return []
    if isinstance(value, str):
        return [("chat_template", value)]
    if isinstance(value, list) and all(isinstance(v, JsonObject) and v.every("template") for v in value):
        out = []
        for i, v in enumerate(value):
            every = v.every("template")
            if not all(isinstance(t, str) for t in every):
                return None
            out += [(f"chat_template[{v.get('name', i)!s}]", t) for t in every]
        return out
    return None


def _scan_yaml_templates(fs: "FileScan", span: Span, location: Location) -> None:
    """Every string under a ``chat_template*`` key of a YAML file (``chat_template``,
    ``chat_template_jinja``, at any depth). PyYAML (a huggingface_hub dependency) loads only for a
    YAML file that mentions such a key; ``safe_load_all`` builds plain values, never objects."""
    if span.size > MAX_TEMPLATE_CONFIG_BYTES or not YAML_TEMPLATE_KEY.search(span.read(0, span.size)):
        return
    import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs

    try:
        documents = list(yaml.load_all(span.read(0, span.size), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except (yaml.YAMLError, RecursionError, ValueError):
        return  # not YAML that a config reader would load
    templates: list[tuple[str, bytes | str]] = []
    stack: list[tuple[object, str, bool]] = [(doc, "$", False) for doc in documents]
    seen: set[int] = set()
    while stack and len(seen) < MAX_YAML_NODES:
        value, path, under_key = stack.pop()
        if isinstance(value, str):
            if under_key:
                templates.append((path, value))
            continue
        if id(value) in seen or not isinstance(value, dict | list):
            continue
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            key_hit = isinstance(k, str) and YAML_TEMPLATE_KEY.fullmatch(k.encode("utf-8", "replace")) is not None
            stack.append((v, f"{path}.{k}", under_key or key_hit))
    if stack:
        fs.add("TPL-02", f"YAML file has more than {MAX_YAML_NODES:,} values: its chat templates were not all "
               "judged (limit MAX_YAML_NODES)", location, "chat_template")
    judge_chat_templates(fs, templates, location, "TPL-01", "TPL-02", "YAML file")
