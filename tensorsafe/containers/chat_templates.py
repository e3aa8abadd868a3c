"""Chat templates: Jinja that loaders render, wherever a model ships one.

GGUF files keep them under ``tokenizer.chat_template*``; transformers reads them from
``tokenizer_config.json`` (``"chat_template"``: a string, or a list of ``{"name", "template"}``),
``chat_template.json`` and ``chat_template.jinja``. Every one is parsed with jinja2's own parser and
its syntax tree checked (:mod:`tensorsafe.containers.jinja_template`): a template that reaches
Python internals fails; one that cannot be parsed or read cannot be judged (an error).
"""
from __future__ import annotations

import json
from pathlib import PurePath
from typing import TYPE_CHECKING

from tensorsafe.blob import Span
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.scanner import FileScan

MAX_CHAT_TEMPLATE_BYTES = 4 * 1024 * 1024
MAX_TEMPLATE_CONFIG_BYTES = 64 * 1024 * 1024
"""The largest JSON file read for its chat templates (tokenizer configs are kilobytes)."""
TEMPLATE_KEY = b'"chat_template"'
JINJA_SUFFIXES = frozenset({".jinja", ".jinja2", ".j2"})


def judge_chat_templates(fs: "FileScan", templates: list[tuple[str, bytes | str]], location: Location,
                         fail_rule: str, error_rule: str, where: str) -> None:
    """``fail_rule`` for each template that reaches Python internals, ``error_rule`` for each that
    cannot be judged (too large, not UTF-8, not Jinja, or jinja2 missing)."""
    try:
        from tensorsafe.containers.jinja_template import TemplateSyntaxProblem, check_template
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
    if PurePath(name).suffix.lower() in JINJA_SUFFIXES:
        judge_chat_templates(fs, [(PurePath(name).name, span.read(0, span.size))], location,
                             "TPL-01", "TPL-02", "template file")
        return
    if span.size > MAX_TEMPLATE_CONFIG_BYTES or not _mentions_templates(span):
        return
    try:
        config = json.loads(span.read(0, span.size).decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return  # text that only mentions the key; transformers would not read a template from it
    templates = _templates_of(config)
    if templates is None:
        fs.add("TPL-02", "`chat_template` is neither a string nor a list of {name, template} objects: "
               "it cannot be judged", location, "chat_template")
        return
    judge_chat_templates(fs, templates, location, "TPL-01", "TPL-02", "JSON file")


def _mentions_templates(span: Span) -> bool:
    step = 1 << 20
    return any(TEMPLATE_KEY in span.read(pos, step + len(TEMPLATE_KEY)) for pos in range(0, span.size, step))


def _templates_of(config: object) -> list[tuple[str, str]] | None:
    """The templates a loader reads from a parsed config ([] when it holds none), None when malformed."""
    if not isinstance(config, dict) or "chat_template" not in config:
        return []
    value = config["chat_template"]
    if value is None:
        return []
    if isinstance(value, str):
        return [("chat_template", value)]
    if isinstance(value, list) and all(isinstance(v, dict) and isinstance(v.get("template"), str) for v in value):
        return [(f"chat_template[{v.get('name', i)!s}]", v["template"]) for i, v in enumerate(value)]
    return None
