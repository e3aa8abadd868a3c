"""Other model formats that can carry code: GGUF chat templates, Keras configs, HDF5, ONNX."""
from __future__ import annotations

import io
import json
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.engine import gguf as gguf_mod
from tensorsafe.engine import keras_model
from tensorsafe.engine.onnx_model import escaping_location
from tensorsafe.errors import ParseError
from tests.conftest import rule_ids

h5py = pytest.importorskip("h5py")
onnx = pytest.importorskip("onnx")
pytest.importorskip("jinja2")
from onnx import TensorProto, helper  # noqa: E402  (after the importorskip)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _scan(path: Path):
    report = tensorsafe.scan(path)
    assert "ARC-05" not in rule_ids(report), report.findings
    return report


# -- GGUF ------------------------------------------------------------------------------------------
def _gstr(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def _kv_string(key: str, value: bytes | str) -> bytes:
    return _gstr(key) + struct.pack("<I", 8) + _gstr(value)


def _gguf(kvs: list[bytes] = (), tensors: int = 0, version: int = 3, tail: bytes = b"") -> bytes:
    """A GGUF file: header, the given encoded key/values, ``tensors`` 1-d float32 tensors, data
    (each tensor's 16 bytes padded to the default alignment, 32, as llama.cpp lays them out)."""
    body = b"".join(kvs)
    infos = b"".join(_gstr(f"t{i}") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<I", 0)
                     + struct.pack("<Q", 32 * i) for i in range(tensors))
    head = b"GGUF" + struct.pack("<IQQ", version, tensors, len(kvs)) + body + infos
    head += b"\0" * ((-len(head)) % 32)
    return head + b"\0" * (32 * tensors) + tail


def _template(source: bytes | str, key: str = "tokenizer.chat_template") -> bytes:
    arch = _kv_string("general.architecture", "llama")
    tokens = _gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(_gstr(t) for t in "abc")
    return _gguf([arch, tokens, _kv_string(key, source)], tensors=2)


LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
          "{% endif %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
TOOLS = ("{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
         "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
         "{%- for tool in tools %}{{ tool.function.name }}{{ tool.function.parameters | tojson }}"
         "{%- for k in tool.function.parameters.properties %}{{ tool.function.parameters.properties[k] }}"
         "{% endfor %}{% endfor %}{%- for m in loop_messages | selectattr('role', 'equalto', 'user') %}"
         "{{ m.content }}{% endfor %}{{ messages | map(attribute='content') | join('\\n') }}"
         "{% set ns = namespace(found=false) %}{% set ns.found = true %}")


@pytest.mark.parametrize("source", [LLAMA3, CHATML, MISTRAL, TOOLS], ids=["llama3", "chatml", "mistral", "tools"])
def test_benign_chat_templates_are_clean(tmp_path, source):
    path = tmp_path / "m.gguf"
    path.write_bytes(_template(source))
    report = _scan(path)
    assert report.clean, report.findings
    assert report.files[0].kind == "gguf"


def test_gguf_written_by_the_gguf_package_is_read(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.chat_template", CHATML)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.5, 1.5])
    w.add_uint32("general.alignment", 64)
    w.add_tensor("t", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    report = _scan(path)
    assert report.clean and report.files[0].kind == "gguf"
    path.write_bytes(path.read_bytes().replace(b"message['role']", b"m.__globals__.x"))
    assert "GGUF-01" in rule_ids(_scan(path))


SSTI = {  # each entry is caught by one check alone (names at sinks, or strings built from constants)
    "getattr-chain": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals-os-popen": "{{ cycler.__init__.__globals__.os.popen('true').read() }}",
    "os-attribute": "{{ namespace.os }}",
    "private-attr": "{{ self._TemplateReference__context }}",
    "getitem-constant": "{{ lipsum['__globals__'] }}",
    "getitem-unfoldable-key": "{{ x[(lipsum|string)[1] ~ 'x'] }}",
    "attr-filter": "{{ request|attr('__class__') }}",
    "attr-filter-dynamic": "{{ request|attr(name) }}",
    "map-attribute-dotted": "{{ messages|map(attribute='role.__class__')|list }}",
    "selectattr-positional": "{{ messages|selectattr('__class__')|list }}",
    "keyword-name": "{{ foo(dict(__class__=1)|list|first) }}",
    "bare-name": "{{ __builtins__ }}",
    "built-concat": "{{ foo('__cla' ~ 'ss__') }}",
    "built-add": "{{ foo('__glo' + 'bals__') }}",
    "built-multiply": "{{ foo('_' * 2 ~ 'class' ~ '_' * 2) }}",
    "built-percent": "{{ foo('%sclass%s' % ('__', '__')) }}",
    "built-format-filter": "{{ foo('%c%cclass%c%c'|format(95, 95, 95, 95)) }}",
    "built-join-filter": "{{ foo(['__cl', 'ass__']|join) }}",
    "built-replace-filter": "{{ foo('XXclassXX'|replace('X', '_')) }}",
    "built-format-method": "{{ foo('{0}{0}class{0}{0}'.format('_')) }}",
    "built-from-variables": "{% set a = '__cla' %}{% set b = a ~ 'ss__' %}{{ foo(b) }}",
    "built-internal-name": "{{ foo('po' ~ 'pen') }}",
}


@pytest.mark.parametrize("payload", list(SSTI.values()), ids=list(SSTI))
def test_template_reaching_python_internals_fails(tmp_path, payload):
    path = tmp_path / "m.gguf"
    path.write_bytes(_template(MISTRAL[:-len("{% endfor %}")] + payload + "{% endfor %}"))
    report = _scan(path)
    assert "GGUF-01" in rule_ids(report), (payload, report.findings)
    assert report.exit_code == 1


def test_named_template_and_duplicate_keys_are_all_judged(tmp_path):
    evil = _kv_string("tokenizer.chat_template.tool_use", "{{ cycler.__init__ }}")
    path = tmp_path / "named.gguf"
    path.write_bytes(_gguf([_kv_string("tokenizer.chat_template", CHATML), evil]))
    finding = next(f for f in _scan(path).findings if f.rule_id == "GGUF-01")
    assert "tool_use" in finding.message and "cycler.__init__" in finding.message
    dup = _gguf([_kv_string("tokenizer.chat_template", CHATML),
                 _kv_string("tokenizer.chat_template", "{{ x.__class__ }}")])
    path.write_bytes(dup)
    assert "GGUF-01" in rule_ids(_scan(path))


@pytest.mark.parametrize("source", [b"{% for m in messages %}{{ m", b"{{ '__cla\xffss__' }}"], ids=["syntax", "utf8"])
def test_template_that_cannot_be_judged_is_an_error(tmp_path, source):
    path = tmp_path / "m.gguf"
    path.write_bytes(_template(source))
    report = _scan(path)
    assert "GGUF-02" in rule_ids(report) and report.exit_code == 2


def _kv_raw(key: str, vtype: int, payload: bytes) -> bytes:
    return _gstr(key) + struct.pack("<I", vtype) + payload


MALFORMED_GGUF = {
    "version-1": _gguf(version=1),
    "big-endian": b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
    "truncated-header": b"GGUF\x03\x00\x00",
    "metadata-count-over-cap": b"GGUF" + struct.pack("<IQQ", 3, 0, gguf_mod.MAX_GGUF_METADATA_ENTRIES + 1),
    "tensor-count-over-cap": b"GGUF" + struct.pack("<IQQ", 3, gguf_mod.MAX_GGUF_TENSORS + 1, 0),
    "metadata-count-lies": b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + _kv_string("a", "b"),
    "string-length-past-end": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + b"key",
    "unknown-value-type": _gguf([_kv_raw("k", 13, b"\0" * 8)]),
    "unknown-array-type": _gguf([_kv_raw("k", 9, struct.pack("<IQ", 42, 1))]),
    "array-count-past-end": _gguf([_kv_raw("k", 9, struct.pack("<IQ", 0, 2**40))]),
    "string-array-count-past-end": _gguf([_kv_raw("k", 9, struct.pack("<IQ", 8, 2**40))]),
    "arrays-nested-too-deep": _gguf([_kv_raw("k", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 0, 0))]),
    "alignment-not-power-of-two": _gguf([_kv_raw("general.alignment", 4, struct.pack("<I", 3))]),
    "key-not-utf8": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gstr(b"\xff") + struct.pack("<I", 4) + b"\0" * 4,
    "too-many-dimensions": b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _gstr("t") + struct.pack("<I", 5)
    + b"\0" * 64,
    "tensor-offset-past-end": b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _gstr("t") + struct.pack("<IQIQ", 1, 4, 0, 2**40),
}


@pytest.mark.parametrize("data", list(MALFORMED_GGUF.values()), ids=list(MALFORMED_GGUF))
def test_malformed_gguf_is_an_error(tmp_path, data):
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    report = _scan(path)
    assert "GGUF-02" in rule_ids(report) and not report.clean, report.findings


def test_array_item_cap_is_enforced(monkeypatch):
    monkeypatch.setattr(gguf_mod, "MAX_GGUF_ARRAY_ITEMS", 10)
    data = _gguf([_kv_raw("k", 9, struct.pack("<IQ", 0, 11) + b"\0" * 11)])
    with pytest.raises(ParseError, match="MAX_GGUF_ARRAY_ITEMS"):
        gguf_mod.parse_gguf(tensorsafe.readers.blob.Span.of_bytes(data))


def test_string_byte_cap_is_enforced(monkeypatch):
    monkeypatch.setattr(gguf_mod, "MAX_GGUF_STRING_BYTES", 10)
    with pytest.raises(ParseError, match="MAX_GGUF_STRING_BYTES"):
        gguf_mod.parse_gguf(tensorsafe.readers.blob.Span.of_bytes(_gguf([_kv_string("k", "x" * 20)])))


def test_oversized_template_is_not_judged(tmp_path, monkeypatch):
    import tensorsafe.engine.chat_templates as chat_templates

    monkeypatch.setattr(chat_templates, "MAX_CHAT_TEMPLATE_BYTES", 100)
    path = tmp_path / "m.gguf"
    path.write_bytes(_template(CHATML + " " * 100))
    assert "GGUF-02" in rule_ids(_scan(path))


def test_long_metadata_looks_at_the_deadline():
    many = _kv_raw("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 70_000) + _gstr("") * 70_000)
    with pytest.raises(gguf_mod.DeadlinePassed):
        gguf_mod.parse_gguf(tensorsafe.readers.blob.Span.of_bytes(_gguf([many])), lambda: False)


def test_gguf_template_without_jinja2_is_unscanned(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    path = tmp_path / "m.gguf"
    path.write_bytes(_template(CHATML))
    report = _scan(path)
    assert "GGUF-02" in rule_ids(report) and report.exit_code == 2
    assert "jinja2" in next(f.message for f in report.findings if f.rule_id == "GGUF-02")


_VALID_GGUF = _template(LLAMA3)


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_after_the_gguf_magic_never_crash(tmp_path, tail):
    _check_gguf_property(tmp_path, b"GGUF" + tail)


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, len(_VALID_GGUF) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(4, len(_VALID_GGUF)))
def test_mutated_gguf_never_crashes(tmp_path, edits, cut):
    data = bytearray(_VALID_GGUF)
    for pos, value in edits:
        data[pos] = value
    _check_gguf_property(tmp_path, bytes(data[:cut]))


def _check_gguf_property(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(data)
    report = _scan(path)
    try:
        gguf_mod.parse_gguf(tensorsafe.readers.blob.Span.of_bytes(data))
        parsed = True
    except ParseError:
        parsed = False
    if data.startswith(b"GGUF") and not parsed:
        assert "GGUF-02" in rule_ids(report) and not report.clean


# -- Keras v3 (.keras zips) -------------------------------------------------------------------------
def _layer(class_name: str, module: str = "keras.layers", **config) -> dict:
    return {"module": module, "class_name": class_name, "config": {"name": class_name.lower(), **config},
            "registered_name": None}


def _keras_config(*layers: dict) -> dict:
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "seq", "trainable": True,
                       "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}},
                       "layers": list(layers)},
            "compile_config": {"optimizer": {"module": "keras.optimizers", "class_name": "Adam", "config": {}}}}


BENIGN_LAYERS = (_layer("InputLayer", batch_shape=[None, 4]),
                 _layer("Dense", units=2, kernel_initializer={"module": "keras.initializers",
                                                              "class_name": "GlorotUniform", "config": {}}),
                 _layer("Activation", module="tf_keras.layers", activation="relu"))


def _keras_zip(path: Path, config: dict | str | bytes, *, weights: bool = True, metadata: bool = True) -> Path:
    raw = config if isinstance(config, (str, bytes)) else json.dumps(config)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", raw)
        if metadata:
            z.writestr("metadata.json", json.dumps({"keras_version": "3.5.0", "date_saved": "2024-01-01"}))
        if weights:
            buf = io.BytesIO()
            with h5py.File(buf, "w") as f:
                f.create_group("layers").create_dataset("vars", data=np.zeros((2, 2), np.float32))
            z.writestr("model.weights.h5", buf.getvalue())
    return path


def test_benign_keras_archive_is_clean(tmp_path):
    report = _scan(_keras_zip(tmp_path / "m.keras", _keras_config(*BENIGN_LAYERS)))
    assert report.clean, report.findings
    assert report.files[0].kind == "keras"


KERAS_CODE = {
    "lambda-layer": _layer("Lambda"),
    "lambda-registered-name": {"class_name": "MyLambda", "registered_name": "custom>Lambda", "config": {}},
    "serialized-lambda": _layer("Activation", activation={"class_name": "__lambda__",
                                                          "config": {"code": "4wEAAAAA", "defaults": None}}),
    "function-type-lambda": {"class_name": "Wrapper", "config": {"function_type": "lambda"}},
    "function-bytecode-dump": {"class_name": "Wrapper", "config": {"function": ["4wEAAAAA", None, None]}},
}


@pytest.mark.parametrize("layer", list(KERAS_CODE.values()), ids=list(KERAS_CODE))
def test_keras_code_is_a_failure(tmp_path, layer):
    report = _scan(_keras_zip(tmp_path / "m.keras", _keras_config(*BENIGN_LAYERS, layer)))
    assert "KERAS-01" in rule_ids(report) and report.exit_code == 1, report.findings


@pytest.mark.parametrize("module", ["evil", "kerasevil.layers", "tensorflow.python.ops", "builtins", "os"])
def test_module_outside_keras_is_a_failure(tmp_path, module):
    report = _scan(_keras_zip(tmp_path / "m.keras", _keras_config(*BENIGN_LAYERS, _layer("Dense", module=module))))
    assert rule_ids(report) & {"KERAS-01", "KERAS-02"} == {"KERAS-02"}, report.findings


def test_duplicate_module_key_is_judged_whichever_wins(tmp_path):
    raw = json.dumps(_keras_config(*BENIGN_LAYERS)).replace('"module": "keras.layers"',
                                                            '"module": "evil", "module": "keras.layers"', 1)
    assert "KERAS-02" in rule_ids(_scan(_keras_zip(tmp_path / "m.keras", raw)))


@pytest.mark.parametrize("raw", [b"{not json", b"[" * 100_000, b"\xff\xfe\x00"], ids=["syntax", "deep", "encoding"])
def test_malformed_keras_config_is_an_error(tmp_path, raw):
    report = _scan(_keras_zip(tmp_path / "m.keras", raw))
    assert "KERAS-03" in rule_ids(report) and not report.clean


def test_oversized_keras_config_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(keras_model, "MAX_KERAS_CONFIG_BYTES", 100)
    report = _scan(_keras_zip(tmp_path / "m.keras", _keras_config(*BENIGN_LAYERS)))
    assert "KERAS-03" in rule_ids(report)


def test_keras_archive_that_also_looks_like_a_torch_zip_is_judged(tmp_path):
    path = _keras_zip(tmp_path / "m.keras", _keras_config(_layer("Lambda")))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("assets/data.pkl", b"\x80\x02}q\x00.")
    assert "KERAS-01" in rule_ids(_scan(path))


def test_keras_archive_is_recognised_by_name_without_metadata(tmp_path):
    path = _keras_zip(tmp_path / "m.keras", _keras_config(_layer("Lambda")), weights=False, metadata=False)
    assert "KERAS-01" in rule_ids(_scan(path))


# -- legacy HDF5 Keras --------------------------------------------------------------------------------
def _h5(path: Path, userblock: int = 0, **attrs) -> Path:
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f.create_dataset("w", data=np.arange(6, dtype=np.float32))
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def test_plain_hdf5_is_data(tmp_path):
    report = _scan(_h5(tmp_path / "w.h5"))
    assert report.clean and report.files[0].kind == "hdf5", report.findings


def test_legacy_keras_h5_lambda_and_foreign_module(tmp_path):
    legacy = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"units": 2}},
        {"class_name": "Lambda", "config": {"function": ["4wEAAAAA", None, None], "function_type": "lambda"}}]}}
    report = _scan(_h5(tmp_path / "m.h5", model_config=json.dumps(legacy), keras_version="2.12.0"))
    assert "KERAS-01" in rule_ids(report) and report.files[0].kind == "keras-hdf5"
    benign = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": 2}}]}}
    report = _scan(_h5(tmp_path / "ok.h5", model_config=json.dumps(benign).encode()))
    assert report.clean, report.findings
    training = {"loss": {"module": "evil", "class_name": "Loss", "config": {}}}
    report = _scan(_h5(tmp_path / "t.h5", model_config=json.dumps(benign), training_config=json.dumps(training)))
    assert "KERAS-02" in rule_ids(report)


