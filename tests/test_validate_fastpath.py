"""The clean-file fast path (tensorsafe/header/fastpath.py) against the full validator.

Soundness: whenever the fast path calls a file clean, the full validator (every rule, every
reader) reports nothing on it, under the same limits: on hostile and near-canonical headers, on
writer-made files under random limits, small and big (the numpy branch). Usefulness: the files
safetensors' writer makes with plain names do take the fast path. Also: the pickle-front shortcut
it shares with the full check never skips a walk that could reach STOP.
"""
from __future__ import annotations

import json
import random
import struct
import zipfile
from io import BytesIO

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tensorsafe.header import HeaderLimits, fastpath, polyglot
from tensorsafe.header.dtypes import DTYPE_BITS
from tensorsafe.header.layout import FileSource
from tensorsafe.header.validator import check_source, validate_file
from tensorsafe.pickles.walker import walk
from tests.st_build import build, edit_randomly, entries, model
from tests.test_validate_differential import files

SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PLAIN_DTYPES = sorted(set(DTYPE_BITS) - {"F4", "F6_E2M3", "F6_E3M2"})
NAME_CHARS = "abcz019._-/ :é\x7f\u200b\\\"\x00\n"
"""Plain characters and ones a rule or the JSON grammar cares about (path-like, invisible, escaped)."""


def _full_issues(path, limits: HeaderLimits) -> list:
    with FileSource(path) as src:
        return check_source(src, limits).issues


def _agree(path, limits: HeaderLimits = HeaderLimits()) -> int | None:
    """The Python fast path's answer, after checking it and the compiled one (where built) are
    sound, and that the compiled one decides no file the Python one leaves open; returns it."""
    size = fastpath.python_clean_size(str(path), limits)
    compiled = fastpath.clean_size(str(path), limits) if fastpath.native is not None else None
    for decided in {size, compiled} - {None}:
        issues = _full_issues(path, limits)
        assert issues == [], f"fast path said clean, full check found {issues}: {path.read_bytes()[:400]!r}"
        assert decided == path.stat().st_size
        result = validate_file(path, limits)
        assert result.size == decided and result.findings == []
    assert compiled is None or compiled == size, "the compiled checks decided a file the Python ones leave open"
    return size


def _write(tmp_path_factory, data: bytes):
    path = tmp_path_factory.mktemp("f") / "m.safetensors"
    path.write_bytes(data)
    return path


# -- generated files ---------------------------------------------------------------------------------
@SETTINGS
@given(data=files())
@example(data=build('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],'
                    '"data_offsets":[2,4]}}', 4))
@example(data=build('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],'
                    '"data_offsets":[2,4]}}', 4, pad=b"\t"))
def test_hostile_headers(tmp_path_factory, data):
    """The differential suite's headers (duplicates, escapes, big and negative numbers, floats,
    whitespace, nesting, byte mutations, bad lengths): never clean unless the full check agrees."""
    _agree(_write(tmp_path_factory, data))


NAMES = st.text(st.sampled_from(NAME_CHARS), max_size=6)
TENSORS = st.lists(st.tuples(NAMES, st.sampled_from(sorted(DTYPE_BITS)),
                             st.lists(st.integers(0, 5) | st.sampled_from([1 << 16, (1 << 48) - 1, 1 << 48]),
                                      max_size=4)), max_size=6)
METADATA = st.none() | st.dictionaries(st.text(st.sampled_from("ab_:é\x00 \u200b"), max_size=3),
                                       st.text(st.sampled_from("ab:{}[],\x00é\x7f"), max_size=4), max_size=3)
LIMITS = st.builds(HeaderLimits, header_warn_bytes=st.sampled_from([64, 10**6]), max_tensors=st.integers(0, 6),
                   max_rank=st.integers(0, 4), max_dim=st.sampled_from([4, 1 << 20, (1 << 48) - 1]),
                   max_elements=st.sampled_from([8, 1 << 20, (1 << 48) - 1]), max_name_bytes=st.integers(0, 8),
                   max_metadata_entries=st.integers(0, 3), max_metadata_key_bytes=st.integers(0, 3),
                   max_metadata_bytes=st.integers(0, 12), max_json_depth=st.integers(1, 4))


def _sized(tensors):
    """Drop tensors too big to write as zeros (the layout math is the same for any size)."""
    out = []
    for name, dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        if n * DTYPE_BITS[dtype] <= 8 * 4096:
            out.append((name, dtype, tuple(shape)))
    return out


@SETTINGS
@given(tensors=TENSORS, metadata=METADATA, limits=st.just(HeaderLimits()) | LIMITS, seed=st.integers(0, 2**16),
       extra=st.sampled_from([0, 0, 0, 1, -1]), pad=st.sampled_from([b" ", b" ", b"\t", b"\x00"]))
