"""joblib arrays are located exactly as joblib reads them (issue 11 §2, §4; issue 12).

The layout truth comes from joblib itself, on files these tests generate from benign data: its
writer (``NumpyArrayWrapper.write_array``) and its reader (``read_array``, through ``joblib.load``)
are instrumented to record the file position before and after each array. Hostile streams are built
by a small joblib-like writer with harmless payloads (``os.system("true")``, never run).
"""
from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tensorsafe
from tensorsafe.engine import joblib_arrays
from tests.conftest import rule_ids

joblib = pytest.importorskip("joblib")
from joblib.numpy_pickle import NumpyArrayWrapper  # noqa: E402  (after the importorskip)

BROKEN = {"JOBLIB-01", "PK-S01", "PK-S02"}


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


# -- instruments -----------------------------------------------------------------------------------
@contextlib.contextmanager
def joblib_positions():
    """Record (before, data start, after) of every array joblib writes and (before, after) it reads."""
    written, read = [], []
    write, read_array = NumpyArrayWrapper.write_array, NumpyArrayWrapper.read_array

    def spy_write(self, array, pickler):
        before = pickler.file_handle.tell()
        write(self, array, pickler)
        after = pickler.file_handle.tell()
        written.append((before, before if array.dtype.hasobject else after - array.nbytes, after))

    def spy_read(self, unpickler, *args):
        before = unpickler.file_handle.tell()
        out = read_array(self, unpickler, *args)
        read.append((before, unpickler.file_handle.tell()))
        return out

    NumpyArrayWrapper.write_array, NumpyArrayWrapper.read_array = spy_write, spy_read
    try:
        yield written, read
    finally:
        NumpyArrayWrapper.write_array, NumpyArrayWrapper.read_array = write, read_array


@contextlib.contextmanager
def tensorsafe_layouts():
    """The (after BUILD, data start, resume) offsets tensorsafe's joblib hooks computed."""
    hooks: list = []
    init = joblib_arrays.JoblibArrays.__init__

    def spy_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        hooks.append(self)

    joblib_arrays.JoblibArrays.__init__ = spy_init
    try:
        yield lambda: [layout for hook in hooks for layout in hook.layouts]
    finally:
        joblib_arrays.JoblibArrays.__init__ = init


# -- generated dtypes and arrays ---------------------------------------------------------------------
_leaves = st.one_of(
    hnp.integer_dtypes(endianness="?"), hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"), hnp.complex_number_dtypes(endianness="?"),
    hnp.boolean_dtypes(), hnp.byte_string_dtypes(min_len=1, max_len=5),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=3),
    hnp.datetime64_dtypes(endianness="?"), hnp.timedelta64_dtypes(endianness="?"),
    st.just(np.dtype("V3")), st.just(np.dtype("O")),
)


def _struct(children):
    fields = st.lists(st.tuples(children, st.booleans()), min_size=1, max_size=4)

    def build(items_align):
        items, align = items_align
        spec = [(((f"t{i}", f"f{i}") if titled else f"f{i}"), c) for i, (c, titled) in enumerate(items)]
        return np.dtype(spec, align=align)

    return st.tuples(fields, st.booleans()).map(build)


def _subarray(children):
    return st.tuples(children, st.lists(st.integers(1, 3), min_size=1, max_size=2)).map(
        lambda cs: np.dtype((cs[0], tuple(cs[1]))))


dtypes = st.recursive(_leaves, lambda c: st.one_of(_struct(c), _subarray(c)), max_leaves=6)


def _array(dtype: np.dtype, shape: tuple, fortran: bool) -> np.ndarray:
    arr = np.zeros(shape, dtype=dtype)
    if not dtype.hasobject and arr.nbytes:
        arr.reshape(-1).view(np.uint8)[:] = np.arange(arr.nbytes, dtype=np.uint64) % 7  # bytes 0..6: no opcode
    return np.asfortranarray(arr) if fortran else arr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3),
       fortran=st.booleans(), compress=st.sampled_from([0, 3, ("gzip", 1)]), protocol=st.sampled_from([2, 4, 5]))
