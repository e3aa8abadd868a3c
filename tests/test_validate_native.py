"""The compiled clean-file fast path (tensorsafe/header/_native_fastpath.c) against the Python one.

The soundness of both against the full validator is checked file by file in
tests/test_validate_fastpath.py (its ``_agree`` runs both). Here: the compiled checks give the
Python checks' answer, on generated files and on random edits of real headers (where the Python
form walks a pickle front, the compiled one must leave the file to it); hostile paths, lengths and
limits give "don't know", never a crash or a hang; threads get the same answers.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import sysconfig
import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tensorsafe.header import HeaderLimits, fastpath, polyglot
from tensorsafe.header.validator import validate_file
from tests.st_build import edit_randomly, entries, model
from tests.test_validate_fastpath import LIMITS, METADATA, TENSORS, _agree, _sized

native = fastpath.native
COMPILER = sysconfig.get_config_var("CC") or "cc"
HEADERS = os.path.join(sysconfig.get_paths()["include"], "Python.h")


def test_built_where_a_compiler_is():
    """An install with a C compiler builds the compiled checks (setup.py marks them optional only
    so that an install without one still works, on the Python checks)."""
    if shutil.which(COMPILER.split()[0]) is None or not os.path.exists(HEADERS):
        pytest.skip(f"no C compiler ({COMPILER}) or no Python headers ({HEADERS}) here: the Python checks "
                    "are the fast path")
    assert native is not None, "a C compiler is here but tensorsafe.header._native_fastpath was not built"


needs_native = pytest.mark.skipif(native is None, reason="built without a C compiler (see the test above)")
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _front_needs_a_walk(data: bytes) -> bool:
    """The Python checks walk the front as pickle opcodes here; the compiled ones leave it to them."""
    return len(data) >= 3 and data[0] not in polyglot.CANNOT_START and \
        (data[0] != polyglot.PROTO or data[2] not in polyglot.CANNOT_START)


def _decidable(tensors, metadata: dict | None = None) -> bytes:
    """A clean file whose header length does not start like a pickle (that case is the Python checks')."""
    for k in range(64):
        data = model(tensors, {**(metadata or {}), "pad": "x" * k})
        if not _front_needs_a_walk(data):
            return data
    raise AssertionError("no padding avoids a pickle-like front")


def _same_answer(path, limits: HeaderLimits) -> int | None:
    """The compiled checks' raw answer, after checking that with the pickle walk they need it gives
    the Python checks' answer (and both are sound: ``_agree``)."""
    python = _agree(path, limits)
    compiled = native.clean_size(str(path), limits)
    if compiled is not None:
        assert (compiled < 0) == _front_needs_a_walk(path.read_bytes()[:3])
        assert abs(compiled) == path.stat().st_size
    assert fastpath.clean_size(str(path), limits) == python
    assert (compiled is None) == (python is None), f"compiled {compiled}, Python {python}: {path.read_bytes()[:300]!r}"
    return compiled


@needs_native
@SETTINGS
@given(tensors=TENSORS, metadata=METADATA, limits=st.just(HeaderLimits()) | LIMITS, seed=st.integers(0, 2**16),
       extra=st.sampled_from([0, 0, 0, 1, -1]), length_bump=st.sampled_from([0, 0, 0, 8, 40, 80, 88, 128]))
def test_same_answers_on_writer_layouts(tmp_path_factory, tensors, metadata, limits, seed, extra, length_bump):
    """Writer-made files under random limits, shuffled entry order, a byte too many or too few,
    padding that moves the header length's first byte onto opcodes that may start a pickle."""
    tensors = _sized(tensors)
    if len({t[0] for t in tensors}) != len(tensors) or "__metadata__" in {t[0] for t in tensors}:
        tensors = [(f"t{i}", d, s) for i, (_, d, s) in enumerate(tensors)]
    header, size = entries(tensors)
    items = list(header.items())
    random.Random(seed).shuffle(items)
    text = json.dumps(({"__metadata__": metadata} if metadata is not None else {}) | dict(items),
                      separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8 + length_bump)
    path = tmp_path_factory.mktemp("n") / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(max(0, size + extra)))
    _same_answer(path, limits)


@needs_native
@settings(max_examples=2000, deadline=None)
@given(n=st.sampled_from([1, 2, 5, 120]), seed=st.integers(0, 2**32), edits=st.integers(0, 4),
       metadata=st.sampled_from([None, {}, {"format": "pt"}, {"a": "", "b": "x y"}]))
@example(n=1, seed=4_190_503_919, edits=1, metadata={"format": "pt"})
def test_header_text_checks_agree_on_random_edits(n, seed, edits, metadata):
    """The header text alone (no file): byte edits of a writer's header give the same verdict."""
    rng = random.Random(seed)
    tensors = [(f"layer.{i}.w", rng.choice(["F16", "F32", "U8", "BF16", "F8_E4M3"]), (rng.randint(0, 6), rng.randint(1, 3)))
               for i in range(n)]
    header, size = entries(tensors)
    doc = ({} if metadata is None else {"__metadata__": metadata}) | header
    text = edit_randomly(json.dumps(doc, separators=(",", ":")), rng, edits, inserted='[]{},:"0123456789 \\/._')
    text += " " * rng.choice([0, 0, 3])
    for data_size in {size, max(0, size + rng.choice([1, -1]))}:
        for limits in (HeaderLimits(), HeaderLimits(max_rank=1, max_tensors=3, max_name_bytes=9)):
            expected = fastpath._header_clean(text, data_size, limits)
            assert native.header_clean(text.encode(), data_size, limits) == expected, (text, data_size)