def test_writer_layouts_under_random_limits(tmp_path_factory, tensors, metadata, limits, seed, extra, pad):
    """Writer-made files with odd names, every dtype (F4/F6 included), zero and huge dimensions,
    metadata, shuffled entry order, a byte too many or too few, other padding, random limits."""
    tensors = _sized(tensors)
    if len({t[0] for t in tensors}) != len(tensors) or "__metadata__" in {t[0] for t in tensors}:
        tensors = [(f"t{i}", d, s) for i, (_, d, s) in enumerate(tensors)]
    header, size = entries(tensors)
    items = list(header.items())
    random.Random(seed).shuffle(items)  # text order no longer the data order, sometimes
    doc = ({"__metadata__": metadata} if metadata is not None else {}) | dict(items)
    data = build(doc, max(0, size + extra), pad=pad)
    _agree(_write(tmp_path_factory, data), limits)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.sampled_from([1, 3, 9, 120]), seed=st.integers(0, 2**32), edits=st.integers(0, 3))
@example(n=1, seed=4_190_503_919, edits=1)  # regression: '},5"layer.0.w"' after the metadata was taken for clean
def test_near_canonical_headers(tmp_path_factory, n, seed, edits):
    """Byte edits of a writer's header, small and big (the numpy branch), length kept consistent:
    whatever an edit breaks, the fast path never calls the file clean alone."""
    rng = random.Random(seed)
    tensors = [(f"layer.{i}.w", rng.choice(["F16", "F32", "U8", "BF16"]), (rng.randint(0, 6), rng.randint(1, 3)))
               for i in range(n)]
    header, size = entries(tensors)
    text = json.dumps({"__metadata__": {"format": "pt"}} | header, separators=(",", ":"))
    text = edit_randomly(text, rng, edits, inserted='[]{},:"0123456789 \\')
    size += rng.choice([0, 0, 0, 1, -1])
    path = _write(tmp_path_factory, build(text, max(0, size)))
    result = _agree(path)
    if not edits and size == entries(tensors)[1]:  # the writer's own form: decided here when clean
        assert (result is not None) == (not _full_issues(path, HeaderLimits()))


@pytest.mark.parametrize("between, malformed", [("5", True), ("0", True), ("]", True), (" ", False)])
def test_anything_between_metadata_and_the_first_name_is_left_to_the_full_check(tmp_path_factory, between,
                                                                                 malformed):
    """Regression: the piece between the metadata's '},' and the first tensor name was not checked."""
    header, size = entries([("layer.0.w", "U8", (5, 2))])
    for metadata in ('{"format":"pt"}', "{}"):
        body = json.dumps(header, separators=(",", ":"))[1:]
        path = _write(tmp_path_factory, build('{"__metadata__":' + metadata + "," + between + body, size))
        assert fastpath.clean_size(str(path), HeaderLimits()) is None
        assert bool(validate_file(path).findings) == malformed


# -- the writer's form takes the fast path --------------------------------------------------------
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.lists(st.tuples(st.text("abcxyz0123456789._-", min_size=1, max_size=12),
                                  st.sampled_from(PLAIN_DTYPES), st.lists(st.integers(0, 9), max_size=3)),
                        min_size=1, max_size=8, unique_by=lambda t: t[0]),
       metadata=st.none() | st.dictionaries(st.text("abc_ ", min_size=1, max_size=8), st.text("xyz 01{}:,", max_size=8),
                                            max_size=4))
def test_plain_writer_files_take_the_fast_path(tmp_path_factory, tensors, metadata):
    """Compact JSON in data order, spaces to 8 bytes, ASCII names: decided here, and clean."""
    path = _write(tmp_path_factory, model([(n, d, tuple(s)) for n, d, s in tensors], metadata))
    assume(not any(".." in n for n, _, _ in tensors))
    if any(DTYPE_BITS[d] >= 16 for _, d, _ in tensors):  # unaligned tensors get ST-A02: not clean
        assume(not _full_issues(path, HeaderLimits()))
    assert _agree(path) is not None


def test_safetensors_writer_output_takes_the_fast_path(tmp_path):
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    path = tmp_path / "lora.safetensors"
    save_file({f"lora_unet_{i}.{p}": np.zeros(s, np.float16) for i in range(3)
               for p, s in (("lora_down.weight", (4, 32)), ("lora_up.weight", (32, 4)), ("alpha", ()))},
              path, metadata={"ss_network_dim": "4", "format": "pt"})
    assert _agree(path) == path.stat().st_size


