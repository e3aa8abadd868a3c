"""Red-team attempts on the pickle side (issue 11, "clean means proven").

``test_bug_*`` are bypasses that once scanned clean while a real loader would import the payload;
the parametrized cases are attempts that were caught, kept so they stay caught. Payloads are
harmless (``os.system("true")``) and nothing here is unpickled.
"""
from __future__ import annotations

import struct

import pytest

from tests import pickle_ops as op
from tests.conftest import rule_ids

G, U = op.global_, op.unicode_
SYSTEM = G("os", "system") + U("true") + op.TUPLE1 + op.REDUCE
TUPLE3 = b"\x87"


def _fails(report, rule_id: str) -> None:
    assert report.exit_code == 1, [str(f) for f in report.findings]
    assert rule_id in rule_ids(report), [str(f) for f in report.findings]


def _class_changed_into_wrapper(payload: bytes) -> bytes:
    """A Namespace built by ``copyreg._reconstructor`` whose BUILD slot state sets ``__class__`` to
    joblib's NumpyArrayWrapper. joblib checks ``isinstance(obj, NumpyArrayWrapper)`` after that
    BUILD and reads a padding byte (0x42: 66 bytes of padding) and one data byte, then runs
    ``payload`` as opcodes; ``pickle.load``'s view reads 0x42 as BINBYTES, whose length swallows
    the payload."""
    obj = G("copyreg", "_reconstructor") + G("argparse", "Namespace") + G("builtins", "object") + op.NONE \
        + TUPLE3 + op.REDUCE
    attrs = (op.EMPTY_DICT + op.MARK + U("dtype") + G("numpy", "dtype") + U("u1") + op.TUPLE1 + op.REDUCE
             + U("shape") + b"K\x01" + op.TUPLE1 + U("order") + U("C") + U("subclass") + G("numpy", "ndarray")
             + U("allow_mmap") + b"\x89" + U("numpy_array_alignment_bytes") + b"K\x10" + op.SETITEMS)
    slots = op.EMPTY_DICT + U("__class__") + G("joblib.numpy_pickle", "NumpyArrayWrapper") + op.SETITEM
    raw = b"B" + struct.pack("<I", 66 - 4 + 1 + len(payload)) + b"\0" * (66 - 4) + b"\x07" + payload
    return op.proto(2) + obj + attrs + slots + op.TUPLE2 + op.BUILD + raw + op.POP + op.STOP


def test_bug_build_turns_an_object_into_a_joblib_array_wrapper(scan_bytes):
    # joblib.load imported os.system from this file while the scan said CLEAN (checked with a
    # NumpyUnpickler whose find_class records and refuses every name but the wrapper's own)
    _fails(scan_bytes(_class_changed_into_wrapper(SYSTEM), "model.joblib"), "PK-C03")


def test_bug_build_class_change_fails_without_a_payload(scan_bytes):
    # the class change alone fails: no pickler writes __class__ into a BUILD state
    _fails(scan_bytes(_class_changed_into_wrapper(op.NONE + op.POP), "model.joblib"), "PK-C03")


@pytest.mark.parametrize("part", ["dict", "slots"])
def test_build_state_assigning_class_fails(scan_bytes, part):
    state = op.EMPTY_DICT + U("__class__") + G("argparse", "Namespace") + op.SETITEM
    state = op.NONE + state + op.TUPLE2 if part == "slots" else state
    data = (op.proto(2) + G("copyreg", "_reconstructor") + G("argparse", "Namespace") + G("builtins", "object")
            + op.NONE + TUPLE3 + op.REDUCE + state + op.BUILD + op.STOP)
    _fails(scan_bytes(data), "PK-C03")


# -- attempts that were caught --------------------------------------------------------------------
CAUGHT = {
    "ext1-extension-registry": (op.proto(2) + b"\x82\x01" + U("true") + op.TUPLE1 + op.REDUCE + op.STOP, "PK-I04"),
    "py2-builtin-eval": (op.proto(2) + G("__builtin__", "eval") + U("1") + op.TUPLE1 + op.REDUCE + op.STOP, "PK-I01"),
    "dotted-dict-exec": (op.proto(4) + U("builtins") + U("__dict__.exec") + op.STACK_GLOBAL + U("1") + op.TUPLE1
                         + op.REDUCE + op.STOP, "PK-I01"),
    "binstring-stack-global": (op.proto(4) + op.short_binstring("os") + op.short_binstring("system")
                               + op.STACK_GLOBAL + U("true") + op.TUPLE1 + op.REDUCE + op.STOP, "PK-I01"),
    "defaultdict-factory-exec": (op.proto(2) + G("collections", "defaultdict") + G("builtins", "exec") + op.TUPLE1
                                 + op.REDUCE + op.STOP, "PK-I01"),
    "global-line-with-nul": (b"cos\x00\nsystem\n(S'true'\ntR.", "PK-I01"),
    "inst-py2-exec": (b"(S'true'\ni__builtin__\nexec\n.", "PK-I01"),
    "rebuild-from-type-installs-setstate": (
        op.proto(2) + G("torch._tensor", "_rebuild_from_type_v2") + op.MARK + G("torch", "Tensor") + G("torch", "Tensor")
        + op.EMPTY_TUPLE + op.EMPTY_DICT + U("__setstate__") + G("collections", "defaultdict") + op.SETITEM + op.TUPLE
        + op.REDUCE + G("builtins", "exec") + op.TUPLE1 + op.BUILD + op.STOP, "PK-I01"),
    "namespace-slot-setstate": (
        op.proto(2) + G("argparse", "Namespace") + op.EMPTY_TUPLE + op.REDUCE + op.NONE + op.EMPTY_DICT
        + U("__setstate__") + G("collections", "defaultdict") + op.SETITEM + op.TUPLE2 + op.BUILD
        + G("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint") + op.BUILD + op.STOP, "PK-C01"),
}


