"""Red-team of identification, containers and the other model formats ("clean means proven").

Each ``test_bug_*`` is a file that once scanned clean while a real loader would run its payload;
the parametrized tests below them are attempts that were already caught and stay caught.
Payloads are harmless (``os.system("true")``), and nothing here loads them.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import tarfile
import zlib

import pytest

from tensorsafe.engine import chat_templates
from tensorsafe.engine.jinja_template import check_template
from tests.archives import tar_bytes, zip_bytes
from tests.conftest import rule_ids

PICKLE = b"cos\nsystem\n(S'true'\ntR."
INERT = b"\x80\x04K\x01."
ESCAPE = "{{ cycler.__init__.__globals__.os.popen('true').read() }}"


_zip = zip_bytes


def _tar(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members, format=tarfile.USTAR_FORMAT)


def _gstr(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def _gguf(kvs: list[tuple[bytes, int, bytes]]) -> bytes:
    body = b"".join(_gstr(k) + struct.pack("<I", t) + v for k, t, v in kvs)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + body


KERAS_LAMBDA = json.dumps({"class_name": "Lambda", "config": {"function": "f"}, "module": "evil"})


# -- holes found (each failed before its fix) ---------------------------------------------------------
def test_bug_zip_appended_after_a_tar_is_scanned(scan_bytes):
    """zipfile.is_zipfile() is true for a tar with a zip after its end blocks: Keras opens a .keras so."""
    data = _tar({"readme.txt": b"hello\n"}) + _zip({"config.json": KERAS_LAMBDA, "metadata.json": "{}"})
    report = scan_bytes(data, "model.keras")
    assert {"KERAS-01", "ZIP-05"} <= rule_ids(report) and report.exit_code == 1
    assert "PK-I01" in rule_ids(scan_bytes(_tar({"a.txt": b"a\n"}) + _zip({"data.pkl": PICKLE})))


def test_a_zip_kept_as_the_last_tar_member_is_not_a_polyglot(scan_bytes):
    report = scan_bytes(_tar({"a.zip": _zip({"x.txt": b"hi\n"})}), "bundle.tar")
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert "PK-I01" in rule_ids(scan_bytes(_tar({"a.zip": _zip({"data.pkl": PICKLE})})))


def test_bug_chat_template_key_spelled_with_json_escapes(scan_bytes):
    """``"chat\\u005ftemplate"`` is the key ``chat_template`` to every JSON reader."""
    data = ('{"chat\\u005ftemplate": %s}' % json.dumps(ESCAPE)).encode()
    assert rule_ids(scan_bytes(data, "tokenizer_config.json")) == {"TPL-01"}
    data = ('{"\\u0063hat_templat\\u0065": [{"name": "x", "template": %s}]}' % json.dumps(ESCAPE)).encode()
    assert rule_ids(scan_bytes(data, "tokenizer_config.json")) == {"TPL-01"}


@pytest.mark.parametrize("data", [
    '{"chat_template": %s, "chat_template": "hi"}' % json.dumps(ESCAPE),
    '{"chat_template": [{"name": "d", "template": %s, "template": "hi"}]}' % json.dumps(ESCAPE),
], ids=["top-level", "named"])
def test_bug_every_duplicate_chat_template_is_judged(scan_bytes, data):
    """json.loads keeps the last duplicate; readers that keep the first would render the other."""
    assert rule_ids(scan_bytes(data.encode(), "tokenizer_config.json")) == {"TPL-01"}


def test_bug_an_oversized_config_with_a_template_is_not_clean(scan_bytes, monkeypatch):
    monkeypatch.setattr(chat_templates, "MAX_TEMPLATE_CONFIG_BYTES", 64)
    data = json.dumps({"pad": "x" * 100, "chat_template": ESCAPE}).encode()
    report = scan_bytes(data, "tokenizer_config.json")
    assert rule_ids(report) == {"TPL-02"} and report.exit_code == 2
    assert scan_bytes(json.dumps({"pad": "x" * 100}).encode(), "tokenizer_config.json").exit_code == 0


@pytest.mark.parametrize("keys", [
    [b"tokenizer.chat_template\0x"],
    [b"tokenizer.chat_template", b"tokenizer.chat_template\0"],
    [b"tokenizer.chat_template.tool_use\0"],
], ids=["nul-suffix", "nul-duplicate", "named-nul"])
def test_bug_gguf_template_key_cut_at_a_nul(scan_bytes, keys):
    """llama.cpp finds keys with strcmp on the C string: the name ends at the NUL."""
    kvs = [(k, 8, _gstr("hi" if i < len(keys) - 1 else ESCAPE)) for i, k in enumerate(keys)]
    assert "GGUF-01" in rule_ids(scan_bytes(_gguf(kvs), "m.gguf"))


def test_bug_gguf_template_of_another_type_is_not_skipped(scan_bytes):
    array = struct.pack("<IQ", 8, 1) + _gstr(ESCAPE)
    report = scan_bytes(_gguf([(b"tokenizer.chat_template", 9, array)]), "m.gguf")
    assert rule_ids(report) == {"GGUF-02"} and report.exit_code == 2


@pytest.mark.parametrize("template", [
    "{% set d = {'k': '__init__'} %}{{ cycler[d.k] }}",
    "{% set ns = namespace(a='__init__') %}{{ cycler[ns.a] }}",
    "{% macro m(x) %}{{ cycler[x] }}{% endmacro %}{{ m('__init__') }}",
    "{% for k, v in {'__init__': 1}.items() %}{{ cycler[k] }}{% endfor %}",
    "{% for k, v in {'__init__': 1}|dictsort %}{{ cycler[k] }}{% endfor %}",
    "{% with a = '__init__' %}{{ cycler[a] }}{% endwith %}",
    "{% set a, b = '__init__', 1 %}{{ cycler[a] }}",
    "{{ cycler[['__init__'][0]] }}",
    "{{ cycler['__init__xx'[:8]] }}",
    "{{ cycler['x__init__x'.strip('x')] }}",
    "{% for i in [1] %}{{ cycler[loop.cycle('__init__', 'x')] }}{% endfor %}",
    "{% set a %}__init__{% endset %}{{ cycler[a] }}",
    "{% macro m() %}__init__{% endmacro %}{{ cycler[m()] }}",
    "{{ cycler|attr(*['__in' ~ 'it__']) }}",
    "{{ cycler|attr(**{'name': x}) }}",
    "{{ cycler|attr(name=x) }}",
    "{{ [cycler]|map('attr', '__init__')|list }}",
    "{{ [cycler]|map('attr', x)|list }}",
    "{{ [cycler]|map(f, '__in' ~ 'it__')|list }}",
    "{{ [cycler]|map(**{'attribute': x})|list }}",
], ids=lambda t: t[:40])
def test_bug_jinja_lookups_through_paths_no_folding_follows(template):
    assert check_template(template)


@pytest.mark.parametrize("template", [
    "{{ messages|map(attribute='content')|join('\\n') }}",
    "{{ messages|map('trim')|list }}",
    "{% macro render(m) %}{{ m['role'] }}: {{ m['content'] }}{% endmacro %}"
    "{% for m in messages %}{{ render(m) }}{% endfor %}",
    "{% set ns = namespace(text='') %}{% set ns.text = messages[0]['content'] %}{{ ns.text }}",
    "{% for key in tool['parameters'] %}{{ tool['parameters'][key] }}{% endfor %}",
], ids=lambda t: t[:40])
def test_ordinary_template_idioms_stay_clean(template):
    assert check_template(template) == []


def test_json_text_whose_first_bytes_look_like_a_length_is_text(scan_bytes):
    """Bytes 8.. of ``{"name": {}}`` start with ``{``: that is JSON, not a safetensors header."""
    report = scan_bytes(b'{"name": {}}', "config.json")
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert scan_bytes(b'{"name": {}}', "x.safetensors").exit_code == 2


# -- attempts that were already caught ------------------------------------------------------------------
def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b""))


EVIL_ZIP = _zip({"data.pkl": PICKLE})
CAUGHT = {
    "gzip-then-zip": (gzip.compress(INERT) + EVIL_ZIP, 2),
    "gzip-second-member": (gzip.compress(INERT) + gzip.compress(PICKLE), 1),
    "gzip-zeros-then-pickle": (gzip.compress(INERT) + b"\0" * 8 + PICKLE, 2),
    "bz2-then-pickle": (bz2.compress(INERT) + PICKLE, 2),
    "xz-then-pickle": (lzma.compress(INERT) + PICKLE, 2),
    "zlib-then-zip": (zlib.compress(INERT) + EVIL_ZIP, 2),
    "lzma-alone-then-zip": (lzma.compress(INERT, format=lzma.FORMAT_ALONE) + EVIL_ZIP, 2),
    "gzip-of-text-pickle": (gzip.compress(PICKLE), 1),
    "png-then-zip": (_png() + EVIL_ZIP, 1),
    "json-then-zip": (b'{"a": 1}\n' + EVIL_ZIP, 1),
    "jpeg-segment-holding-zip": (b"\xff\xd8\xff\xe0" + struct.pack(">H", 2 + len(EVIL_ZIP)) + EVIL_ZIP + b"\xff\xd9",
                                 1),
    "lfs-pointer-then-pickle": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64
                                + b"\nsize 12\n" + PICKLE, 2),
    "npz-member-that-is-a-pickle": (_zip({"arr.npy": PICKLE}), 1),
    "sentencepiece-field-then-pickle": (b"\n\x05hello" + PICKLE, 2),
}


@pytest.mark.parametrize("name", sorted(CAUGHT))
def test_container_tricks_are_caught(scan_bytes, name):
    data, code = CAUGHT[name]
    report = scan_bytes(data, "sample.bin")
    assert report.exit_code == code, [str(f) for f in report.findings]


def test_a_pickle_named_onnx_is_judged_as_a_pickle(scan_bytes):
    assert "PK-I01" in rule_ids(scan_bytes(PICKLE, "model.onnx"))