@needs_native
def test_every_dtype_and_the_loader_limited_ones(tmp_path):
    for dtype in sorted(fastpath.DTYPE_BITS):
        path = tmp_path / f"{dtype}.safetensors"
        path.write_bytes(model([("w", dtype, (4, 2))]))
        decided = _same_answer(path, HeaderLimits())
        assert (decided is None) == (dtype in fastpath._LOADER_LIMITED), dtype


@needs_native
def test_a_front_that_may_start_a_pickle_is_walked(tmp_path, monkeypatch):
    for k in range(64):
        data = model([("w", "U8", (3,))], {"pad": "x" * k})
        if _front_needs_a_walk(data):
            break
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert native.clean_size(str(path), HeaderLimits()) == -len(data)
    assert fastpath.clean_size(str(path), HeaderLimits()) == len(data)  # walked: no STOP
    walked = []
    acts = polyglot.PickleFront(None, 0, polyglot.Issue("ST-P08", "a pickle"))
    monkeypatch.setattr(polyglot, "pickle_front", lambda src, bounds=None: walked.append(src.size) or acts)
    assert fastpath.clean_size(str(path), HeaderLimits()) is None and walked == [len(data)]


# -- hostile input ---------------------------------------------------------------------------------
@needs_native
@pytest.mark.parametrize("length", [0, 1, 7, 1 << 63, (1 << 64) - 1, 100_000_000, 100_000_008, 25_000_008])
def test_hostile_header_lengths(tmp_path, length):
    """Lengths past the file, the reference's limit or the policy limit: nothing allocated, no answer."""
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", length) + b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' + b" " * 1000)
    assert native.clean_size(str(path), HeaderLimits()) is None
    assert validate_file(path).findings


@needs_native
def test_not_regular_files_and_odd_paths(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # must not block: opened without waiting for a writer
    good = tmp_path / "good.safetensors"
    good.write_bytes(_decidable([("w", "F32", (2,))]))
    limits = HeaderLimits()
    assert native.clean_size(str(fifo), limits) is None
    assert native.clean_size(str(tmp_path), limits) is None
    assert native.clean_size(str(tmp_path / "missing"), limits) is None
    assert native.clean_size(str(good) + "\0x", limits) is None
    assert native.clean_size(12, limits) is None
    assert native.clean_size(good, limits) == native.clean_size(os.fsencode(good), limits) == good.stat().st_size


@needs_native
def test_limits_out_of_range_or_of_the_wrong_type(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_decidable([("w", "F32", (2, 3))], {"format": "pt"}))
    size = path.stat().st_size
    assert native.clean_size(str(path), HeaderLimits(max_dim=1 << 80, max_elements=1 << 70)) == size
    assert native.clean_size(str(path), HeaderLimits(max_rank=-1)) is None
    assert native.clean_size(str(path), HeaderLimits(max_rank="16")) is None
    assert native.clean_size(str(path), object()) is None


@needs_native
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_header_bytes_never_crash(data):
    limits = HeaderLimits()
    assert native.header_clean(data, 0, limits) in (True, False)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assert not native.header_clean(data, 0, limits)
        return
    assert native.header_clean(data, 0, limits) == fastpath._header_clean(text, 0, limits)


@needs_native
def test_threads_get_the_same_answers(tmp_path):
    """The checks run without the GIL; concurrent calls must not share state."""
    paths = []
    for i in range(40):
        path = tmp_path / f"m{i}.safetensors"
        tensors = [(f"w{j}", "F16", (j + 1, 2)) for j in range(i % 5 + 1)]
        data = _decidable(tensors, {"i": str(i)})
        if i % 3 == 0:
            data = data[:-1]  # truncated: not clean
        path.write_bytes(data)
        paths.append(str(path))
    expected = [native.clean_size(p, HeaderLimits()) for p in paths]
    assert sum(e is not None for e in expected) == 26  # all but the truncated ones
    answers: list[list] = []

    def run():
        answers.append([native.clean_size(p, HeaderLimits()) for p in paths * 5])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [expected * 5] * 4


def test_configure_refuses_bad_tables(tmp_path):
    if native is None:
        pytest.skip("built without a C compiler")
    with pytest.raises(ValueError):
        native.configure(b"\x00" * 10, 0x80, 1 << 16, 10**8, 8, 65557, 3, {"U8": 8}, frozenset())
    with pytest.raises(RuntimeError, match="configure"):  # unconfigured until configured right
        native.clean_size(__file__, HeaderLimits())
    fastpath.configure_native()
    path = tmp_path / "m.safetensors"
    path.write_bytes(_decidable([("w", "F32", (2,))]))
    assert native.clean_size(str(path), HeaderLimits()) == path.stat().st_size


@needs_native
def test_bug_python_form_decided_non_ascii_metadata_the_compiled_form_leaves_open(tmp_path):
    """Found by hypothesis: the Python checks called a header with metadata {"é": ""} clean where the
    compiled ones answer "don't know"; both must decide the same files (the full check decides it)."""
    text = json.dumps({"__metadata__": {"\u00e9": ""}, "t0": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]}},
                      separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(2))
    assert _same_answer(path, HeaderLimits()) is None
    assert validate_file(path).findings == []
