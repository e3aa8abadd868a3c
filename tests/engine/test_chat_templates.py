"""Chat templates outside GGUF: tokenizer_config.json, chat_template.json and .jinja files."""
from __future__ import annotations

import json

import pytest

from tests.conftest import rule_ids

pytest.importorskip("jinja2")

BENIGN = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
ESCAPE = "{{ cycler.__init__.__globals__.os.popen('true').read() }}"


def _config(template) -> bytes:
    return json.dumps({"model_max_length": 512, "chat_template": template, "eos_token": "</s>"}).encode()


def test_a_benign_template_in_a_tokenizer_config_is_clean(scan_bytes):
    report = scan_bytes(_config(BENIGN), "tokenizer_config.json")
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_an_escaping_template_in_a_tokenizer_config_fails(scan_bytes):
    report = scan_bytes(_config(ESCAPE), "tokenizer_config.json")
    assert report.exit_code == 1 and rule_ids(report) == {"TPL-01"}


def test_any_json_name_is_checked(scan_bytes):
    assert rule_ids(scan_bytes(_config(ESCAPE), "chat_template.json")) == {"TPL-01"}
    assert rule_ids(scan_bytes(_config(ESCAPE), "anything")) == {"TPL-01"}


def test_named_templates_are_each_checked(scan_bytes):
    named = [{"name": "default", "template": BENIGN}, {"name": "tool_use", "template": ESCAPE}]
    report = scan_bytes(_config(named), "tokenizer_config.json")
    [finding] = report.findings
    assert finding.rule_id == "TPL-01" and "tool_use" in finding.message


def test_a_jinja_file_is_checked(scan_bytes):
    assert scan_bytes(BENIGN.encode(), "chat_template.jinja").exit_code == 0
    assert rule_ids(scan_bytes(ESCAPE.encode(), "chat_template.jinja")) == {"TPL-01"}


def test_a_template_jinja_cannot_parse_is_an_error(scan_bytes):
    report = scan_bytes(_config("{% for x in %}"), "tokenizer_config.json")
    assert report.exit_code == 2 and rule_ids(report) == {"TPL-02"}


def test_a_malformed_template_value_is_an_error(scan_bytes):
    assert rule_ids(scan_bytes(_config({"not": "a template"}), "tokenizer_config.json")) == {"TPL-02"}


def test_json_that_only_mentions_the_key_is_plain_text(scan_bytes):
    report = scan_bytes(b'{"notes": "set \\"chat_template\\" later"', "notes.json")
    assert report.exit_code == 0


def test_without_jinja2_a_template_is_unscanned(scan_bytes, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "jinja2", None)
    report = scan_bytes(_config(BENIGN), "tokenizer_config.json")
    assert report.exit_code == 2 and rule_ids(report) == {"TPL-02"}