def test_layout_matches_joblib_writer_and_reader(tmp_path, dtype, shape, fortran, compress, protocol):
    if dtype.itemsize == 0 and not dtype.hasobject:
        return  # joblib cannot read these back: see test_zero_size_items_are_unreadable
    arr = _array(dtype, shape, fortran)
    path = tmp_path / "gen.joblib"
    with joblib_positions() as (written, read):
        joblib.dump({"head": 1, "a": arr, "tail": [arr]}, path, compress=compress, protocol=protocol)
        loaded = joblib.load(path)  # a benign file this test just wrote
    assert loaded["a"].dtype.itemsize == arr.dtype.itemsize and loaded["a"].shape == arr.shape  # byte order: native
    with tensorsafe_layouts() as layouts:
        report = tensorsafe.scan(path)
    assert [(b, a) for b, _, a in written] == read
    assert layouts() == written, (dtype, shape, compress, protocol)
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_zero_size_items_are_unreadable(scan_bytes):
    """joblib divides by the item size (it cannot even write such arrays): 0-byte items are not clean."""
    with pytest.raises(ZeroDivisionError):
        joblib.dump(np.zeros(3, dtype=[]), io.BytesIO())
    empty = dtype_made("V0", (3, "|", None, (), {}, 0, 1, 16))
    report = scan_bytes(joblib_stream((Wrapper(attrs(empty, (3,)), b""), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


# -- object payloads inside structured and subarray dtypes -------------------------------------------
@pytest.mark.parametrize("compress", [0, 3])
def test_payload_in_object_field_fails(tmp_path, compress):
    arr = np.zeros(2, dtype=[("a", "<i4"), ("b", [("c", "<f8"), ("d", "O")])])
    arr["b"]["d"][1] = _Payload()
    path = tmp_path / "field.joblib"
    joblib.dump({"w": np.arange(4.0), "x": arr}, path, compress=compress)
    report = tensorsafe.scan(path)
    assert report.exit_code == 1 and "PK-I01" in rule_ids(report)


@pytest.mark.parametrize("compress", [0, 3])
def test_payload_in_object_subarray_fails(tmp_path, compress):
    arr = np.zeros(2, dtype=[("a", "<i2"), ("s", "O", (2, 2))])
    arr["s"][0, 1, 0] = _Payload()
    path = tmp_path / "sub.joblib"
    joblib.dump(arr, path, compress=compress)
    report = tensorsafe.scan(path)
    assert report.exit_code == 1 and "PK-I01" in rule_ids(report)


# -- issue 11 §4: object arrays of strings are clean -------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_object_arrays_of_strings_are_clean(tmp_path, protocol):
    """LabelEncoder.classes_ is an object array of str; the nested pickle imports only numpy's
    array rebuild (already allowed) and is judged in its own context, not the outer stream's."""
    path = tmp_path / "labels.joblib"
    joblib.dump({"classes_": np.array(["cat", "dog", "eel"], dtype=object), "n": 3,
                 "more": [np.array(["a"], dtype=object), np.array([1, None, "b"], dtype=object)]},
                path, protocol=protocol)
    report = tensorsafe.scan(path)
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_label_encoder_is_clean(tmp_path):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    encoder = preprocessing.LabelEncoder().fit(["b", "a", "c"])
    path = tmp_path / "encoder.joblib"
    joblib.dump(encoder, path)
    report = tensorsafe.scan(path)
    assert report.exit_code == 0, [str(f) for f in report.findings]


# -- hand-built joblib streams -----------------------------------------------------------------------
class Made:
    """Pickles as ``func(*args)`` followed by ``BUILD state`` (when a state is given)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Wrapper(Made):
    """A NumpyArrayWrapper instance in the stream, followed by ``data`` written raw, as joblib does."""

    def __init__(self, state, data: bytes, *, func=copyreg._reconstructor, args=None):
        super().__init__(func, (NumpyArrayWrapper, object, None) if args is None else args, state)
        self.data = data


class _Writer(pickle._Pickler):
    def __init__(self, file, protocol):
        super().__init__(file, protocol)
        self.file_handle = file

    def save(self, obj, save_persistent_id=True):
        super().save(obj, save_persistent_id)
        if isinstance(obj, Wrapper):
            if self.proto >= 4:
                self.framer.commit_frame(force=True)
            self.file_handle.write(obj.data)


def joblib_stream(obj, protocol: int = 2) -> bytes:
    out = io.BytesIO()
    _Writer(out, protocol).dump(obj)
    return out.getvalue()


def dtype_made(code: str, state: tuple | None) -> Made:
    return Made(np.dtype, (code, False, True), state)


F8 = dtype_made("f8", (3, "<", None, None, None, -1, -1, 0))


def attrs(dtype, shape, **more) -> dict:
    return {"subclass": np.ndarray, "shape": shape, "order": "C", "dtype": dtype, "allow_mmap": False, **more}


def padded(data: bytes) -> bytes:
    return b"\x03\xff\xff\xff" + data


def test_hand_built_stream_is_followed(scan_bytes):
    """The builder itself: a well-formed wrapper and a payload after it (read by joblib) fails only there."""
    data = joblib_stream((Wrapper(attrs(F8, (2,), numpy_array_alignment_bytes=16), padded(bytes(16))), _Payload()))
    report = scan_bytes(data)
    assert "PK-I01" in rule_ids(report) and not rule_ids(report) & BROKEN
    clean = scan_bytes(joblib_stream((Wrapper(attrs(F8, (2,), numpy_array_alignment_bytes=16), padded(bytes(16))), 1)))
    assert clean.exit_code == 0, [str(f) for f in clean.findings]


def test_wrapper_made_by_its_constructor_reads_padding(scan_bytes):
    """``NumpyArrayWrapper(subclass, shape, order, dtype)`` sets numpy_array_alignment_bytes=16 itself:
    joblib then reads the padding byte even though the BUILD state is empty."""
    wrapper = Wrapper({}, padded(bytes(16)), func=NumpyArrayWrapper, args=(np.ndarray, (2,), "C", F8))
    with tensorsafe_layouts() as layouts:
        report = scan_bytes(joblib_stream((wrapper, _Payload())))
    assert "PK-I01" in rule_ids(report) and not rule_ids(report) & BROKEN, [str(f) for f in report.findings]
    (after, start, end), = layouts()
    assert (start, end) == (after + 4, after + 4 + 16)


def test_slot_state_sets_wrapper_attributes(scan_bytes):
    wrapper = Wrapper((None, attrs(F8, (2,))), bytes(16))
    report = scan_bytes(joblib_stream((wrapper, 7)))
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_setstate_attribute_is_refused(scan_bytes):
    wrapper = Wrapper(attrs(F8, (0,), __setstate__=1), b"")
    report = scan_bytes(joblib_stream((wrapper, 7)))
    # joblib refuses it (JOBLIB-01); BUILD installing a __setstate__ also counts as a call (PK-C01)
    assert report.exit_code == 1 and {"JOBLIB-01", "PK-C01"} <= rule_ids(report)


def test_array_bytes_inside_the_frame_are_refused(scan_bytes):
    """joblib reads the array from the file after the current frame, then runs the frame's rest:
    a frame that goes on after the wrapper's BUILD is refused."""
    body = joblib_stream((Wrapper(attrs(F8, (1,)), bytes(8)), 7))[2:]  # protocol 2: no frames of its own
    framed = b"\x80\x04\x95" + len(body).to_bytes(8, "little") + body  # one frame around it all
    report = scan_bytes(framed)
    assert "JOBLIB-01" in rule_ids(report), [str(f) for f in report.findings]


def test_memory_mapped_object_array_is_refused(scan_bytes):
    """np.memmap of an object dtype reads raw bytes as pointers (joblib.load(mmap_mode=...))."""
    obj = dtype_made("O8", (3, "|", None, None, None, -1, -1, 63))
    nested = pickle.dumps(np.array([1], dtype=object), protocol=2)
    report = scan_bytes(joblib_stream((Wrapper(attrs(obj, (1,), allow_mmap=True), nested), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


# -- the dtype state, as numpy's arraydescr_setstate reads it ----------------------------------------
def _record_state(fields_code: str, flags: int, elsize: int = 16) -> tuple:
    inner = dtype_made(fields_code, (3, "|" if fields_code == "O8" else "<", None, None, None, -1, -1,
                                     63 if fields_code == "O8" else 0))
    return (3, "|", None, ("a", "b"), {"a": (F8, 0), "b": (inner, 8)}, elsize, 1, flags)


def test_object_field_that_flags_call_raw_bytes_is_refused(scan_bytes):
    """numpy trusts the state's flags: an object field read as raw bytes would be pointers from the file."""
    dtype = dtype_made("V16", _record_state("O8", flags=16))
    report = scan_bytes(joblib_stream((Wrapper(attrs(dtype, (1,)), bytes(16)), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


def test_flags_claiming_objects_in_a_plain_dtype_are_refused(scan_bytes):
    """A float dtype whose flags say objects would have joblib read a pickle there."""
    liar = dtype_made("f8", (3, "<", None, None, None, -1, -1, 1))
    nested = pickle.dumps(_Payload(), protocol=2)
    report = scan_bytes(joblib_stream((Wrapper(attrs(liar, (1,)), nested), 7)))
    assert "JOBLIB-01" in rule_ids(report)


def test_state_itemsize_must_agree_with_the_type_code(scan_bytes):
    dtype = dtype_made("V4", _record_state("f8", flags=16))
    report = scan_bytes(joblib_stream((Wrapper(attrs(dtype, (1,)), bytes(16)), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


def test_record_state_itemsize_is_used(scan_bytes):
    """Consistent record state: 16-byte items, the stream resumes after 2 of them."""
    dtype = dtype_made("V16", _record_state("f8", flags=16))
    with tensorsafe_layouts() as layouts:
        report = scan_bytes(joblib_stream((Wrapper(attrs(dtype, (2,)), bytes(32)), _Payload())))
    assert "PK-I01" in rule_ids(report) and not rule_ids(report) & BROKEN, [str(f) for f in report.findings]
    (_, start, end), = layouts()
    assert end - start == 32


def test_record_fields_past_the_itemsize_are_refused(scan_bytes):
    dtype = dtype_made("V12", _record_state("f8", flags=16, elsize=12))
    report = scan_bytes(joblib_stream((Wrapper(attrs(dtype, (1,)), bytes(12)), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


def not_a_dtype(code, align, copy):
    """Stands where numpy.dtype should be: joblib would size its read from whatever this returns."""


@pytest.mark.parametrize("fake", [Made(np.float64, (0,)), Made(not_a_dtype, ("f8", False, True))])
def test_dtype_that_is_not_numpy_dtype_is_refused(scan_bytes, fake):
    report = scan_bytes(joblib_stream((Wrapper(attrs(fake, (1,)), bytes(8)), 7)))
    assert report.exit_code != 0 and "JOBLIB-01" in rule_ids(report)


# -- the nested object pickle is its own stream ------------------------------------------------------
def test_nested_pickle_has_its_own_memo(scan_bytes):
    """A nested GET of an index only the outer stream PUT fails in joblib's fresh unpickler."""
    obj = dtype_made("O8", (3, "|", None, None, None, -1, -1, 63))
    nested = b"\x80\x02h\x00."  # BINGET 0: the outer memo has it, the nested one does not
    report = scan_bytes(joblib_stream((Wrapper(attrs(obj, (1,)), nested), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


# -- issue 12: shapes are bounded -------------------------------------------------------------------
def test_many_huge_dimensions_end_fast(scan_bytes, monkeypatch):
    """10^5 dimensions of 2^63-1 (a 1 MB file, 34 s before): the wrapper is refused in microseconds;
    the scan's time is the walk of the shape's 10^5 opcodes (about 0.5 s here, twice on a busy CI)."""
    shape = (2**63 - 1,) * 100_000
    data = joblib_stream((Wrapper(attrs(F8, shape), b""), 7))
    assert len(data) > 900_000
    spent = []
    hook = joblib_arrays.JoblibArrays.__call__

    def timed(self, *args):
        began = time.perf_counter()
        try:
            return hook(self, *args)
        finally:
            spent.append(time.perf_counter() - began)

    monkeypatch.setattr(joblib_arrays.JoblibArrays, "__call__", timed)
    began = time.monotonic()
    report = scan_bytes(data)
    assert time.monotonic() - began < 5.0
    assert spent and max(spent) < 0.05
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


@pytest.mark.parametrize("shape", [(2**62, 2**62), (2**63 - 1,) * 64, (10**6,)])
def test_array_larger_than_the_stream_is_refused(scan_bytes, shape):
    began = time.monotonic()
    report = scan_bytes(joblib_stream((Wrapper(attrs(F8, shape), bytes(64)), 7)))
    assert time.monotonic() - began < 1.0
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)


@pytest.mark.parametrize("shape", [(2, 65), (0, 2**63 - 1), ()])
def test_valid_shapes_are_followed(scan_bytes, shape):
    count = int(np.prod(shape, dtype=object)) if shape else 1
    report = scan_bytes(joblib_stream((Wrapper(attrs(F8, shape), bytes(8 * count)), 7)))
    assert report.exit_code == 0, [str(f) for f in report.findings]


def test_more_dimensions_than_numpy_allows_are_refused(scan_bytes):
    report = scan_bytes(joblib_stream((Wrapper(attrs(F8, (1,) * 65), bytes(8)), 7)))
    assert report.exit_code == 2 and "JOBLIB-01" in rule_ids(report)
