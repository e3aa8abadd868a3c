"""Calls in every form (issue 11 §2): one test per opcode or helper that can run a constructor.

A benign-tier class that is not invocable (Lightning's ModelCheckpoint) may be imported and built the
way protocol 2+ pickles an object (NEWOBJ with no arguments, then BUILD), never called with arguments,
whichever opcode or helper does the calling. Each test isolates one check: removing it fails that test.
Payloads are harmless and nothing here is unpickled.
"""
from __future__ import annotations

import pytest

from tests import pickle_ops as op
from tests.conftest import rule_ids

CKPT = op.global_("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
OBJECT = op.global_("builtins", "object")
DICT = op.global_("builtins", "dict")
RECONSTRUCTOR = op.global_("copyreg", "_reconstructor")
NEWOBJ_EX = b"\x92"
TUPLE3 = b"\x87"
NEWFALSE = b"\x89"
NUMPY_PICKLE = "numpy.random._pickle"


def _fails_with(report, rule_id: str) -> None:
    assert report.exit_code == 1, [str(f) for f in report.findings]
    assert rule_id in rule_ids(report), [str(f) for f in report.findings]


def _passes(report) -> None:
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert rule_ids(report) <= {"PK-I03"}, [str(f) for f in report.findings]


# -- a benign class that is not invocable, called through each form --------------------------------
def test_inst_calls_a_benign_class(scan_bytes):
    data = op.proto(2) + op.MARK + op.unicode_("/tmp/x") + op.inst(*_ckpt_name()) + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_obj_calls_a_benign_class(scan_bytes):
    data = op.proto(2) + op.MARK + CKPT + op.unicode_("/tmp/x") + op.OBJ + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_newobj_with_arguments_calls_a_benign_class(scan_bytes):
    data = op.proto(2) + CKPT + op.unicode_("/tmp/x") + op.TUPLE1 + op.NEWOBJ + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_newobj_with_arguments_computed_at_load_time(scan_bytes):
    args = op.global_("builtins", "tuple") + op.EMPTY_LIST + op.unicode_("/tmp/x") + op.APPEND + op.TUPLE1 + op.REDUCE
    data = op.proto(2) + CKPT + args + op.NEWOBJ + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_newobj_ex_with_positional_arguments_calls_a_benign_class(scan_bytes):
    data = op.proto(4) + CKPT + op.unicode_("/tmp/x") + op.TUPLE1 + op.EMPTY_DICT + NEWOBJ_EX + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_newobj_ex_with_keyword_arguments_calls_a_benign_class(scan_bytes):
    kwargs = op.EMPTY_DICT + op.unicode_("dirpath") + op.unicode_("/tmp/x") + op.SETITEM
    data = op.proto(4) + CKPT + op.EMPTY_TUPLE + kwargs + NEWOBJ_EX + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_reduce_calls_a_benign_class(scan_bytes):
    data = op.proto(2) + CKPT + op.EMPTY_TUPLE + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_reconstructor_builds_a_benign_class_with_arguments(scan_bytes):
    # _reconstructor(cls, dict, state): dict.__new__(cls, state), then dict.__init__(obj, state)
    data = op.proto(2) + RECONSTRUCTOR + CKPT + DICT + op.unicode_("/tmp/x") + TUPLE3 + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_reconstructor_calls_a_benign_base_class(scan_bytes):
    # _reconstructor(dict, cls, state): cls.__new__(dict, state), then cls.__init__(obj, state)
    data = op.proto(2) + RECONSTRUCTOR + DICT + CKPT + op.unicode_("/tmp/x") + TUPLE3 + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_reconstructor_class_that_is_not_an_import(scan_bytes):
    computed = op.global_("builtins", "dict") + op.EMPTY_TUPLE + op.REDUCE
    data = op.proto(2) + RECONSTRUCTOR + computed + OBJECT + op.NONE + TUPLE3 + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-C01")


def test_build_installs_setstate_that_a_second_build_calls(scan_bytes):
    # BUILD({'__setstate__': cls}) puts cls in the Namespace's __dict__; pickle's next BUILD looks up
    # __setstate__ on the instance and calls cls('/tmp/x') (both CPython unpicklers do)
    namespace = op.global_("argparse", "Namespace") + op.EMPTY_TUPLE + op.REDUCE
    install = op.EMPTY_DICT + op.unicode_("__setstate__") + CKPT + op.SETITEM + op.BUILD
    data = op.proto(2) + namespace + install + op.unicode_("/tmp/x") + op.BUILD + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_build_installs_setstate_through_slot_state(scan_bytes):
    namespace = op.global_("argparse", "Namespace") + op.EMPTY_TUPLE + op.REDUCE
    slots = op.EMPTY_DICT + op.unicode_("__setstate__") + CKPT + op.SETITEM
    install = op.NONE + slots + op.TUPLE2 + op.BUILD
    data = op.proto(2) + namespace + install + op.unicode_("/tmp/x") + op.BUILD + op.STOP
    _fails_with(scan_bytes(data), "PK-C02")


def test_build_installs_a_computed_setstate(scan_bytes):
    namespace = op.global_("argparse", "Namespace") + op.EMPTY_TUPLE + op.REDUCE
    computed = op.global_("argparse", "Namespace") + op.EMPTY_TUPLE + op.REDUCE
    install = op.EMPTY_DICT + op.unicode_("__setstate__") + computed + op.SETITEM + op.BUILD
    data = op.proto(2) + namespace + install + op.unicode_("/tmp/x") + op.BUILD + op.STOP
    _fails_with(scan_bytes(data), "PK-C01")


# -- how a benign object is really pickled: built without arguments, then its state set ------------
def test_newobj_without_arguments_then_build_passes(scan_bytes):
    state = op.EMPTY_DICT + op.unicode_("dirpath") + op.unicode_("/tmp/x") + op.SETITEM
    data = op.proto(2) + CKPT + op.EMPTY_TUPLE + op.NEWOBJ + state + op.BUILD + op.STOP
    _passes(scan_bytes(data))


def test_newobj_ex_without_arguments_then_build_passes(scan_bytes):
    data = op.proto(4) + CKPT + op.EMPTY_TUPLE + op.EMPTY_DICT + NEWOBJ_EX + op.EMPTY_DICT + op.BUILD + op.STOP
    _passes(scan_bytes(data))


def test_reconstructor_on_object_then_build_passes(scan_bytes):
    # protocol 0/1: copyreg._reconstructor(cls, object, None) is object.__new__(cls)
    data = (op.proto(2) + RECONSTRUCTOR + CKPT + OBJECT + op.NONE + TUPLE3 + op.REDUCE + op.EMPTY_DICT + op.BUILD
            + op.STOP)
    _passes(scan_bytes(data))


# -- a dangerous callable reached through each form ------------------------------------------------
@pytest.mark.parametrize("data", [
    op.MARK + op.string("true") + op.inst("os", "system") + op.STOP,
    op.MARK + op.global_("os", "system") + op.string("true") + op.OBJ + op.STOP,
    op.proto(2) + op.global_("subprocess", "Popen") + op.unicode_("true") + op.TUPLE1 + op.NEWOBJ + op.STOP,
    op.proto(2) + op.global_("subprocess", "Popen") + op.EMPTY_TUPLE + op.NEWOBJ + op.STOP,
    op.proto(4) + op.global_("subprocess", "Popen") + op.unicode_("true") + op.TUPLE1 + op.EMPTY_DICT + NEWOBJ_EX
    + op.STOP,
    op.proto(2) + RECONSTRUCTOR + DICT + op.global_("os", "system") + op.unicode_("true") + TUPLE3 + op.REDUCE + op.STOP,
], ids=["inst", "obj", "newobj", "newobj-no-args", "newobj_ex", "reconstructor"])
def test_dangerous_callable_through_every_form(scan_bytes, data):
    _fails_with(scan_bytes(data), "PK-I01")


# -- indirect callers: the argument a helper calls is judged as a call -----------------------------
def _reduce(func: bytes, *args: bytes) -> bytes:
    return func + op.MARK + b"".join(args) + op.TUPLE + op.REDUCE


def _np(name: str) -> bytes:
    return op.global_(NUMPY_PICKLE, name)


REBUILD_FROM_TYPE = op.global_("torch._tensor", "_rebuild_from_type_v2")
TENSOR = op.global_("torch", "Tensor")


@pytest.mark.parametrize("data", [
    _reduce(_np("__bit_generator_ctor"), CKPT),
    _reduce(_np("__generator_ctor"), CKPT),
    _reduce(_np("__generator_ctor"), op.unicode_("PCG64"), CKPT),
    _reduce(_np("__randomstate_ctor"), CKPT),
    _reduce(_np("__randomstate_ctor"), op.unicode_("MT19937"), CKPT),
    _reduce(op.global_("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"), CKPT, op.NONE, op.NONE),
    _reduce(REBUILD_FROM_TYPE, CKPT, TENSOR, op.EMPTY_TUPLE, op.EMPTY_DICT),
    _reduce(REBUILD_FROM_TYPE, op.global_("torch._utils", "_rebuild_tensor_v2"), CKPT, op.EMPTY_TUPLE, op.EMPTY_DICT),
    _reduce(op.global_("collections", "defaultdict"), CKPT),
], ids=["bit_generator_ctor", "generator_ctor-name", "generator_ctor-ctor", "randomstate_ctor-name",
        "randomstate_ctor-ctor", "pyx_unpickle_SeedSequence", "rebuild_from_type-func", "rebuild_from_type-type",
        "defaultdict-factory"])
def test_indirect_caller_handed_a_benign_class(scan_bytes, data):
    _fails_with(scan_bytes(op.proto(2) + data + op.STOP), "PK-C02")


@pytest.mark.parametrize("data", [
    _reduce(_np("__bit_generator_ctor"), op.global_("os", "system")),
    _reduce(_np("__generator_ctor"), op.unicode_("PCG64"), op.global_("os", "system")),
    _reduce(_np("__randomstate_ctor"), op.global_("os", "system")),
    _reduce(REBUILD_FROM_TYPE, op.global_("os", "system"), TENSOR, op.MARK + op.unicode_("true") + op.TUPLE,
            op.EMPTY_DICT),
    _reduce(op.global_("collections", "defaultdict"), op.global_("os", "system")),
], ids=["bit_generator_ctor", "generator_ctor", "randomstate_ctor", "rebuild_from_type", "defaultdict"])
def test_indirect_caller_handed_a_dangerous_callable(scan_bytes, data):
    _fails_with(scan_bytes(op.proto(2) + data + op.STOP), "PK-I01")


@pytest.mark.parametrize("data", [
    _reduce(_np("__bit_generator_ctor"), _reduce(DICT)),
    _reduce(_np("__generator_ctor"), op.unicode_("PCG64"), _reduce(DICT)),
    _reduce(REBUILD_FROM_TYPE, _reduce(DICT), TENSOR, op.EMPTY_TUPLE, op.EMPTY_DICT),
    _reduce(op.global_("collections", "defaultdict"), op.unicode_("list")),
    _reduce(op.global_("torch._utils", "_rebuild_device_tensor_from_cpu_tensor"),
            _reduce(op.global_("argparse", "Namespace")), op.NONE, op.unicode_("cpu"), NEWFALSE),
], ids=["bit_generator_ctor-call-result", "generator_ctor-call-result", "rebuild_from_type-call-result",
        "defaultdict-str", "device_tensor-not-a-tensor"])
def test_indirect_caller_handed_a_value_that_is_not_an_import(scan_bytes, data):
    _fails_with(scan_bytes(op.proto(2) + data + op.STOP), "PK-C01")


def test_indirect_caller_with_arguments_computed_at_load_time(scan_bytes):
    args = op.global_("builtins", "tuple") + op.EMPTY_LIST + CKPT + op.APPEND + op.TUPLE1 + op.REDUCE
    data = op.proto(2) + _np("__bit_generator_ctor") + args + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-C01")


def test_indirect_caller_handed_another_indirect_caller(scan_bytes):
    # _rebuild_from_type_v2(_reconstructor, Tensor, (dict, cls, None), {}) calls cls.__init__ out of sight
    inner = op.MARK + DICT + CKPT + op.NONE + op.TUPLE
    data = op.proto(2) + _reduce(REBUILD_FROM_TYPE, RECONSTRUCTOR, TENSOR, inner, op.EMPTY_DICT) + op.STOP
    _fails_with(scan_bytes(data), "PK-C01")


@pytest.mark.parametrize("data", [
    _reduce(_np("__randomstate_ctor"), op.unicode_("MT19937")),
    _reduce(_np("__generator_ctor"), op.unicode_("PCG64"), _np("__bit_generator_ctor")),
    _reduce(_np("__generator_ctor"), _reduce(_np("__bit_generator_ctor"), op.global_("numpy.random._pcg64", "PCG64"))),
    _reduce(op.global_("collections", "defaultdict"), op.global_("builtins", "list")),
    _reduce(op.global_("collections", "defaultdict"), op.NONE),
], ids=["numpy1-randomstate", "numpy1-generator", "numpy2-generator", "defaultdict-list", "defaultdict-none"])
def test_indirect_callers_as_libraries_write_them_pass(scan_bytes, data):
    _passes(scan_bytes(op.proto(2) + data + op.STOP))


def _ckpt_name() -> tuple[str, str]:
    return "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"
