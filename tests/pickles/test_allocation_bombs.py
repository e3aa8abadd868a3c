"""PK-A01: pickles whose allowed calls make the loader allocate memory the file does not hold.

Every callee here is allowed (``torch.load(weights_only=True)`` runs ``bytearray``, ``set``,
``Counter`` and the tensor rebuilds), so before PK-A01 each of these files scanned clean while a
few bytes of it made its loader allocate a terabyte. Files are built opcode by opcode (or written
by torch/numpy and then patched) and only scanned, never loaded. What real writers produce
(``bytearray(b"...")``, numpy arrays, torch.save zip and legacy files) stays clean.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

import tensorsafe
from tensorsafe.limits import LOAD_ITEM_BYTES, MAX_LOAD_ALLOCATION_BYTES
from tests import pickle_ops as op

TERA = 10**12


def _long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _call(module: str, name: str, *args: bytes) -> bytes:
    return op.global_(module, name) + op.MARK + b"".join(args) + op.TUPLE + op.REDUCE


def _range(*bounds: bytes) -> bytes:
    return _call("builtins", "range", *bounds)


def _pickle(body: bytes) -> bytes:
    return op.proto(2) + body + op.STOP


def _bomb(report: tensorsafe.Report) -> str:
    assert report.verdict == "fail", [str(f) for f in report.findings]
    messages = [f.message for f in report.findings if f.rule_id == "PK-A01"]
    assert messages, [str(f) for f in report.findings]
    return messages[0]


def _clean(report: tensorsafe.Report) -> None:
    assert report.verdict == "clean", [str(f) for f in report.findings]


# -- builtins and collections fed a count instead of data ----------------------------------------
@pytest.mark.parametrize("body", [
    _call("builtins", "bytearray", _long(TERA)),
    _call("__builtin__", "bytearray", _long(3 * 10**9)),  # the Python 2 name, fixed by the unpickler
    _call("builtins", "bytes", _long(2**40)),
    _call("builtins", "set", _range(_long(TERA))),
    _call("builtins", "frozenset", _range(_long(TERA))),
    _call("builtins", "list", _range(_long(0), _long(TERA))),
    _call("builtins", "tuple", _range(_long(TERA), _long(0), _long(-1))),
    _call("collections", "deque", _range(_long(TERA))),
    _call("collections", "Counter", _range(_long(TERA))),
    _call("torch", "Size", _range(_long(TERA))),
], ids=["bytearray", "py2-bytearray", "bytes", "set", "frozenset", "list", "tuple-descending", "deque", "Counter",
        "torch.Size"])
def test_container_of_a_huge_count_fails(scan_bytes, body):
    assert "MAX_LOAD_ALLOCATION_BYTES" in _bomb(scan_bytes(_pickle(body)))


def test_bomb_inside_a_torch_checkpoint_fails(scan_bytes):
    """torch.load(weights_only=True) allows builtins.bytearray: the classic few-byte bomb in a state dict."""
    data_pkl = _pickle(op.EMPTY_DICT + op.unicode_("x") + _call("builtins", "bytearray", _long(TERA)) + op.SETITEM)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")
    assert "bytearray" in _bomb(scan_bytes(buf.getvalue(), "model.pt"))


@pytest.mark.parametrize("count", [
    _call("builtins", "int", op.unicode_(str(TERA))),  # bytes(int('1000000000000'))
    _call("numpy.core.multiarray", "scalar", _call("numpy", "dtype", op.unicode_("i8")), op.binbytes(b"\0" * 8)),
], ids=["int-of-text", "numpy-scalar"])
def test_byte_count_computed_at_load_time_fails(scan_bytes, count):
    """Anything with ``__index__`` (an int parsed from text, a numpy scalar) is a count to bytes()."""
    assert "computed at load time" in _bomb(scan_bytes(_pickle(_call("builtins", "bytearray", count))))


def test_range_of_a_computed_length_fails(scan_bytes):
    body = _call("builtins", "list", _range(_call("builtins", "int", op.unicode_(str(TERA)))))
    assert "computed at load time" in _bomb(scan_bytes(_pickle(body)))


def test_bound_is_the_named_limit(scan_bytes):
    """Counts up to the bound stay clean (no pickler writes them, but they cost at most 1 GiB)."""
    _clean(scan_bytes(_pickle(_call("builtins", "bytearray", _long(MAX_LOAD_ALLOCATION_BYTES)))))
    _bomb(scan_bytes(_pickle(_call("builtins", "bytearray", _long(MAX_LOAD_ALLOCATION_BYTES + 1)))))
    items = MAX_LOAD_ALLOCATION_BYTES // LOAD_ITEM_BYTES
    _clean(scan_bytes(_pickle(_call("builtins", "list", _range(_long(items))))))
    _bomb(scan_bytes(_pickle(_call("builtins", "list", _range(_long(items + 1))))))


@pytest.mark.parametrize("body", [
    _range(_long(TERA)),  # a range object is three integers
    _call("builtins", "slice", _long(TERA)),
    _call("builtins", "bytes", _range(_long(TERA))),  # bytes(range(...)) stops at 256
    _call("builtins", "bytearray", op.binbytes(b"abc")),
    _call("builtins", "bytearray", op.unicode_("abc"), op.unicode_("latin-1")),
    _call("builtins", "set", op.MARK + _long(TERA) + op.TUPLE),  # one huge item, not a huge count
], ids=["range", "slice", "bytes-of-range", "bytearray-of-bytes", "bytearray-of-text", "set-of-a-list"])
def test_values_whose_size_is_in_the_file_stay_clean(scan_bytes, body):
    _clean(scan_bytes(_pickle(body)))


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_bytes_and_containers_as_picklers_write_them_stay_clean(scan_bytes, protocol):
    value = {"b": bytearray(b"ab\xff" * 1000), "e": bytearray(), "raw": b"x", "s": {1, 2}, "f": frozenset({3}),
             "d": collections.deque([1, 2], 5), "c": collections.Counter("abca"), "r": range(TERA)}
    _clean(scan_bytes(pickle.dumps(value, protocol=protocol)))


# -- numpy: shapes with no data behind them ----------------------------------------------------
_NDARRAY = op.global_("numpy", "ndarray")


def _object_array(shape: bytes, items: bytes) -> bytes:
    """numpy's own pickle of an object array, with its BUILD state's shape and list replaced."""
    dtype = _call("numpy", "dtype", op.unicode_("O8"), b"\x89\x88") + op.MARK + _long(3) + op.unicode_("|") \
        + op.NONE * 3 + _long(-1) + _long(-1) + _long(63) + op.TUPLE + op.BUILD
    state = op.MARK + _long(1) + shape + dtype + b"\x89" + op.EMPTY_LIST + op.MARK + items + b"e" + op.TUPLE
    return _call("numpy.core.multiarray", "_reconstruct", _NDARRAY, op.MARK + _long(0) + op.TUPLE,
                 op.short_binstring("b")) + state + op.BUILD


@pytest.mark.parametrize("body", [
    _call("numpy", "ndarray", op.MARK + _long(TERA) + op.TUPLE),
    _call("numpy", "ndarray", op.MARK + _long(10**6) + _long(10**6) + op.TUPLE, op.unicode_("O")),
    _call("numpy.core.multiarray", "_reconstruct", _NDARRAY, op.MARK + _long(TERA) + op.TUPLE,
          op.short_binstring("b")),
    _call("numpy._core.multiarray", "_reconstruct", _NDARRAY, op.MARK + _long(2**20) + _long(2**20) + op.TUPLE,
          op.short_binstring("b")),
    _object_array(op.MARK + _long(10**10) + op.TUPLE, op.NONE),
], ids=["ndarray-shape", "ndarray-object", "reconstruct-shape", "reconstruct-numpy2", "object-state"])
def test_numpy_shape_without_its_data_fails(scan_bytes, body):
    assert "numpy" in _bomb(scan_bytes(_pickle(body)))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_stay_clean(scan_bytes, protocol):
    arrays = [np.zeros((3, 4), np.float32), np.array([1, "a", None], dtype=object), np.arange(5, dtype="<u2"),
              np.array(["ab", "c"]), np.zeros((0, 7)), np.float64(2.5), np.zeros(2, dtype=[("a", "i4"), ("b", "O")])]
    _clean(scan_bytes(pickle.dumps(arrays, protocol=protocol)))


def test_object_array_state_with_its_items_stays_clean(scan_bytes):
    _clean(scan_bytes(_pickle(_object_array(op.MARK + _long(3) + op.TUPLE, op.NONE * 3))))


# -- torch: a persistent id claiming more storage than the file holds ----------------------------
NUMEL = 1234
_PID_NUMEL = b"M" + NUMEL.to_bytes(2, "little")  # BININT2: the first occurrence is the persistent id's numel


def _claiming(pickled: bytes, numel: int) -> bytes:
    at = pickled.index(_PID_NUMEL)
    return pickled[:at] + _long(numel) + pickled[at + len(_PID_NUMEL):]


def _torch_zip(tmp_path, numel: int) -> bytes:
    saved = tmp_path / "saved.pt"
    torch.save({"w": torch.zeros(NUMEL, dtype=torch.uint8)}, saved)
    out = io.BytesIO()
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, _claiming(data, numel) if info.filename.endswith("/data.pkl") else data)
    return out.getvalue()


def _torch_legacy(tmp_path, numel: int) -> bytes:
    saved = tmp_path / "saved-legacy.pt"
    torch.save({"w": torch.zeros(NUMEL, dtype=torch.uint8)}, saved, _use_new_zipfile_serialization=False)
    data = saved.read_bytes()
    head = data.index(b"storage")  # the main object's persistent id, after the magic, protocol and system info
    return data[:head] + _claiming(data[head:], numel)


@pytest.mark.parametrize("build", [_torch_zip, _torch_legacy], ids=["zip", "legacy"])
def test_storage_claiming_more_than_the_file_holds_fails(tmp_path, scan_bytes, build):
    """torch allocates numel * element size for the storage before it reads (and size-checks) its bytes."""
    message = _bomb(scan_bytes(build(tmp_path, TERA), "model.pt"))
    assert f"{TERA:,} bytes" in message and f"{NUMEL:,}" in message


@pytest.mark.parametrize("build", [_torch_zip, _torch_legacy], ids=["zip", "legacy"])
def test_storage_claiming_what_the_file_holds_stays_clean(tmp_path, scan_bytes, build):
    _clean(scan_bytes(build(tmp_path, NUMEL), "model.pt"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_with_shared_and_typed_storages_stays_clean(tmp_path, zip_format):
    base = torch.arange(12, dtype=torch.float64)
    state = {"a": base, "view": base[2:5], "half": torch.ones(3, 3, dtype=torch.float16), "q": torch.ones(4).bool(),
             "b": bytearray(b"xyz"), "n": np.arange(3)}
    path = tmp_path / "model.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    _clean(tensorsafe.scan(path))


# -- the same allocations reached through a helper, a NEWOBJ, or a tensor view --------------------
_TENSOR_TYPE = op.global_("torch", "Tensor")


@pytest.mark.parametrize("body", [
    _call("copyreg", "_reconstructor", op.global_("builtins", "bytearray"), op.global_("builtins", "bytearray"),
          _long(TERA)),  # bytearray.__init__(obj, 10**12)
    _call("torch._tensor", "_rebuild_from_type_v2", op.global_("builtins", "bytearray"), _TENSOR_TYPE,
          op.MARK + _long(TERA) + op.TUPLE, op.EMPTY_DICT),  # weights_only allows both
    op.global_("builtins", "tuple") + op.MARK + _range(_long(TERA)) + op.TUPLE + op.NEWOBJ,  # tuple.__new__ fills it
], ids=["copyreg-reconstructor", "rebuild-from-type", "newobj-tuple"])
def test_allocation_through_a_helper_fails(scan_bytes, body):
    _bomb(scan_bytes(_pickle(body)))


def test_newobj_of_a_type_filled_by_init_stays_clean(scan_bytes):
    """``list.__new__(list, range(n))`` ignores its argument (``__init__`` fills a list, NEWOBJ does not run it)."""
    _clean(scan_bytes(_pickle(op.global_("builtins", "list") + op.MARK + _range(_long(TERA)) + op.TUPLE + op.NEWOBJ)))


def test_mapping_of_a_range_is_not_a_bomb(scan_bytes):
    """``OrderedDict(range(n))`` raises at its first item (an int is not a pair): no allocation."""
    _clean(scan_bytes(_pickle(_call("collections", "OrderedDict", _range(_long(TERA))))))


def _stride_zero_tensor(rows: int, wrap: str = "") -> bytes:
    """``_rebuild_tensor_v2`` of a view with ``rows`` rows of stride 0 over a one-byte storage."""
    pid = op.MARK + op.unicode_("storage") + op.global_("torch", "ByteStorage") + op.unicode_("0") \
        + op.unicode_("cpu") + _long(1) + op.TUPLE + b"Q"
    tensor = _call("torch._utils", "_rebuild_tensor_v2", pid, _long(0), op.MARK + _long(rows) + _long(2) + op.TUPLE,
                   op.MARK + _long(0) + _long(0) + op.TUPLE, b"\x89", _call("collections", "OrderedDict"))
    if wrap == "parameter":
        tensor = _call("torch._utils", "_rebuild_parameter", tensor, b"\x89", _call("collections", "OrderedDict"))
    return tensor


def _torch_zip_of(data_pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/data/0", b"\0")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("container,wrap", [("set", ""), ("list", "parameter")])
def test_container_of_a_stride_zero_view_fails(scan_bytes, container, wrap):
    """A view of 10**12 rows over one stored byte (torch accepts stride 0): iterating it makes 10**12 tensors."""
    data_pkl = _pickle(_call("builtins", container, _stride_zero_tensor(TERA, wrap)))
    assert f"{TERA:,} items" in _bomb(scan_bytes(_torch_zip_of(data_pkl), "model.pt"))


def test_mapping_of_a_stride_zero_view_of_pairs_fails(scan_bytes):
    data_pkl = _pickle(_call("collections", "OrderedDict", _stride_zero_tensor(TERA)))
    _bomb(scan_bytes(_torch_zip_of(data_pkl), "model.pt"))


def test_small_stride_zero_view_stays_clean(scan_bytes):
    _clean(scan_bytes(_torch_zip_of(_pickle(_call("builtins", "list", _stride_zero_tensor(3)))), "model.pt"))


def test_storage_with_no_record_fails(scan_bytes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", _pickle(_stride_zero_tensor(3)))
        z.writestr("archive/version", "3\n")
    assert "no record" in _bomb(scan_bytes(buf.getvalue(), "model.pt"))


def _dtype(code: str, elsize: int) -> bytes:
    """``numpy.dtype(code, False, True)`` with numpy's BUILD state, its ``elsize`` as given."""
    return _call("numpy", "dtype", op.unicode_(code), b"\x89\x88") + op.MARK + _long(3) + op.unicode_("|") \
        + op.NONE * 3 + _long(elsize) + _long(1) + _long(0) + op.TUPLE + op.BUILD


