"""Conformance with protectai/modelscan's own test suite, and four public modelscan bypasses.

modelscan's tests (tests/test_modelscan.py, tests/test_utils.py) build hostile pickles of every
protocol, torch zip and legacy checkpoints with an object injected before the state dict, numpy
files, dill files, zips, an encrypted zip, and Keras models with Lambda layers. Each case is rebuilt
here with a harmless payload (``os.system("true")``) and is only written, never loaded. The
jasonmiao0511-hue ``modelscan-*-bypass-poc`` repositories (pickle, joblib, npz, pytorch) evade a
blocklist with ``types.FunctionType(marshal.loads(base64.b64decode(...)), {})()``; an allowlist must
catch every variant.

Not rebuilt: TensorFlow SavedModel directories (no tensorflow here); their parts are files tensorsafe
does not read, so they are "cannot judge" (SCAN-01), never clean. The dill cases run with dill where
it is installed (for modelscan's objects, a list and an eval reducer, dill writes pickle's opcodes).
Also here: the bypasses filed on modelscan's issue tracker, and holes found while rebuilding these
(joblib Z-files with python 2's wider header, pre-POSIX tars, files that are a tar and something else).
"""
from __future__ import annotations

import base64
import bdb
import collections
import http.client
import io
import json
import marshal
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import zlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorsafe
from tests.archives import zip_bytes
from tests.cli_runner import invoke
from tests.conftest import rule_ids

SHELL = "true"