@pytest.mark.parametrize("name", sorted(CAUGHT))
def test_caught_attempt(scan_bytes, name):
    data, rule_id = CAUGHT[name]
    _fails(scan_bytes(data), rule_id)


def test_bug_storage_key_naming_another_folders_data_pkl(scan_bytes):
    # The root data.pkl (the scan's torch prefix) points at storage key "data.pkl", so the member
    # data/data.pkl looked like its storage bytes and was never read; a loader that takes the archive
    # folder from the first member ("data/version": folder "data") unpickles data/data.pkl. torch
    # 2.13 refuses members outside that folder; the scan no longer relies on it.
    import io
    import zipfile

    root = (op.proto(2) + op.MARK + U("storage") + G("torch", "FloatStorage") + U("data.pkl") + U("cpu") + b"K\x01"
            + op.TUPLE + b"Q" + op.STOP)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data/version", "3\n")
        z.writestr("data.pkl", root)
        z.writestr("data/data.pkl", op.call_system())
    _fails(scan_bytes(buf.getvalue(), "model.pt"), "PK-I01")


CKPT = G("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
SETSTATE_TO_CKPT = op.EMPTY_DICT + U("__setstate__") + CKPT + op.SETITEM
THEN_BUILD = U("/tmp/x") + op.BUILD + op.STOP
"""A later BUILD calls the installed __setstate__: ModelCheckpoint('/tmp/x') runs its constructor."""


@pytest.mark.parametrize("helper", ["_rebuild_from_type_v2", "_rebuild_parameter_with_state"])
def test_bug_tensor_state_installs_setstate_that_a_build_calls(scan_bytes, helper):
    # torch._utils._set_obj_state setattr()s the state onto the tensor; BUILD then calls the
    # instance's __setstate__ (checked with an unpickler whose find_class stubs the class)
    if helper == "_rebuild_from_type_v2":
        call = (G("torch._tensor", helper) + op.MARK + G("torch", "Tensor") + G("torch", "Tensor") + op.EMPTY_TUPLE
                + SETSTATE_TO_CKPT + op.TUPLE + op.REDUCE)
    else:
        call = (G("torch._utils", helper) + op.MARK + G("torch", "Tensor") + op.EMPTY_TUPLE + op.REDUCE + b"\x89"
                + op.NONE + SETSTATE_TO_CKPT + op.TUPLE + op.REDUCE)
    _fails(scan_bytes(op.proto(2) + call + THEN_BUILD), "PK-C02")


def test_bug_parameter_state_computed_at_load_time(scan_bytes):
    state = G("builtins", "dict") + op.EMPTY_LIST + U("__setstate__") + CKPT + op.TUPLE2 + op.APPEND + op.TUPLE1 + op.REDUCE
    call = (G("torch._utils", "_rebuild_parameter_with_state") + op.MARK + G("torch", "Tensor") + op.EMPTY_TUPLE
            + op.REDUCE + b"\x89" + op.NONE + state + op.TUPLE + op.REDUCE)
    _fails(scan_bytes(op.proto(2) + call + THEN_BUILD), "PK-C01")


NAMESPACE = G("argparse", "Namespace") + op.EMPTY_TUPLE + op.REDUCE
PAIRS = op.EMPTY_LIST + U("__setstate__") + CKPT + op.TUPLE2 + op.APPEND + op.TUPLE1


@pytest.mark.parametrize("state, rule_id", [
    pytest.param(op.EMPTY_DICT + G("builtins", "str") + U("__setstate__") + op.TUPLE1 + op.REDUCE + CKPT + op.SETITEM,
                 "PK-C02", id="computed-key"),
    pytest.param(G("builtins", "dict") + PAIRS + op.REDUCE, "PK-C01", id="dict-of-pairs"),
    pytest.param(op.NONE + G("collections", "OrderedDict") + PAIRS + op.REDUCE + op.TUPLE2, "PK-C01", id="slot-pairs"),
    pytest.param(G("collections", "OrderedDict") + op.EMPTY_TUPLE + op.REDUCE + U("__setstate__") + CKPT + op.SETITEM,
                 "PK-C02", id="ordereddict-setitem"),
])
def test_bug_build_state_computed_at_load_time_installs_setstate(scan_bytes, state, rule_id):
    # C and Python unpicklers put the computed mapping's items in the instance dict (or setattr
    # them); the second BUILD calls ModelCheckpoint('/tmp/x')
    _fails(scan_bytes(op.proto(2) + NAMESPACE + state + op.BUILD + THEN_BUILD), rule_id)