def test_hdf5_after_a_user_block_is_found_and_the_block_is_walked(tmp_path):
    path = _h5(tmp_path / "ub.h5", userblock=512)
    report = _scan(path)
    assert report.clean and report.files[0].kind == "hdf5", report.findings
    data = bytearray(path.read_bytes())
    payload = b"cos\nsystem\n(S'true'\ntR."  # protocol 0: no magic; harmless and never run
    data[:len(payload)] = payload
    path.write_bytes(bytes(data))
    assert "PK-I01" in rule_ids(_scan(path))


@pytest.mark.parametrize("model_config", ["{broken", b"\xff\x01", "[1, 2]"], ids=["json", "bytes", "not-object"])
def test_unreadable_model_config_is_an_error(tmp_path, model_config):
    report = _scan(_h5(tmp_path / "m.h5", model_config=model_config))
    assert "KERAS-03" in rule_ids(report) and not report.clean


def test_non_string_model_config_is_an_error(tmp_path):
    assert "KERAS-03" in rule_ids(_scan(_h5(tmp_path / "m.h5", model_config=np.arange(3))))


def test_corrupt_hdf5_is_an_error(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x07" * 200)
    report = _scan(path)
    assert "KERAS-03" in rule_ids(report) and not report.clean


def test_hdf5_without_h5py_is_unscanned(tmp_path, monkeypatch):
    plain, archive = _h5(tmp_path / "w.h5"), _keras_zip(tmp_path / "m.keras", _keras_config(*BENIGN_LAYERS))
    monkeypatch.setitem(sys.modules, "h5py", None)
    report = _scan(plain)
    assert "KERAS-03" in rule_ids(report) and report.exit_code == 2
    keras = _scan(archive)
    assert "KERAS-03" in rule_ids(keras), "the weights member must not pass unscanned"


# -- ONNX -----------------------------------------------------------------------------------------------
def _onnx(location: str | None = None, *, where: str = "initializer", domain: str = "",
          functions: list | None = None) -> bytes:
    def ext(name: str):
        t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
        if location is not None:
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            t.external_data.add(key="location", value=location)
        return t

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    nodes, inits = [], []
    if where == "initializer":
        inits.append(ext("w"))
        nodes.append(helper.make_node("Add", ["x", "w"], ["y"]))
    elif where == "attribute":
        nodes += [helper.make_node("Constant", [], ["w"], value=ext("c")), helper.make_node("Add", ["x", "w"], ["y"])]
    elif where == "subgraph":
        branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "b", [], [y], [ext("w")])
        nodes.append(helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch))
    if domain:
        nodes.append(helper.make_node("Custom", ["y"], ["z"], domain=domain))
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, functions=functions or []).SerializeToString()