class Reduces:
    """Pickles as ``func(*args)``: what modelscan's Malicious* classes do with real callables."""

    def __init__(self, func: Any, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _short(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _stack_global(module: str, name: str, args: bytes = _short(SHELL) + b"\x85") -> bytes:
    """A protocol-4 pickle ``module.name(*args)`` for a module that need not be installed."""
    return b"\x80\x04" + _short(module) + _short(name) + b"\x93" + args + b"R."


class InjectingPickler(pickle._Pickler):  # type: ignore[name-defined]  # the pure-Python pickler
    """modelscan's PickleInject: a payload object saved before the real object, in one pickle."""

    payload = Reduces(os.system, (SHELL,))

    def dump(self, obj: Any) -> None:
        self.write(pickle.PROTO + struct.pack("<B", self.proto))
        if self.proto >= 4:
            self.framer.start_framing()
        self.save(self.payload)
        self.save(obj)
        self.write(pickle.STOP)
        if self.proto >= 4:
            self.framer.end_framing()


class InjectingPickleModule:
    """A ``pickle_module`` for torch.save that injects the payload into data.pkl."""

    Pickler = InjectingPickler
    Unpickler = pickle.Unpickler
    load = staticmethod(pickle.load)
    dump = staticmethod(pickle.dump)


def _injected(obj: Any, protocol: int = 4) -> bytes:
    out = io.BytesIO()
    InjectingPickler(out, protocol).dump(obj)
    return out.getvalue()


_zip = zip_bytes


def _torch_save(obj: Any, *, zip_format: bool = True, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out, _use_new_zipfile_serialization=zip_format, **kwargs)
    return out.getvalue()


def _fails(report: tensorsafe.Report, *rules: str) -> None:
    assert report.verdict == "fail" and report.exit_code == 1, [str(f) for f in report.findings]
    assert set(rules) <= rule_ids(report), [str(f) for f in report.findings]


def _clean(report: tensorsafe.Report) -> None:
    assert report.verdict == "clean" and report.exit_code == 0, [str(f) for f in report.findings]


# -- modelscan's pickle cases (tests/test_modelscan.py, fixture file_path) ----------------------------
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_benign_list_of_every_protocol_is_clean(scan_bytes, protocol):
    _clean(scan_bytes(pickle.dumps(["a", "b", "c"], protocol=protocol), "benign0.pkl"))
    _clean(scan_bytes(pickle.dumps(["a", "b", "c"], protocol=protocol), "benign0.dill"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("func, args", [(eval, ("1",)), (os.system, (SHELL,)), (exec, ("pass",))],
                         ids=["eval", "os.system", "exec"])
def test_reduce_to_a_code_runner_fails_in_every_protocol(scan_bytes, protocol, func, args):
    data = pickle.dumps(Reduces(func, args), protocol=protocol)
    _fails(scan_bytes(data, "malicious.pkl"), "PK-I01")
    _fails(scan_bytes(data, "malicious.dill"), "PK-I01")


@pytest.mark.parametrize("obj", [
    Reduces(http.client.HTTPSConnection, ("example.invalid",)),
    Reduces(socket.create_connection, (("example.invalid", 80),)),
    Reduces(subprocess.run, ([SHELL],)),
    Reduces(sys.exit, (0,)),
    Reduces(bdb.Bdb.run, (bdb.Bdb(), f"import os\nos.system({SHELL!r})")),
], ids=["http.client", "socket", "subprocess", "sys.exit", "bdb.Bdb.run"])
@pytest.mark.parametrize("protocol", [0, 4])
def test_modelscan_network_process_and_debugger_payloads_fail(scan_bytes, obj, protocol):
    _fails(scan_bytes(pickle.dumps(obj, protocol=protocol), "malicious.pkl"), "PK-I01")


@pytest.mark.parametrize("module, name, args", [
    ("requests.api", "get", _short("https://example.invalid") + b"\x85"),
    ("aiohttp.client", "ClientSession", b")"),
], ids=["requests.get", "aiohttp.ClientSession"])
def test_modules_that_are_not_installed_here_still_fail(scan_bytes, module, name, args):
    """modelscan pickles requests/aiohttp objects; an import we do not know is never clean."""
    report = scan_bytes(_stack_global(module, name, args), "malicious.pickle")
    assert report.verdict == "fail" and rule_ids(report) & {"PK-I01", "PK-I02"}, report.findings


def test_hostile_pickle_after_a_benign_one_fails(scan_bytes):
    """malicious6: pickle.dumps(list) + pickle.dumps(requests.get(...)) in one file."""
    data = pickle.dumps(["a", "b", "c"]) + _stack_global("os", "system")
    _fails(scan_bytes(data, "malicious6.pkl"), "PK-I01")


SOUR_PICKLE = (  # malicious0 (Sour Pickles, BH US 2011): globals/compile/eval/getattr/apply, protocol 0
    b"c__builtin__\nglobals\n(tRp100\n0c__builtin__\ncompile\n(S'x=1'\nS''\nS'exec'\ntRp101\n0"
    b"c__builtin__\neval\n(g101\ng100\ntRp102\n0c__builtin__\ngetattr\n(c__builtin__\ndict\nS'get'\n"
    b"tRp103\n0c__builtin__\napply\n(g103\n(g100\nS'x'\nltRp104\n0g104\n."
)
MEMO_STACK_GLOBAL = b"".join([  # malicious11 (imaginaryctf 'Safe Pickle'): names from the memo, a decoy
    b"Vos\n", b"p2\n", b"0", b"Vsystem\n", b"p3\n", b"0", b"Vtorch\n", b"p0\n", b"0",
    b"VLongStorage\n", b"p1\n", b"0", b"g2\n", b"g3\n", b"\x93", b"(", b"Vtrue\n", b"t", b"R", b".",
])
_INNER = b"\x80\x05cos\nsystem\nVtrue\n\x85R."


@pytest.mark.parametrize("data", [
    SOUR_PICKLE,
    b"(S'pass'\ni__builtin__\nexec\n.",  # malicious10: INST
    MEMO_STACK_GLOBAL,
    MEMO_STACK_GLOBAL + b"\n\n\t\t",  # malicious14: bytes after STOP
    b"\x80\x05cpickle\nloads\nB" + struct.pack("<I", len(_INNER)) + _INNER + b"\x85R0N.",  # malicious12
    b"\x80\x05cbuiltins\neval.__call__\nV1\n\x85R.",  # malicious13: a dotted name
], ids=["sour-pickles", "inst-exec", "memo-stack-global", "memo-stack-global-tail", "nested-loads",
        "eval.__call__"])
def test_modelscan_handwritten_pickles_fail(scan_bytes, data):
    _fails(scan_bytes(data, "malicious.pkl"), "PK-I01")


def test_pickle_of_a_numpy_array_with_an_injected_exec_fails(scan_bytes):
    """unsafe_numpy.npy: a raw pickle (not .npy) of an array, exec injected before it."""
    data = _injected(np.array([[1, 2, 3], [4, 5, 6]]))
    _fails(scan_bytes(data, "unsafe_numpy.npy"), "PK-I01")


def test_numpy_save_of_an_int_array_is_clean(scan_bytes):
    out = io.BytesIO()
    np.save(out, np.array([[1, 2, 3], [4, 5, 6]]))
    report = scan_bytes(out.getvalue(), "safe_numpy.npy")
    _clean(report)
    assert report.files[0].kind == "numpy"


# -- PyTorch (fixture pytorch_file_path, tests/data/unsafe_zip_pytorch.pt) ---------------------------
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_of_an_empty_module_state_dict_is_clean(scan_bytes, zip_format):
    report = scan_bytes(_torch_save(torch.nn.Module().state_dict(), zip_format=zip_format), "safe.pt")
    _clean(report)
    assert report.files[0].kind == ("pytorch-zip" if zip_format else "pytorch-legacy")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_with_an_injected_os_system_fails(scan_bytes, zip_format):
    state = collections.OrderedDict(w=torch.ones(2))
    data = _torch_save(state, zip_format=zip_format, pickle_module=InjectingPickleModule)
    _fails(scan_bytes(data, "unsafe.pt"), "PK-I01")


def test_torch_zip_whose_data_pkl_calls_posix_system_fails(scan_bytes):
    """unsafe_zip_pytorch.pt: protocol 2, posix.system before an OrderedDict, folder-named members."""
    data_pkl = (b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03"
                b"ccollections\nOrderedDict\nq\x04)Rq\x05.")
    data = _zip({"unsafe_zip_pytorch/data.pkl": data_pkl, "unsafe_zip_pytorch/byteorder": b"little",
                 "unsafe_zip_pytorch/version": b"3\n", "unsafe_zip_pytorch/.data/serialization_id": b"0" * 40})
    report = scan_bytes(data, "unsafe_zip_pytorch.pt")
    _fails(report, "PK-I01")
    assert report.files[0].kind == "pytorch-zip"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_png_named_pt_is_not_judged(scan_bytes):
    """bad_pytorch.pt is a PNG signature (after a real .pt on the Hub that is an image); modelscan
    skips it, we refuse to call it clean: the bare signature is unknown bytes, a whole PNG is named."""
    signature = b"\x89PNG\r\n\x1a\n"
    report = scan_bytes(signature, "bad_pytorch.pt")
    assert report.verdict == "error" and report.exit_code == 2, report.findings
    png = (signature + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00")) + _png_chunk(b"IEND", b""))
    assert rule_ids(scan_bytes(png, "Owl_Mage_no_background.pt")) == {"SCAN-02"}
    _clean(scan_bytes(png, "Owl_Mage_no_background.png"))


def test_zip_with_an_eval_data_pkl_fails(scan_bytes):
    _fails(scan_bytes(_zip({"data.pkl": pickle.dumps(Reduces(eval, ("1",)), protocol=4)}), "test.zip"),
           "PK-I01")


def _flag_encrypted(data: bytes) -> bytes:
    """Set the 'encrypted' bit (general purpose flag bit 0) in the local and central headers."""
    out = bytearray(data)
    out[out.index(b"PK\x03\x04") + 6] |= 1
    out[out.index(b"PK\x01\x02") + 8] |= 1
    return bytes(out)


def test_encrypted_member_is_never_clean(scan_bytes):
    """password_protected.zip: modelscan skips it; a member we cannot read is not proven clean."""
    report = scan_bytes(_flag_encrypted(_zip({"test.txt": b"hello\n"})), "password_protected.zip")
    assert not report.clean and "ZIP-03" in rule_ids(report), report.findings
    report = scan_bytes(_flag_encrypted(_zip({"archive/data.pkl": b"\x80\x02}q\x00."})), "model.pt")
    assert not report.clean and "ZIP-03" in rule_ids(report), report.findings


# -- Keras (fixture keras_file_path): Dense model, then two Lambda layers ----------------------------
_LAMBDA_CODE = base64.b64encode(marshal.dumps((lambda x: x).__code__)).decode()


def _tf_keras_config(lambdas: int) -> dict:
    """A tf_keras 2.x Functional model config as model.save writes it (model_config / config.json)."""
    layers: list[dict] = [
        {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 32], "dtype": "float32", "sparse": False, "name": "input_1"}},
        {"class_name": "Dense", "name": "dense", "inbound_nodes": [[["input_1", 0, 0, {}]]],
         "config": {"name": "dense", "trainable": True, "dtype": "float32", "units": 1, "activation": "linear",
                    "use_bias": True, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                    "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None}},
    ]
    for i in range(1, lambdas + 1):
        layers.append({"class_name": "Lambda", "name": f"lambda_{i}", "inbound_nodes": [[[layers[-1]["name"], 0, 0, {}]]],
                       "config": {"name": f"lambda_{i}", "trainable": True, "dtype": "float32",
                                  "function": [_LAMBDA_CODE, None, None], "function_type": "lambda",
                                  "module": "__main__", "output_shape": None, "output_shape_type": "raw",
                                  "output_shape_module": None, "arguments": {}}})
    return {"class_name": "Functional", "keras_version": "2.15.0", "backend": "tensorflow",
            "config": {"name": "model", "trainable": True, "layers": layers, "input_layers": [["input_1", 0, 0]],
                       "output_layers": [[layers[-1]["name"], 0, 0]]}}


def _keras3_config(lambdas: int) -> dict:
    """A Keras 3 config.json (module/class_name/registered_name; a lambda as ``__lambda__`` code)."""
    def layer(class_name: str, name: str, config: dict) -> dict:
        return {"module": "keras.layers", "class_name": class_name, "registered_name": None, "name": name,
                "config": {"name": name, **config}, "inbound_nodes": []}
    layers = [layer("InputLayer", "input_layer", {"batch_shape": [None, 32], "dtype": "float32"}),
              layer("Dense", "dense", {"units": 1, "activation": "linear", "use_bias": True})]
    layers += [layer("Lambda", f"lambda_{i}", {"arguments": {}, "function": {
        "class_name": "__lambda__", "config": {"code": _LAMBDA_CODE, "defaults": None, "closure": None}}})
        for i in range(1, lambdas + 1)]
    return {"module": "keras", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": "functional", "trainable": True, "layers": layers,
                       "input_layers": [["input_layer", 0, 0]], "output_layers": [[layers[-1]["name"], 0, 0]]},
            "compile_config": {"optimizer": "adam", "loss": "mean_squared_error"}}


def _weights_h5() -> bytes:
    h5py = pytest.importorskip("h5py")
    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        group = f.create_group("layers/dense/vars")
        group.create_dataset("0", data=np.zeros((32, 1), np.float32))
        group.create_dataset("1", data=np.zeros(1, np.float32))
    return out.getvalue()


def _keras_archive(config: dict, keras_version: str) -> bytes:
    return _zip({"metadata.json": json.dumps({"keras_version": keras_version, "date_saved": "2024-10-01@12:00:00"}),
                 "config.json": json.dumps(config), "model.weights.h5": _weights_h5()})


def _legacy_h5(path: Path, config: dict) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = "tensorflow", "2.15.0"
        # tf_keras's hdf5_format writes the JSON attributes as UTF-8 bytes
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
        f.attrs["training_config"] = json.dumps({
            "loss": "mean_squared_error", "metrics": None, "weighted_metrics": None, "loss_weights": None,
            "optimizer_config": {"class_name": "Custom>Adam", "config": {"name": "Adam", "learning_rate": 0.001,
                                                                          "is_legacy_optimizer": False}}}).encode("utf8")
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"input_1", b"dense"])
        dense = weights.create_group("dense")
        dense.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"])
        dense.create_dataset("dense/kernel:0", data=np.zeros((32, 1), np.float32))
        dense.create_dataset("dense/bias:0", data=np.zeros(1, np.float32))
    return path


@pytest.mark.parametrize("build", ["keras3", "tf_keras"])
def test_keras_archive_dense_is_clean_and_lambda_fails(scan_bytes, build):
    config, version = (_keras3_config, "3.6.0") if build == "keras3" else (_tf_keras_config, "2.15.0")
    safe = scan_bytes(_keras_archive(config(0), version), "safe.keras")
    _clean(safe)
    assert safe.files[0].kind == "keras"
    unsafe = scan_bytes(_keras_archive(config(2), version), "unsafe.keras")
    _fails(unsafe, "KERAS-01")
    assert sum("Lambda layer" in f.message for f in unsafe.findings) == 2, unsafe.findings


def test_legacy_h5_dense_is_clean_and_lambda_fails(tmp_path):
    safe = tensorsafe.scan(_legacy_h5(tmp_path / "safe.h5", _tf_keras_config(0)))
    _clean(safe)
    assert safe.files[0].kind == "keras-hdf5"
    unsafe = tensorsafe.scan(_legacy_h5(tmp_path / "unsafe.h5", _tf_keras_config(2)))
    _fails(unsafe, "KERAS-01")
    assert sum("Lambda layer" in f.message for f in unsafe.findings) == 2, unsafe.findings


@pytest.mark.parametrize("name, data", [
    ("saved_model.pb", b"\x08\x01\x12\x00"), ("keras_metadata.pb", b"\n\x00"), ("fingerprint.pb", b"\x08\x01"),
    ("variables/variables.index", b"\x00" * 48), ("variables/variables.data-00000-of-00001", b"\x00" * 16),
])
def test_saved_model_parts_are_not_judged_never_clean(tmp_path, name, data):
    """TensorFlow SavedModel is a format tensorsafe does not read: each part is SCAN-01, exit 2."""
    path = tmp_path / "saved_model" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    report = tensorsafe.scan(path)
    assert report.verdict == "error" and rule_ids(report) == {"SCAN-01"}, report.findings


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_dill_files_of_modelscans_cases(scan_bytes, protocol):
    """benign0_v*.dill and malicious1_v*.dill written by dill itself (skipped where dill is absent)."""
    dill = pytest.importorskip("dill")
    _clean(scan_bytes(dill.dumps(["a", "b", "c"], protocol=protocol), "benign0.dill"))
    _fails(scan_bytes(dill.dumps(Reduces(eval, ("1",)), protocol=protocol), "malicious1.dill"), "PK-I01")
    out = io.BytesIO()  # modelscan's DillInject: dill's own pickler, the payload saved before the object
    pickler = dill.Pickler(out, protocol)
    pickler.save(Reduces(exec, ("pass",)))
    pickler.save(["a", "b", "c"])
    pickler.write(pickle.STOP)
    _fails(scan_bytes(out.getvalue(), "unsafe.dill"), "PK-I01")


def test_dill_helpers_are_imports_that_fail(scan_bytes):
    """dill writes functions and classes through dill._dill helpers; none is on the allowlist."""
    for name, args in [("_create_function", b")"), ("_load_type", _short("CodeType") + b"\x85"),
                       ("_create_code", b")")]:
        _fails(scan_bytes(_stack_global("dill._dill", name, args), "model.dill"), "PK-I01")


def test_cli_exit_codes_for_a_benign_and_a_hostile_pickle(tmp_path):
    benign, hostile = tmp_path / "benign0_v3.pkl", tmp_path / "malicious1_v3.pkl"
    benign.write_bytes(pickle.dumps(["a", "b", "c"], protocol=3))
    hostile.write_bytes(pickle.dumps(Reduces(eval, ("1",)), protocol=3))
    assert invoke(["scan", str(benign)]).exit_code == 0
    result = invoke(["scan", str(hostile)])
    assert result.exit_code == 1 and "PK-I01" in result.output, result.output


# -- jasonmiao0511-hue/modelscan-*-bypass-poc: types.FunctionType(marshal.loads(b64decode(...)), {})() ---
_BYTECODE = marshal.dumps(compile(f"import os\nos.system({SHELL!r})", "<poc>", "exec"))
FUNCTION_CHAIN = (  # protocol 0, as rce_payload.pkl / rce.pt, with a real base64 code object
    b"ctypes\nFunctionType\n(cmarshal\nloads\n(cbase64\nb64decode\n(S'" + base64.b64encode(_BYTECODE)
    + b"'\ntRtR(dtR)R."
)
POC_AS_PUBLISHED = (  # the published .pkl/.pt bytes: a placeholder string and an unquoted S{} argument
    b"ctypes\nFunctionType\n(cmarshal\nloads\n(cbase64\nb64decode\n(S'PLACEHOLDER_BASE64_BYTECODE'\n"
    b"tRtR((S{}\ntR()R."
)
JOBLIB_CHAIN = (  # rce.joblib: protocol 4, marshal.loads(BINBYTES8), memo, types.FunctionType(code, {})()
    b"\x80\x04cmarshal\nloads\n\x8e" + struct.pack("<Q", len(_BYTECODE)) + _BYTECODE
    + b"\x85Rq\x00ctypes\nFunctionType\nh\x00}\x86R)R."
)


def _npy_object_header() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([None], dtype=object))
    data = out.getvalue()
    return data[:data.index(b"\n") + 1]


@pytest.mark.parametrize("name", ["rce_payload.pkl", "rce.pt", "model.bin"])
def test_pickle_and_pytorch_poc_function_chain_fails(scan_bytes, name):
    report = scan_bytes(FUNCTION_CHAIN, name)
    _fails(report, "PK-I01")
    assert {"marshal.loads", "types.FunctionType"} <= {i.qualified for i in report.files[0].imports}


@pytest.mark.parametrize("name", ["rce_payload.pkl", "rce.pt"])
def test_published_poc_bytes_fail(scan_bytes, name):
    _fails(scan_bytes(POC_AS_PUBLISHED, name), "PK-I01")


def test_joblib_poc_function_chain_fails(scan_bytes):
    _fails(scan_bytes(JOBLIB_CHAIN, "rce.joblib"), "PK-I01")


def test_joblib_dump_of_an_os_system_object_fails(tmp_path):
    joblib = pytest.importorskip("joblib")
    for compress in (0, 3, ("gzip", 3), ("xz", 3)):
        path = tmp_path / "model.joblib"
        joblib.dump({"a": np.array([Reduces(os.system, (SHELL,)), 1], dtype=object), "b": np.zeros(3)},
                    path, compress=compress)
        _fails(tensorsafe.scan(path), "PK-I01")
        joblib.dump({"a": np.array(["x", 1], dtype=object), "b": np.zeros(3)}, path, compress=compress)
        _clean(tensorsafe.scan(path))


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_npz_poc_object_array_fails(scan_bytes, compressed):
    """malicious.npz: np.savez of an object array whose element reduces to os.system."""
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, arr_0=np.array([Reduces(os.system, (SHELL,))], dtype=object))
    _fails(scan_bytes(out.getvalue(), "malicious.npz"), "PK-I01", "NPY-01")