@pytest.mark.parametrize("n", [100, 300])
def test_big_headers_take_the_numpy_branch(tmp_path, n):
    tensors = [(f"model.layers.{i}.weight", ["F16", "F32", "BF16"][i % 3], (i % 7 + 1, 8)) for i in range(n)]
    path = tmp_path / "big.safetensors"
    data = model(tensors, {"format": "pt"})
    path.write_bytes(data)
    assert len(data) > 1000 and _agree(path) == len(data)
    header, size = entries(tensors)
    for mutate in (lambda h: h.__setitem__(tensors[n // 2][0], {**h[tensors[n // 2][0]], "shape": [1, 9]}),
                   lambda h: h.__setitem__(tensors[-1][0], {**h[tensors[-1][0]], "data_offsets": [size - 16, size + 1]}),
                   lambda h: h.__setitem__("x" * 2000, h.pop(tensors[3][0]))):
        broken = dict(header)
        mutate(broken)
        path.write_bytes(build({"__metadata__": {"format": "pt"}} | broken, size))
        assert _agree(path) is None and _full_issues(path, HeaderLimits())


@pytest.mark.parametrize("edit", ["leading zero", "plus sign", "space", "wrapped past 2**64"])
def test_big_headers_refuse_numbers_serde_refuses(tmp_path, edit):
    """The numpy branch compares numbers, not text: a number with the right value in a form the
    reference refuses (or reads as another value) must still leave the file to the full check."""
    tensors = [(f"w.{i}", "U8", (4,)) for i in range(120)]
    header, size = entries(tensors)
    text = json.dumps({"__metadata__": {"format": "pt"}} | header, separators=(",", ":"))
    target = '"data_offsets":[200,204]'
    assert target in text
    replacement = {"leading zero": '"data_offsets":[0200,204]', "plus sign": '"data_offsets":[+200,204]',
                   "space": '"data_offsets":[200, 204]',
                   "wrapped past 2**64": f'"data_offsets":[{(1 << 64) + 200},204]'}[edit]
    path = tmp_path / "m.safetensors"
    path.write_bytes(build(text.replace(target, replacement), size))
    assert _agree(path) is None
    if edit != "space":  # JSON whitespace is fine for the reference, just not the writer's form
        assert [i.rule_id for i in _full_issues(path, HeaderLimits())][0].startswith("ST-F")


# -- the memo and the limits ------------------------------------------------------------------------
def test_memo_is_per_limits(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(model([("a", "F32", (2, 3, 4))], {"format": "pt"}))
    assert _agree(path) is not None
    strict = HeaderLimits(max_rank=2)
    assert _agree(path, strict) is None
    assert [i.rule_id for i in _full_issues(path, strict)] == ["ST-P03"]
    assert _agree(path, HeaderLimits(max_elements=23)) is None
    assert _agree(path) is not None


# -- polyglots --------------------------------------------------------------------------------------
def test_zip_at_the_end_is_left_to_the_full_check(tmp_path):
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hi")
    blob = buf.getvalue()
    path = tmp_path / "z.safetensors"
    path.write_bytes(build({"t": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]}}, blob))
    assert fastpath.clean_size(str(path), HeaderLimits()) is None
    assert "ST-P08" in {f.rule_id for f in validate_file(path).findings}


def test_pickle_front_is_left_to_the_full_check(tmp_path):
    # N = 11,869 = 0x2E5D: the file starts with "]." (EMPTY_LIST, STOP)
    pad = 11_869 - len('{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}')
    path = tmp_path / "p.safetensors"
    path.write_bytes(struct.pack("<Q", 11_869) + b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' + b" " * pad)
    assert fastpath.clean_size(str(path), HeaderLimits()) is None
    assert "ST-A04" in {f.rule_id for f in validate_file(path).findings}  # data only: an advisory


@settings(max_examples=300, deadline=None)
@given(front=st.binary(min_size=3, max_size=3), tail=st.binary(max_size=64))
@example(front=b"p\x01\x00", tail=b"\x00" * 5 + b'{"__')
@example(front=b"\x80\x02p", tail=b"0\n.")
@example(front=b"h\x00.", tail=b"")
def test_cannot_be_pickle_never_skips_a_stream_that_stops(front, tail):
    """Where the shortcut says "no pickle", the walker (the full check) never reaches STOP, an
    import or a call either."""
    if polyglot.cannot_be_pickle(front):
        data = front + tail
        trace = walk(data, 0, len(data), max_opcodes=10_000)
        assert not trace.stopped and not trace.globals and not trace.calls and not trace.persistent


def test_the_first_opcodes_the_shortcut_refutes():
    refuted = {b for b in range(256) if polyglot.cannot_be_pickle(bytes([b, 0, 0]))}
    assert {ord(c) for c in "phgjqr"} <= refuted  # memo and stack opcodes: nothing to read or store yet
    assert not polyglot.cannot_be_pickle(b"(\x00\x00") and not polyglot.cannot_be_pickle(b"]\x00\x00")
    assert polyglot.cannot_be_pickle(b"\x80\x02\x00") and not polyglot.cannot_be_pickle(b"\x80\x02]")


# -- tensorsafe scan ----------------------------------------------------------------------------------
def test_scan_decides_clean_files_by_the_fast_path_and_the_rest_by_the_full_check(tmp_path, monkeypatch):
    from tensorsafe.header import scan_hook
    from tensorsafe.scanner import scan_file

    clean = tmp_path / "clean.bin"  # found by its bytes, whatever its name
    clean.write_bytes(model([("w", "F16", (4, 4))], {"format": "pt"}))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model([("w", "F16", (4, 4))], {"format": "pt"})[:-2])
    full_checks = []
    real = scan_hook.check_source
    monkeypatch.setattr(scan_hook, "check_source", lambda span, limits, **kw: full_checks.append(span) or real(span, limits, **kw))
    result = scan_file(clean)
    assert (result.kind, result.findings, full_checks) == ("safetensors", [], [])
    result = scan_file(bad)
    assert len(full_checks) == 1 and [f.rule_id for f in result.findings] == ["ST-F18"]