def test_plain_onnx_is_identified_and_clean(tmp_path):
    for name in ("m.onnx", "model.bin"):
        path = tmp_path / name
        path.write_bytes(_onnx())
        report = _scan(path)
        assert report.clean and report.files[0].kind == "onnx", report.findings
    path = tmp_path / "local.onnx"
    path.write_bytes(_onnx("weights/w.bin"))
    assert _scan(path).clean


ESCAPES = ["../w.bin", "a/../../w.bin", "/etc/passwd", "C:\\w.bin", "c:w.bin", "..\\..\\w.bin",
           "\\\\server\\share\\w.bin", "*/_ORT_MEM_ADDR_/*", "", "w.bin:stream", "."]


@pytest.mark.parametrize("location", ESCAPES)
def test_external_data_leaving_the_folder_fails(tmp_path, location):
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx(location))
    report = _scan(path)
    assert "ONNX-01" in rule_ids(report) and report.exit_code == 1, report.findings


@pytest.mark.parametrize("location", ["w.bin", "sub/w.bin", "a/../w.bin", "./w.bin", "sub\\w.bin"])
def test_external_data_inside_the_folder_passes(location):
    assert escaping_location(location) is None


@pytest.mark.parametrize("where", ["attribute", "subgraph"])
def test_external_data_is_found_everywhere(tmp_path, where):
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx("../../secret", where=where))
    assert "ONNX-01" in rule_ids(_scan(path))