@pytest.mark.parametrize("member", ["arr_0.npy", "arr_0", "weights.bin"])
def test_npz_poc_function_chain_fails_under_any_member_name(scan_bytes, member):
    """rce_bypass.npz: an object .npy header, then the marshal chain; np.load reads any member name."""
    _fails(scan_bytes(_zip({member: _npy_object_header() + FUNCTION_CHAIN}), "rce_bypass.npz"), "PK-I01")


def test_benign_npz_is_clean(scan_bytes):
    out = io.BytesIO()
    np.savez_compressed(out, a=np.zeros(3), b=np.arange(4))
    _clean(scan_bytes(out.getvalue(), "benign.npz"))


def test_pytorch_zip_with_the_function_chain_as_data_pkl_fails(scan_bytes):
    source = zipfile.ZipFile(io.BytesIO(_torch_save({"w": torch.ones(2)})))
    members = {n: FUNCTION_CHAIN if n.endswith("/data.pkl") else source.read(n) for n in source.namelist()}
    _fails(scan_bytes(_zip(members), "rce.pt"), "PK-I01")


def test_legacy_tar_checkpoint_with_a_hostile_pickle_member_fails(scan_bytes):
    """torch.load's oldest format: a tar with sys_info/pickle/storages/tensors members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in [("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True})),
                           ("pickle", pickle.dumps(Reduces(os.system, (SHELL,)), protocol=2)),
                           ("storages", pickle.dumps(0)), ("tensors", pickle.dumps(0))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _fails(scan_bytes(out.getvalue(), "legacy.pt"), "PK-I01")


# -- modelscan's unsafe_globals (modelscan/settings.py): each must fail here too --------------------
MODELSCAN_UNSAFE_GLOBALS = [
    (module, name)
    for module in ("__builtin__", "builtins")
    for name in ("eval", "compile", "getattr", "apply", "exec", "open", "breakpoint", "__import__")
] + [  # modules modelscan bans whole ("*"), with a name from each
    ("runpy", "_run_code"), ("os", "system"), ("nt", "system"), ("posix", "system"), ("socket", "socket"),
    ("subprocess", "Popen"), ("sys", "exit"), ("operator", "attrgetter"), ("pty", "spawn"),
    ("pickle", "loads"), ("_pickle", "loads"), ("bdb", "Bdb"), ("pdb", "run"), ("shutil", "rmtree"),
    ("asyncio", "create_subprocess_shell"), ("webbrowser", "open"), ("httplib", "HTTPSConnection"),
    ("requests.api", "get"), ("aiohttp.client", "ClientSession"),
]


@pytest.mark.parametrize("module, name", MODELSCAN_UNSAFE_GLOBALS, ids=[f"{m}.{n}" for m, n in MODELSCAN_UNSAFE_GLOBALS])
@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL"])
def test_every_modelscan_unsafe_global_fails(scan_bytes, module, name, opcode):
    if opcode == "GLOBAL":
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x04\x00\x00\x00true\x85R."
    else:
        data = _stack_global(module, name)
    report = scan_bytes(data, "model.pkl")
    assert report.verdict == "fail" and rule_ids(report) & {"PK-I01", "PK-I02"}, report.findings


# -- bypasses filed on modelscan's issue tracker (#85, #330, #331, #338), with harmless payloads ----
def _unicode(text: str) -> bytes:
    return pickle.UNICODE + text.encode() + b"\n"


ISSUE_BYPASSES = {
    # 85: BUILD slot state plants "os"/"system" as attributes of numpy.prod, GLOBAL reads them back
    "85-build-planted-names": (
        b"\x80\x05cnumpy\nprod\n" + b"N(" + _unicode("a") + _unicode("os") + b"d\x86b"
        + b"N(" + _unicode("b") + _unicode("system") + b"d\x86b0"
        + b"cnumpy\nprod.a\np0\ncnumpy\nprod.b\np1\n00g0\ng1\n\x93" + _unicode(SHELL) + b"\x85R."),
    # 330: numpy.size and numpy.__builtins__, BUILD, then a call of what numpy.size returns
    "330-numpy-builtins": (
        b"\x80\x04" + _short("numpy") + _short("size") + b"\x93\x94\x94" + _short("numpy") + _short("__builtins__")
        + b"\x93\x94\x94h\x01}}" + _short("shape") + b"h\x03s\x86bh\x01h\x01" + _short("eval") + b"\x86R"
        + _short("1") + b"\x85R."),
    # 331: importlib.import_module('builtins') and builtins.getattr on it
    "331-import-module-getattr": (
        b"\x80\x04" + _short("importlib") + _short("import_module") + b"\x93\x94" + _short("builtins")
        + b"\x85R\x94" + _short("builtins") + _short("getattr") + b"\x93\x94h\x02h\x01" + _short("eval") + b"\x86R."),
    # 338 section 6: the real pickle zlib-compressed, handed to pickle.loads(zlib.decompress(...))
    "338-zlib-obfuscation": (
        b"\x80\x04" + _short("pickle") + _short("loads") + b"\x93" + _short("zlib") + _short("decompress") + b"\x93"
        + b"C" + bytes([len(zlib.compress(_INNER))]) + zlib.compress(_INNER) + b"\x85R\x85R."),
}
# 338 sections 1-2: execution primitives outside modelscan's blocklist
ISSUE_338_PRIMITIVES = [("torch.utils.collect_env", "run"), ("multiprocessing.util", "spawnv_passfds"),
                        ("mlflow.projects.backend.local", "_run_entry_point"), ("pandas.io.parsers.readers", "read_csv"),
                        ("urllib.request", "urlretrieve"), ("torch.hub", "load")]


@pytest.mark.parametrize("name", ISSUE_BYPASSES)
def test_modelscan_issue_tracker_bypasses_fail(scan_bytes, name):
    report = scan_bytes(ISSUE_BYPASSES[name], "model.pkl")
    assert report.verdict == "fail" and rule_ids(report) & {"PK-I01", "PK-I02"}, report.findings


@pytest.mark.parametrize("module, name", ISSUE_338_PRIMITIVES, ids=[f"{m}.{n}" for m, n in ISSUE_338_PRIMITIVES])
def test_execution_primitives_outside_a_blocklist_fail(scan_bytes, module, name):
    report = scan_bytes(_stack_global(module, name), "model.pkl")
    assert report.verdict == "fail" and rule_ids(report) & {"PK-I01", "PK-I02"}, report.findings


@pytest.mark.parametrize("operand", [b"C\x02os", b"J*\x00\x00\x00", b"\x96\x02\x00\x00\x00\x00\x00\x00\x00os"],
                         ids=["bytes", "int", "bytearray"])
def test_stack_global_operand_that_is_not_a_str_is_an_error_not_a_crash(scan_bytes, operand):
    """338 section 5: modelscan crashed on these; CPython refuses them too (STACK_GLOBAL requires str)."""
    report = scan_bytes(b"\x80\x05" + operand + _short("system") + b"\x93" + _short(SHELL) + b"\x85R.", "model.pkl")
    assert report.verdict == "error" and "PK-S01" in rule_ids(report), report.findings


# -- a folder as modelscan's test_scan_directory_path scans it --------------------------------------
def test_a_folder_of_modelscan_cases_gets_each_files_verdict(tmp_path):
    cases = {
        "benign0_v0.pkl": (pickle.dumps(["a", "b", "c"], protocol=0), "clean"),
        "benign0_v4.dill": (pickle.dumps(["a", "b", "c"], protocol=4), "clean"),
        "malicious1_v3.pkl": (pickle.dumps(Reduces(eval, ("1",)), protocol=3), "fail"),
        "malicious2_v4.pkl": (pickle.dumps(Reduces(os.system, (SHELL,)), protocol=4), "fail"),
        "malicious1.zip": (_zip({"data.pkl": pickle.dumps(Reduces(eval, ("1",)), protocol=4)}), "fail"),
        "nested/inner.zip": (_zip({"m.zip": _zip({"archive/data.pkl": _INNER})}), "fail"),
        "password_protected.zip": (_flag_encrypted(_zip({"test.txt": b"hello\n"})), "fail"),
        "safe.pt": (_torch_save({"w": torch.ones(2)}), "clean"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    report = tensorsafe.scan(tmp_path)
    verdicts = {Path(f.path).relative_to(tmp_path).as_posix(): f.verdict for f in report.files}
    assert verdicts == {name: verdict for name, (_, verdict) in cases.items()}
    assert report.verdict == "fail"
    result = invoke(["scan", "--json", str(tmp_path)])
    assert result.exit_code == 1 and json.loads(result.stdout)["verdict"] == "fail"


# -- joblib < 0.10 "Z-files" (joblib.numpy_pickle_compat), which joblib.load still reads ----------
_HOSTILE_PICKLE = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R."


def _zfile(data: bytes, *, wide: bool) -> bytes:
    """``ZF``, the length in hex padded to 19 bytes (joblib's _MAX_LEN), zlib; python 2 joblib
    <= 0.8.4 wrote a header one byte wider, which read_zfile skips as one more space."""
    return b"ZF" + hex(len(data)).encode().ljust(19) + (b" " if wide else b"") + zlib.compress(data)


@pytest.mark.parametrize("wide", [False, True], ids=["joblib-0.9", "python2-joblib-0.8"])
def test_joblib_zfile_is_read_where_joblib_reads_it(scan_bytes, wide):
    """Bug: the wider python 2 header was SCAN-01 (not judged), so --allow-unscanned let a hostile one
    named without a model extension pass as CLEAN although joblib.load runs it."""
    report = scan_bytes(_zfile(_HOSTILE_PICKLE, wide=wide), "cache_entry")
    _fails(report, "PK-I01")
    assert report.files[0].kind == "joblib-zfile:pickle"
    _clean(scan_bytes(_zfile(pickle.dumps({"a": [1, 2, 3]}, protocol=2), wide=wide), "cache_entry"))


def test_joblib_zfile_written_by_joblib_itself(tmp_path):
    compat = pytest.importorskip("joblib.numpy_pickle_compat")
    out = io.BytesIO()
    compat.write_zfile(out, _HOSTILE_PICKLE)
    assert out.getvalue()[:21] == _zfile(_HOSTILE_PICKLE, wide=False)[:21]  # the same 21-byte header
    path_written = tmp_path / "written"
    path_written.write_bytes(out.getvalue())
    _fails(tensorsafe.scan(path_written), "PK-I01")
    path = tmp_path / "cache_entry"
    path.write_bytes(_zfile(_HOSTILE_PICKLE, wide=True))
    result = invoke(["scan", "--allow-unscanned", str(path)])
    assert result.exit_code == 1 and "PK-I01" in result.output, result.output


# -- pre-POSIX ("v7") tar: tarfile and torch.load's oldest layout open it without the ustar magic ---
def _v7_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar whose headers have no ``ustar`` magic (and no owner names): only the checksum says tar."""
    out = bytearray()
    for name, data in members:
        header = bytearray(512)
        header[:len(name)] = name.encode("latin-1")
        header[100:108], header[108:116], header[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
        header[124:136], header[136:148], header[156:157] = b"%011o\0" % len(data), b"00000000000\0", b"0"
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        out += header + data + b"\0" * (-len(data) % 512)
    return bytes(out + b"\0" * 1024)


def _torch_v7_tar(pickle_member: bytes) -> bytes:
    return _v7_tar([("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True})),
                    ("pickle", pickle_member), ("storages", pickle.dumps(0)), ("tensors", pickle.dumps(0))])


def test_v7_tar_is_opened_as_tarfile_opens_it(scan_bytes):
    """A tar without the ``ustar`` magic was SCAN-01 (not judged), so --allow-unscanned let a hostile
    one with a name outside the model extensions pass as CLEAN; torch.load unpickles it (fixed in
    readers/sniff.starts_tar_header, found here and by the torch reader differential at once)."""
    data = _torch_v7_tar(pickle.dumps(Reduces(os.system, (SHELL,)), protocol=2))
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(data))] == ["sys_info", "pickle", "storages", "tensors"]
    report = scan_bytes(data, "checkpoint")
    _fails(report, "PK-I01")
    assert report.files[0].kind == "pytorch-tar"
    _fails(scan_bytes(_v7_tar([("a.txt", b"hello\n"), ("b.pkl", _INNER)]), "bundle"), "PK-I01")
    benign = scan_bytes(_v7_tar([("a.txt", b"hello\n"), ("b.pkl", pickle.dumps([1, 2]))]), "bundle")
    assert benign.verdict != "fail" and benign.files[0].kind == "tar", benign.findings  # (SCAN-01 for now)


def test_v7_tar_with_allow_unscanned_is_not_clean(tmp_path):
    path = tmp_path / "model.tar"
    path.write_bytes(_torch_v7_tar(pickle.dumps(Reduces(os.system, (SHELL,)), protocol=2)))
    result = invoke(["scan", "--allow-unscanned", str(path)])
    assert result.exit_code == 1 and "PK-I01" in result.output, result.output


@pytest.mark.parametrize("field", [b"%06o\0 ", b" %06o\0", b"%07o\0", b"0o%05o "])
def test_tar_checksum_spellings_agree_with_tarfile(field):
    from tensorsafe.readers.sniff import starts_tar_header

    header = bytearray(_v7_tar([("x", b"y")])[:512])
    header[148:156] = b" " * 8
    total = sum(header)
    header[148:156] = field % total
    assert starts_tar_header(bytes(header))
    tarfile.TarInfo.frombuf(bytes(header), "utf-8", "surrogateescape")  # tarfile accepts it too
    header[0] ^= 1
    assert not starts_tar_header(bytes(header))
    with pytest.raises(tarfile.InvalidHeaderError):
        tarfile.TarInfo.frombuf(bytes(header), "utf-8", "surrogateescape")


FIRST_NAMES = {"lzma": b"]\x00\x00\x80\x00", "zlib": b"x\x9c", "joblib-zfile": b"ZF0000000000000000001",
               "7z": b"7z\xbc\xaf\x27\x1c", "hdf5": b"\x89HDF\r\n\x1a\n", "gguf": b"GGUF", "npy": b"\x93NUMPY",
               "empty-zip": b"PK\x05\x06", "gzip": b"\x1f\x8b", "bz2": b"BZh9", "xz": b"\xfd7zXZ\x00",
               "zstd": b"\x28\xb5\x2f\xfd"}


@pytest.mark.parametrize("first_name", FIRST_NAMES.values(), ids=FIRST_NAMES)
def test_v7_tar_whose_first_name_looks_compressed_is_still_read_as_a_tar(scan_bytes, tmp_path, first_name):
    """Bug: a first member name starting with another format's magic made the sniffer say lzma, zlib,
    Z-file (then SCAN-01, CLEAN with --allow-unscanned), 7z, HDF5, ... (an error): the tar was never
    read, while torch.load reads any file not starting with ``PK\x03\x04`` as a tar first and
    unpickles its ``storages`` member (fixed in engine/dispatch.scan_kind)."""
    hostile = pickle.dumps(Reduces(os.system, (SHELL,)), protocol=2)
    data = _v7_tar([(first_name.decode("latin-1"), pickle.dumps({"protocol_version": 1001})), ("pickle", hostile),
                    ("storages", hostile), ("tensors", pickle.dumps(0))])
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(data))][1:] == ["pickle", "storages", "tensors"]
    _fails(scan_bytes(data, "checkpoint"), "PK-I01")
    path = tmp_path / "model.tar"
    path.write_bytes(data)
    result = invoke(["scan", "--allow-unscanned", str(path)])
    assert result.exit_code == 1 and "PK-I01" in result.output, result.output


