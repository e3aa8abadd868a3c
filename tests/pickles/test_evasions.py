"""Every evasion we can think of, one test each: harmless payloads (``os.system("true")``).

Streams are built opcode by opcode (tests/pickle_ops.py) so each test shows exactly what it sends.
None of these files is ever unpickled.
"""
from __future__ import annotations

import pytest

from tests import pickle_ops as op
from tests.conftest import rule_ids

SYSTEM = op.call_system()


def _fails_with(report, rule_id: str) -> None:
    assert report.verdict == "fail", [str(f) for f in report.findings]
    assert report.exit_code == 1
    assert rule_id in rule_ids(report), [str(f) for f in report.findings]


# -- how an import is spelled ----------------------------------------------------------------------
def test_global_reduce_protocol_0(scan_bytes):
    data = op.global_("os", "system") + op.MARK + op.string("true") + op.TUPLE + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-I01")


def test_global_reduce_protocol_2(scan_bytes):
    report = scan_bytes(SYSTEM)
    _fails_with(report, "PK-I01")
    finding = next(f for f in report.findings if f.rule_id == "PK-I01")
    assert finding.trigger == "os.system" and finding.location.offset == 2


def test_stack_global_unicode_operands(scan_bytes):
    data = (op.proto(4) + op.unicode_("os") + op.unicode_("system") + op.STACK_GLOBAL
            + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-I01")


@pytest.mark.parametrize("push", [op.binstring, op.short_binstring, op.string, op.binunicode],
                         ids=["BINSTRING", "SHORT_BINSTRING", "STRING", "BINUNICODE"])
def test_stack_global_operands_from_other_string_opcodes(scan_bytes, push):
    """picklescan only looked back for *UNICODE opcodes before STACK_GLOBAL."""
    data = op.proto(4) + push("os") + push("system") + op.STACK_GLOBAL + push("true") + op.TUPLE1 + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-I01")


def test_stack_global_operands_through_memo(scan_bytes):
    """Module and name stored with BINPUT/MEMOIZE long before and fetched with BINGET/LONG_BINGET."""
    data = (op.proto(4) + op.unicode_("os") + op.binput(7) + op.POP + op.unicode_("system") + op.MEMOIZE + op.POP
            + op.unicode_("noise") + op.POP
            + op.binget(7) + op.long_binget(1) + op.STACK_GLOBAL + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-I01")


def test_stack_global_operands_swapped_by_memo_and_dup(scan_bytes):
    data = (op.proto(4) + op.unicode_("system") + op.binput(1) + op.POP + op.unicode_("os") + op.binget(1)
            + op.STACK_GLOBAL + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    report = scan_bytes(data)
    _fails_with(report, "PK-I01")
    assert any(f.trigger == "os.system" for f in report.findings)


def test_inst_opcode(scan_bytes):
    data = op.MARK + op.string("true") + op.inst("os", "system") + op.STOP
    _fails_with(scan_bytes(data), "PK-I01")


def test_obj_opcode(scan_bytes):
    data = op.MARK + op.global_("subprocess", "Popen") + op.string("true") + b"o" + op.STOP
    _fails_with(scan_bytes(data), "PK-I01")


def test_newobj_and_newobj_ex(scan_bytes):
    data = op.proto(2) + op.global_("subprocess", "Popen") + op.unicode_("true") + op.TUPLE1 + op.NEWOBJ + op.STOP
    _fails_with(scan_bytes(data), "PK-I01")
    data = (op.proto(4) + op.global_("subprocess", "Popen") + op.unicode_("true") + op.TUPLE1 + op.EMPTY_DICT
            + b"\x92" + op.STOP)
    _fails_with(scan_bytes(data), "PK-I01")


def test_python2_module_names_are_fixed_like_the_unpickler(scan_bytes):
    """``__builtin__.eval`` imports ``builtins.eval`` (``_compat_pickle``)."""
    data = op.proto(2) + op.global_("__builtin__", "eval") + op.unicode_("1") + op.TUPLE1 + op.REDUCE + op.STOP
    report = scan_bytes(data)
    _fails_with(report, "PK-I01")
    assert any(f.trigger == "builtins.eval" for f in report.findings)


@pytest.mark.parametrize("module,name", [
    ("builtins", "getattr"), ("builtins", "exec"), ("builtins", "__import__"), ("posix", "system"),
    ("nt", "system"), ("subprocess", "check_output"), ("runpy", "run_path"), ("pkgutil", "resolve_name"),
    ("importlib", "import_module"), ("operator", "attrgetter"), ("functools", "partial"),
    ("torch", "load"), ("torch.storage", "_load_from_bytes"), ("numpy.testing._private.utils", "runstring"),
    ("pickle", "loads"), ("shutil", "rmtree"), ("webbrowser", "open"), ("torch.utils.cpp_extension", "load_inline"),
    ("torch.jit", "load"), ("ctypes", "CDLL"), ("socket", "create_connection"), ("code", "InteractiveInterpreter"),
])
def test_denylist_gaps_are_covered_by_the_allowlist(scan_bytes, module, name):
    _fails_with(scan_bytes(op.call_system(module, name)), "PK-I01")


@pytest.mark.parametrize("module,name", [
    ("mypackage.evil", "run"), ("torch", "_utils._rebuild_tensor_v2"), ("numpy", "frompyfunc"),
    ("torch._C", "_something"), ("collections", "namedtuple"), ("builtins", "breakpointhook"),
])
def test_anything_outside_the_allowlist_fails_closed(scan_bytes, module, name):
    report = scan_bytes(op.call_system(module, name))
    assert report.exit_code == 1
    assert rule_ids(report) & {"PK-I01", "PK-I02"}


def test_dotted_attribute_path_through_an_allowed_module(scan_bytes):
    """Protocol 4 resolves dotted names: ``torch`` + ``serialization.os.system`` is os.system."""
    data = (op.proto(4) + op.unicode_("torch") + op.unicode_("serialization.os.system") + op.STACK_GLOBAL
            + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-I01")


def test_extension_codes_cannot_be_resolved(scan_bytes):
    data = op.proto(2) + b"\x82\x01" + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-I04")


def test_stack_global_operands_computed_at_load_time(scan_bytes):
    """``str('os')`` is a call result: the module name is unknowable without running the pickle."""
    data = (op.proto(4) + op.global_("builtins", "str") + op.unicode_("os") + op.TUPLE1 + op.REDUCE
            + op.unicode_("system") + op.STACK_GLOBAL + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-I04")


# -- what is done with imports ---------------------------------------------------------------------
def test_calling_a_call_result(scan_bytes):
    """A getattr-like gadget built from allowed callables: calling what a call returned."""
    data = (op.proto(2) + op.global_("builtins", "dict") + op.EMPTY_TUPLE + op.REDUCE
            + op.unicode_("true") + op.TUPLE1 + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-C01")


def test_calling_a_memo_value_that_is_not_an_import(scan_bytes):
    data = op.proto(2) + op.unicode_("os.system") + op.binput(0) + op.binget(0) + op.EMPTY_TUPLE + op.REDUCE + op.STOP
    _fails_with(scan_bytes(data), "PK-C01")


def test_build_on_an_imported_object_monkey_patches_it(scan_bytes):
    """BUILD with slot state on a global is ``setattr(global, k, v)``: a loader patch."""
    data = (op.proto(2) + op.global_("collections", "OrderedDict") + op.NONE + op.EMPTY_DICT
            + op.unicode_("__init__") + op.global_("builtins", "print") + op.SETITEM + op.TUPLE2 + op.BUILD + op.STOP)
    _fails_with(scan_bytes(data), "PK-C03")


def test_setitem_on_an_imported_object(scan_bytes):
    data = (op.proto(2) + op.global_("collections", "OrderedDict") + op.unicode_("k") + op.unicode_("v")
            + op.SETITEM + op.STOP)
    _fails_with(scan_bytes(data), "PK-C03")


def test_benign_class_invoked_with_arguments(scan_bytes):
    data = (op.proto(2) + op.global_("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
            + op.unicode_("/tmp/x") + op.TUPLE1 + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-C02")


def test_benign_class_invoked_through_copyreg_reconstructor(scan_bytes):
    cls = op.global_("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
    data = (op.proto(2) + op.global_("copyreg", "_reconstructor") + cls + cls + op.unicode_("/tmp/x")
            + b"\x87" + op.REDUCE + op.STOP)
    _fails_with(scan_bytes(data), "PK-C02")


def test_benign_class_as_dict_key_passes(scan_bytes):
    data = (op.proto(2) + op.EMPTY_DICT + op.global_("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
            + op.EMPTY_DICT + op.SETITEM + op.STOP)
    report = scan_bytes(data)
    assert report.exit_code == 0 and rule_ids(report) == {"PK-I03"}


def test_nested_pickle_handed_to_load_from_bytes(scan_bytes):
    data = (op.proto(2) + op.global_("torch.storage", "_load_from_bytes") + op.binbytes(SYSTEM) + op.TUPLE1
            + op.REDUCE + op.STOP)
    report = scan_bytes(data)
    _fails_with(report, "PK-I01")
    nested = [f for f in report.findings if f.location.members and "_load_from_bytes" in f.location.members[0]]
    assert any(f.trigger == "os.system" for f in nested)
    assert "PK-C04" in rule_ids(report)


def test_nested_pickle_as_codecs_encoded_text(scan_bytes):
    """Protocol-2 bytes travel as ``_codecs.encode(text, 'latin1')``; the nested scan follows it."""
    encoded = (op.global_("_codecs", "encode") + op.unicode_(SYSTEM.decode("latin-1")) + op.unicode_("latin1")
               + op.TUPLE2 + op.REDUCE)
    data = op.proto(2) + op.global_("pickle", "loads") + encoded + op.TUPLE1 + op.REDUCE + op.STOP
    report = scan_bytes(data)
    assert any(f.trigger == "os.system" and f.location.members for f in report.findings)


# -- stream structure -------------------------------------------------------------------------------
def test_invalid_opcode_is_never_clean(scan_bytes):
    report = scan_bytes(op.proto(2) + op.EMPTY_DICT + b"\xff" + op.STOP)
    assert report.verdict == "error" and report.exit_code == 2
    assert "PK-S01" in rule_ids(report)


def test_truncated_stream_is_never_clean(scan_bytes):
    report = scan_bytes(op.proto(2) + op.EMPTY_DICT + op.unicode_("key")[:-1])
    assert report.exit_code == 2 and "PK-S02" in rule_ids(report)


def test_import_before_a_parse_error_is_still_reported(scan_bytes):
    """Partial results survive the break: the loader already ran the import when it failed."""
    report = scan_bytes(SYSTEM[:-1] + b"\xff")
    assert report.exit_code == 1
    assert {"PK-I01", "PK-S01"} <= rule_ids(report)


def test_second_pickle_after_stop_is_scanned(scan_bytes):
    benign = op.proto(2) + op.EMPTY_DICT + op.STOP
    report = scan_bytes(benign + SYSTEM)
    _fails_with(report, "PK-I01")
    assert "PK-S04" in rule_ids(report)


def test_garbage_after_stop_is_an_error(scan_bytes):
    report = scan_bytes(op.proto(2) + op.EMPTY_DICT + op.STOP + b"\x00\x01\x02garbage")
    assert report.exit_code == 2 and "PK-S03" in rule_ids(report)


def test_frame_longer_than_the_stream_is_read_like_pickle_py(scan_bytes):
    """pickle.py (joblib's unpickler) runs a short frame's opcodes, so the payload in it counts;
    the C unpickler refuses the frame, so the two readers disagree (PK-S06)."""
    frame = b"\x95" + (10**9).to_bytes(8, "little")
    report = scan_bytes(op.proto(4) + frame + op.EMPTY_DICT + op.STOP)
    assert "PK-S06" in rule_ids(report) and report.exit_code == 1
    _fails_with(scan_bytes(op.proto(4) + frame + SYSTEM[2:]), "PK-I01")


def test_out_of_band_buffers(scan_bytes):
    report = scan_bytes(op.proto(5) + b"\x97" + op.STOP)
    assert report.exit_code == 2 and "PK-S05" in rule_ids(report)


def test_memo_get_of_missing_index(scan_bytes):
    report = scan_bytes(op.proto(2) + op.binget(3) + op.STOP)
    assert report.exit_code == 2


def test_stack_underflow_below_a_mark(scan_bytes):
    """The unpickler fences the stack at a MARK: REDUCE cannot take arguments from below it."""
    data = op.proto(2) + op.global_("builtins", "set") + op.EMPTY_TUPLE + op.MARK + op.REDUCE + op.STOP
    assert scan_bytes(data).exit_code == 2


def test_opcode_limit_is_an_error_not_clean(tmp_path):
    import tensorsafe

    path = tmp_path / "many.pkl"
    path.write_bytes(op.proto(2) + op.EMPTY_LIST + (b"K\x01a" * 50_000) + op.STOP)
    report = tensorsafe.scan(path, limits=tensorsafe.ScanLimits(max_opcodes=1 << 16))
    assert report.exit_code == 2 and "PK-L01" in rule_ids(report)


def test_payload_hidden_behind_a_misleading_extension(scan_bytes):
    for name in ("model.safetensors", "image.png", "config.json", "weights.npy", "README.md"):
        _fails_with(scan_bytes(SYSTEM, name=name), "PK-I01")