@pytest.mark.parametrize("dtype", [op.unicode_("V2000000000"), _dtype("V", 2**30), _dtype("V8", 2**31 - 1)],
                         ids=["type-string", "state-elsize", "state-numpy-would-not-write"])
def test_numpy_item_size_counts(scan_bytes, dtype):
    """A thousand elements of a 1-2 GB void dtype: the item size is numpy's, from the dtype's state too."""
    body = _call("numpy.core.multiarray", "_reconstruct", _NDARRAY, op.MARK + _long(1000) + op.TUPLE, dtype)
    _bomb(scan_bytes(_pickle(body)))


def test_many_calls_under_the_bound_add_up(scan_bytes):
    """A thousand ``bytearray(10**8)`` (each under 1 GiB, 100 GB together): the loader keeps them all."""
    one = _call("builtins", "bytearray", _long(10**8))
    report = scan_bytes(_pickle(op.EMPTY_LIST + op.MARK + one * 1000 + b"e"))
    assert "this pickle allocates" in _bomb(report)
    assert sum(f.rule_id == "PK-A01" for f in report.findings) == 1
    _clean(scan_bytes(_pickle(op.EMPTY_LIST + op.MARK + one * 10 + b"e")))  # 1 GB: at the bound


def test_checkpoints_sharing_storage_keys_in_one_archive_stay_clean(tmp_path, scan_bytes):
    """Two torch.save files zipped together both name storage '0', of different sizes: each is
    checked against its own claims (the first file's larger claim is not the second's)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, numel in (("big.pt", 5000), ("small.pt", 4)):
            saved = tmp_path / name
            torch.save({"w": torch.zeros(numel, dtype=torch.uint8)}, saved, _use_new_zipfile_serialization=True)
            z.writestr(name, saved.read_bytes())
        for name, numel in (("big-legacy.pt", 5000), ("small-legacy.pt", 4)):
            saved = tmp_path / name
            torch.save({"w": torch.zeros(numel, dtype=torch.uint8)}, saved, _use_new_zipfile_serialization=False)
            z.writestr(name, saved.read_bytes())
    _clean(scan_bytes(out.getvalue(), "models.zip"))


def _state_dict_of_a_stride_zero_view(rows: int) -> bytes:
    return _torch_zip_of(_pickle(_call("collections", "OrderedDict") + op.MARK + op.unicode_("w")
                                 + _stride_zero_tensor(rows) + op.SETITEMS))


def test_stride_zero_view_too_large_to_write_out_is_refused_by_convert_and_load(tmp_path):
    """Regression: a view of 10**12 rows of stride 0 over one stored byte scans clean (torch.load makes a
    view, allocating nothing), but convert wrote it out until the disk was full. Here just over the
    limit (had the check gone, the test writes 1 GiB, not the disk full)."""
    src = tmp_path / "model.pt"
    src.write_bytes(_state_dict_of_a_stride_zero_view(MAX_LOAD_ALLOCATION_BYTES // 2 + 1))
    assert tensorsafe.scan(src).verdict == "clean"
    dst = tmp_path / "model.safetensors"
    with pytest.raises(tensorsafe.ParseError, match="repeats the bytes of storage"):
        tensorsafe.convert(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with pytest.raises(tensorsafe.ParseError, match="MAX_LOAD_ALLOCATION_BYTES"):
        tensorsafe.load_state_dict(src)


def test_small_stride_zero_view_converts_to_its_values(tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(_state_dict_of_a_stride_zero_view(3))
    dst = tmp_path / "model.safetensors"
    tensorsafe.convert(src, dst)
    from safetensors.numpy import load_file

    assert load_file(dst)["w"].tolist() == [[0, 0]] * 3