def _first_block_fields(block: bytearray) -> bytes:
    """Write tar number fields (space-terminated: no NUL) and the checksum into a 512-byte block."""
    block[100:108], block[108:116], block[116:124] = b"0000644 ", b"0000000 ", b"0000000 "
    block[124:136], block[136:148], block[156:157] = b"00000000000 ", b"00000000000 ", b"0"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o  " % sum(block)
    return bytes(block)


def _npy_that_is_a_torch_tar(hostile: bytes) -> bytes:
    """A float32 .npy whose 512-byte header (a dict literal, then a comment) is also a tar header,
    followed by the members of torch's pre-1.0 layout."""
    literal = b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), } #"
    text = literal + b" " * (502 - len(literal) - 1) + b"\n"
    block = _first_block_fields(bytearray(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text))
    return block + _v7_tar([("storages", hostile), ("pickle", hostile), ("tensors", pickle.dumps(0)),
                            ("sys_info", pickle.dumps({"protocol_version": 1001}))])


def test_npy_that_is_also_a_tar_is_read_both_ways(scan_bytes, tmp_path):
    """Bug: a valid float32 .npy whose header is also a tar header scanned CLEAN (exit 0), even named
    .pt; torch.load reads any file that is not a zip with tarfile first and unpickles ``storages``
    (fixed in engine/dispatch.scan_kind: the tar check runs for every kind, not only unknown bytes)."""
    data = _npy_that_is_a_torch_tar(pickle.dumps(Reduces(os.system, (SHELL,)), protocol=2))
    path = tmp_path / "weights.npy"
    path.write_bytes(data)
    assert np.load(path, allow_pickle=False).shape == (3,)  # numpy reads a float array, no pickle
    assert [m.name for m in tarfile.open(path)][1:3] == ["storages", "pickle"]
    for name in ("weights.npy", "weights.pt", "weights"):
        report = scan_bytes(data, name)
        _fails(report, "PK-I01")
        assert "pytorch-tar" in report.files[0].kind
    _clean(scan_bytes(data[:512] + np.zeros(3, np.float32).tobytes(), "weights.npy"))  # header alone: an array


def test_safetensors_that_is_also_a_tar_fails(scan_bytes):
    """The same trick with a safetensors header (the tar fields inside a metadata string): safetensors
    loads one U8 tensor, torch.load the tar."""
    from safetensors.numpy import load

    members = _v7_tar([("storages", pickle.dumps(Reduces(os.system, (SHELL,)), protocol=2)),
                       ("pickle", pickle.dumps(0)), ("tensors", pickle.dumps(0))])
    prefix = json.dumps({"t": {"dtype": "U8", "shape": [len(members)], "data_offsets": [0, len(members)]}})
    prefix = prefix[:-1] + ', "__metadata__": {"x": "'
    header = (prefix + " " * (504 - len(prefix) - 3) + '"}}').encode()
    data = _first_block_fields(bytearray(struct.pack("<Q", len(header)) + header)) + members
    assert load(data)["t"].shape == (len(members),)
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(data))][1] == "storages"
    _fails(scan_bytes(data, "pytorch_model.bin"), "PK-I01")
