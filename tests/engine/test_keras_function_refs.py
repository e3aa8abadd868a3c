"""Keras configs that name a function outside ``class_name``: ``{"class_name": "function", "config":
NAME, "module": MODULE}`` (Keras 3 ``serialization_lib`` resolves ``MODULE.NAME`` among Keras's
public API, and releases without its ``NON_MODELING_APIS`` list resolve any of it) and legacy
string identifiers (``"activation": "get_file"``). A Keras gadget or a Keras function outside the
modelling modules is KERAS-01; the references a normal model holds (activations, losses, metrics,
``keras.ops``) stay clean."""
from __future__ import annotations

import io
import json
import zipfile

import pytest

from tests.conftest import rule_ids


def _fn(name: str, module: str, registered_name: str | None = None) -> dict:
    return {"module": module, "class_name": "function", "config": name, "registered_name": registered_name}


def _dense(name: str = "dense", activation: object = "relu") -> dict:
    return {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
            "config": {"name": name, "units": 4, "activation": activation, "use_bias": True}}


def _model(*layers: dict, loss: object = "mean_squared_error", metrics: object = ("mae",)) -> dict:
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "sequential", "trainable": True, "layers": [
                {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                 "config": {"batch_shape": [None, 8], "dtype": "float32", "name": "input_layer"}}, *layers]},
            "build_config": {"input_shape": [None, 8]},
            "compile_config": {"optimizer": {"module": "keras.optimizers", "class_name": "Adam", "registered_name": None,
                                             "config": {"name": "adam", "learning_rate": 0.001}},
                               "loss": loss, "metrics": list(metrics), "loss_weights": None}}


def _keras_zip(config: dict | str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.8.0", "date_saved": "2025-01-01@00:00:00"}))
    return buf.getvalue()


BENIGN = {
    "activation-string": _model(_dense()),
    "activation-function-ref": _model(_dense(activation=_fn("relu", "keras.activations", "relu"))),
    "ops-activation": _model(_dense(activation=_fn("gelu", "keras.ops", "gelu"))),
    "loss-function-ref": _model(_dense(), loss=_fn("mean_squared_error", "keras.losses", "mean_squared_error"),
                                metrics=(_fn("mean_absolute_error", "keras.metrics"),)),
    "internal-module-path": _model(_dense(activation=_fn("silu", "keras.src.activations.activations"))),
    "initializer-function": _model(_dense(activation=_fn("glorot_uniform", "tf_keras.initializers"))),
    "layer-named-like-a-gadget": _model(_dense(name="get_file")),
    "prose-mentioning-a-gadget": _model({**_dense(), "description": "weights fetched with keras.utils.get_file once"}),
    "functional-layer-named-like-a-gadget": {
        "module": "keras", "class_name": "Functional", "registered_name": "Functional",
        "config": {"name": "functional", "layers": [
            {**_dense(name="get_file"), "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {
                "shape": [None, 8], "dtype": "float32", "keras_history": ["input_layer", 0, 0]}}], "kwargs": {}}]},
            {**_dense(name="out"), "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {
                "shape": [None, 4], "dtype": "float32", "keras_history": ["get_file", 0, 0]}}], "kwargs": {}}]}],
            "input_layers": [["input_layer", 0, 0]], "output_layers": [["get_file", 0, 0]]}},
}


@pytest.mark.parametrize("config", list(BENIGN.values()), ids=list(BENIGN))
def test_function_references_of_a_normal_model_are_clean(scan_bytes, config):
    report = scan_bytes(_keras_zip(config), "model.keras")
    assert report.clean and report.files[0].kind == "keras", report.findings


HOSTILE = {
    "get-file-as-activation": _model(_dense(activation=_fn("get_file", "keras.utils"))),
    "get-file-as-loss": _model(_dense(), loss=_fn("get_file", "keras.utils")),
    "get-file-internal-module": _model(_dense(activation=_fn("get_file", "keras.src.utils.file_utils"))),
    "get-file-in-an-activations-module": _model(_dense(activation=_fn("get_file", "keras.activations"))),
    "get-file-tf-keras": _model(_dense(activation=_fn("get_file", "tf_keras.utils"))),
    "enable-unsafe-deserialization": _model(_dense(activation=_fn("enable_unsafe_deserialization", "keras.config"))),
    "load-model": _model(_dense(activation=_fn("load_model", "keras.models"))),
    "save-img": _model(_dense(), metrics=(_fn("save_img", "keras.utils"),)),
    "top-level-keras": _model(_dense(activation=_fn("Input", "keras"))),
    "legacy-activation-string": _model(_dense(activation="get_file")),
    "legacy-dotted-metric": _model(_dense(), metrics=("mae", "keras.utils.get_file")),
    "legacy-initializer-string": _model({**_dense(), "config": {**_dense()["config"], "kernel_initializer": "get_file"}}),
}


@pytest.mark.parametrize("config", list(HOSTILE.values()), ids=list(HOSTILE))
def test_reference_to_a_function_outside_the_modelling_modules_fails(scan_bytes, config):
    report = scan_bytes(_keras_zip(config), "model.keras")
    assert rule_ids(report) == {"KERAS-01"} and report.exit_code == 1, report.findings
    assert all("\n" not in f.message for f in report.findings)


def test_the_finding_names_the_function_and_where_it_is(scan_bytes):
    report = scan_bytes(_keras_zip(_model(_dense(name="d1", activation=_fn("load_model", "keras.models")))),
                        "model.keras")
    (finding,) = report.findings
    assert "keras.models.load_model" in finding.message and "layers[1].config.activation" in finding.message
    report = scan_bytes(_keras_zip(_model(_dense(activation=_fn("get_file", "keras.utils", "get_file")))),
                        "model.keras")
    assert len(report.findings) == 1 and "CVE-2025-8747" in report.findings[0].message


def test_duplicate_keys_are_judged_whichever_a_reader_keeps(scan_bytes):
    config = json.dumps(_model(_dense(activation=_fn("relu", "keras.activations"))))
    dup_name = config.replace('"config": "relu"', '"config": "relu", "config": "get_file"')
    dup_module = config.replace('"module": "keras.activations"', '"module": "keras.activations", "module": "keras.models"')
    for raw in (dup_name, dup_module):
        assert raw != config
        assert "KERAS-01" in rule_ids(scan_bytes(_keras_zip(raw), "model.keras"))


def test_function_in_a_foreign_module_stays_a_foreign_module_finding(scan_bytes):
    """A registered custom function: Keras never imports a foreign module for it (KERAS-02 as before)."""
    report = scan_bytes(_keras_zip(_model(_dense(), loss=_fn("my_loss", "my_project.losses", "Custom>my_loss"))),
                        "model.keras")
    assert rule_ids(report) == {"KERAS-02"}, report.findings