def test_external_data_in_a_sparse_initializer(tmp_path):
    model = onnx.ModelProto()
    model.ParseFromString(_onnx())
    values = helper.make_tensor("sv", TensorProto.FLOAT, [1], [1.0])
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value="/abs/path")
    indices = helper.make_tensor("si", TensorProto.INT64, [1], [0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2]))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert "ONNX-01" in rule_ids(_scan(path))


def test_custom_domain_is_an_advisory(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx(domain="my.ops"))
    report = _scan(path)
    assert "ONNX-02" in rule_ids(report) and report.clean
    path.write_bytes(_onnx(domain="com.microsoft"))
    assert "ONNX-02" not in rule_ids(_scan(path))
    local = helper.make_function("my.ops", "Custom", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])],
                                 [helper.make_opsetid("", 17)])
    path.write_bytes(_onnx(domain="my.ops", functions=[local]))
    assert "ONNX-02" not in rule_ids(_scan(path))


def test_empty_onnx_is_left_to_identification(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    report = _scan(path)
    assert not report.clean and "ONNX-03" not in rule_ids(report)


def test_unparseable_onnx_is_an_error(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07" + b"\xff" * 40)
    report = _scan(path)
    assert "ONNX-03" in rule_ids(report) and not report.clean


def test_onnx_without_the_package_is_unscanned(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx())
    report = _scan(path)
    assert "ONNX-03" in rule_ids(report) and report.exit_code == 2
    other = tmp_path / "m.bin"
    other.write_bytes(_onnx("../x"))
    assert not _scan(other).clean


# -- properties: random Keras configs ------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                    | st.sampled_from(["Lambda", "__lambda__", "keras.layers", "evil", "lambda"]),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["class_name", "module", "config", "function",
                                                       "function_type", "registered_name", "name", "x"]),
                                      inner, max_size=5), max_leaves=25)


@PROPERTY
@given(JSON)
def test_random_keras_configs_never_crash(config):
    with tempfile.TemporaryDirectory() as tmp:
        report = _scan(_keras_zip(Path(tmp) / "m.keras", json.dumps(config), weights=False))
    expected = {r for r, _, _ in keras_model.config_findings(keras_model.parse_config(json.dumps(config)))}
    if not isinstance(config, dict):
        expected.add("KERAS-03")
    assert rule_ids(report) & {"KERAS-01", "KERAS-02", "KERAS-03"} == expected
    assert report.clean == (not expected)


@PROPERTY
@given(st.binary(max_size=200))
def test_random_config_bytes_never_crash(raw):
    with tempfile.TemporaryDirectory() as tmp:
        report = _scan(_keras_zip(Path(tmp) / "m.keras", raw, weights=False))
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        assert "KERAS-03" in rule_ids(report) and not report.clean
