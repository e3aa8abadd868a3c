"""The pickle at the front of a safetensors file (ST-P08 / ST-A04), followed to its real end.

True positives: safetensors files whose length field and header also form a pickle that imports
``os.system`` and calls it (harmless payload ``os.system("true")``, never run: the real unpickler is
used only as an oracle, with a ``find_class`` that records and refuses), built three ways, one of
them running through 100 KB of harmless opcodes before the import, one failing after the call
(no STOP). Each must fail in ``scan`` and ``validate`` on every code path the header check can take.
False positives: thousands of files written by the ``safetensors`` library never fail, and the
data-only fronts its writer makes now and then are an advisory (ST-A04). Also: ST-F16 on
5,000-tensor files on every path, and a hypothesis property against tests/pickle_oracle.py.
"""
from __future__ import annotations

import importlib.util
import io
import pickle
import random
import struct
import zipfile

import numpy as np
import pytest
from tests.cli_runner import invoke
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

import tensorsafe
from tensorsafe.readers.blob import Span
from tensorsafe.safetensors import HeaderLimits
from tensorsafe.safetensors import polyglot
from tensorsafe.readers.safetensors.layout import FileSource
from tensorsafe.safetensors.validator import check_source, validate_file
from tensorsafe.pickles.walker import walk
from tests.pickle_oracle import run_stream

PAYLOAD = b"cos\nsystem\n(S'true'\ntR."
"""GLOBAL os system, MARK, STRING 'true', TUPLE, REDUCE, STOP: os.system("true"), harmless."""
BAD_IN_STRINGS = {0x22, 0x5C}
"""Bytes that cannot stand raw inside a JSON string (control characters are never produced here)."""


# -- building polyglots -----------------------------------------------------------------------------
def _part_sizes(n: int, last_min: int) -> list[int]:
    sizes = []
    while n:
        if max(34, last_min) <= n <= 128 and n - 2 not in BAD_IN_STRINGS:
            s = n
        else:
            s = next(s for s in range(128, 33, -1) if s - 2 not in BAD_IN_STRINGS and n - s >= max(40, last_min))
        sizes.append(s)
        n -= s
    return sizes


def hops(n: int, tail: bytes = b"") -> bytes:
    """``n`` bytes of SHORT_BINBYTES opcodes with printable arguments, the last argument ending in
    ``tail``: inside a JSON string a pickle walks through them and out past ``tail``."""
    out = b"".join(b"C" + bytes([s - 2]) + b"a" * (s - 2) for s in _part_sizes(n, len(tail) + 2))
    return out[:len(out) - len(tail)] + tail


def _entry(name: str, n: int) -> str:
    return '"%s":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}' % (name, n, n)


def x_front(data: bytes, skip: int = 100) -> bytes:
    """Header length 0x..58: BINUNICODE whose 4-byte count is the length's next bytes swallows the
    first ``skip`` bytes; the pickle goes on in a metadata value, hops to the header's end, and
    runs ``data`` (the only tensor)."""
    n = 256 * skip + 0x58
    prefix = ("{" + _entry("payload", len(data)) + ',"__metadata__":{"k":"').encode()
    head = prefix + b"a" * (5 + skip - 8 - len(prefix))
    head += hops(n - len(head), b'"}}')
    return struct.pack("<Q", n) + head + data


def mark_front(data: bytes, skip: int = 24) -> bytes:
    """Header length 0x..5828: MARK, then BINUNICODE over the next bytes; resumes at the first
    metadata value (the tensor entry comes after, inside the last hop)."""
    n = 0x5828 + (skip << 16)
    prefix = b'{"__metadata__":{"k":"'
    assert 8 + len(prefix) == 6 + skip
    head = prefix + hops(n - len(prefix), ('"},' + _entry("payload", len(data)) + "}").encode())
    return struct.pack("<Q", n) + head + data


def proto_front(data: bytes) -> bytes:
    """Header length 0x470080: PROTO 0, BINFLOAT over 8 bytes; resumes in the tensor's name, which
    hops into the metadata value."""
    n = 0x470080
    middle = ('":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]},"__metadata__":{"k":"' % (len(data), len(data)))
    head = b'{"pCd' + b"a" * (ord("d") - len(middle)) + middle.encode()
    head += hops(n - len(head), b'"}}')
    return struct.pack("<Q", n) + head + data


LONG_DATA = hops(100_000) + PAYLOAD
"""The import comes 100 KB of harmless opcodes past the header: beyond any small window."""
NO_STOP = PAYLOAD[:-1] + b"\xff"
"""Imports and calls, then fails (no STOP): pickle.load has run os.system by then."""
CONSTRUCTIONS = {
    "x-front": lambda: x_front(PAYLOAD),
    "x-front-long": lambda: x_front(LONG_DATA),
    "x-front-no-stop": lambda: x_front(NO_STOP),
    "mark-front": lambda: mark_front(PAYLOAD),
    "mark-front-long": lambda: mark_front(LONG_DATA),
    "proto-front": lambda: proto_front(PAYLOAD),
    "proto-front-no-stop": lambda: proto_front(NO_STOP),
}


class _Refused(Exception):
    pass


def unpickler_imports(data: bytes) -> list[tuple[str, str]]:
    """What CPython's own unpickler asks ``find_class`` for, reading ``data``; every request is
    refused, so nothing is imported or run."""
    asked = []

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            asked.append((module, name))
            raise _Refused(module, name)

        def persistent_load(self, pid):
            return pid

    try:
        Recording(io.BytesIO(data)).load()
    except Exception:
        pass
    return asked


@pytest.fixture(scope="module")
def polyglots(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("polyglots")
    out = {}
    for name, make in CONSTRUCTIONS.items():
        path = folder / f"{name}.safetensors"
        path.write_bytes(make())
        out[name] = path
    return out


def _ids(findings) -> set[str]:
    return {f.rule_id for f in findings}


@pytest.mark.parametrize("name", CONSTRUCTIONS)
def test_constructions_are_real_safetensors_and_real_pickles(polyglots, name):
    from safetensors import safe_open

    path = polyglots[name]
    with safe_open(str(path), "numpy") as f:  # the reference reads it as a valid file
        assert len(list(f.keys())) == 1
    assert unpickler_imports(path.read_bytes()) == [("os", "system")]


@pytest.mark.parametrize("name", CONSTRUCTIONS)
def test_front_that_imports_fails_on_every_header_path(polyglots, monkeypatch, name):
    path = polyglots[name]
    with FileSource(path) as src:
        check = check_source(src, HeaderLimits())
    assert "ST-P08" in _ids_of_issues(check.issues)  # the full validator, read by pread
    data = path.read_bytes()
    assert "ST-P08" in _ids_of_issues(check_source(Span.of_bytes(data)).issues)  # a span (scan, zip member)
    report = validate_file(path)
    assert {"ST-P08", "PK-I01"} <= _ids(report.findings)
    assert any(str(f.location).startswith(polyglot.FRONT_LOCATION) for f in report.findings if f.rule_id == "PK-I01")


def _ids_of_issues(issues) -> set[str]:
    return {i.rule_id for i in issues}


@pytest.mark.parametrize("name", CONSTRUCTIONS)
def test_scan_and_validate_commands_fail_it(polyglots, name):
    path = str(polyglots[name])
    for command in ("scan", "validate"):
        result = invoke([command, "--json", path])
        assert result.exit_code == 1, (command, result.output[-500:])
        assert "ST-P08" in result.output
    report = tensorsafe.scan(path)
    assert {"ST-P08", "PK-I01"} <= _ids(report.findings) and report.files[0].kind == "safetensors"


def test_scan_fails_it_inside_a_zip(polyglots):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stored/model.safetensors", polyglots["x-front-long"].read_bytes(), zipfile.ZIP_STORED)
        zf.writestr("deflated/model.safetensors", polyglots["mark-front"].read_bytes(), zipfile.ZIP_DEFLATED)
    report = _scan_bytes(buf.getvalue(), "models.zip")
    p08 = [f for f in report.findings if f.rule_id == "ST-P08"]
    assert {f.location.members[0] for f in p08} == {"stored/model.safetensors", "deflated/model.safetensors"}
    assert report.exit_code == 1


def _scan_bytes(data: bytes, name: str):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        return tensorsafe.scan(path)


def test_the_walk_has_no_window(tmp_path):
    """Evasion: the import sits 100 KB past the header (a 64 KiB window after it missed it)."""
    data = x_front(LONG_DATA)
    front = polyglot.pickle_front(Span.of_bytes(data))
    assert front.acts and front.issue.offset > 8 + struct.unpack_from("<Q", data)[0] + 64 * 1024


def test_an_import_before_an_error_fails():
    """Evasion: no STOP, but the import and the call come first (pickle.load has run them)."""
    data = x_front(NO_STOP)
    front = polyglot.pickle_front(Span.of_bytes(data))
    assert not front.trace.stopped and front.acts and front.issue.trigger == "os.system"


@pytest.mark.parametrize("body,acts", [
    (b"(cos\nsystem\nt.", True),  # GLOBAL only
    (b"\x8c\x02os\x8c\x06system\x93.", True),  # STACK_GLOBAL
    (b"(ios\nsystem\n.", True),  # INST
    (b"\x82\x01.", True),  # EXT1 (unresolved)
    (b"]]R.", True),  # REDUCE of a non-import
    (b"])\x81.", True),  # NEWOBJ
    (b"(]o.", True),  # OBJ
    (b"]K\x01.", False),  # data only: A04
    (b"Ppid\n.", False),  # a persistent id alone: plain pickle.load fails there, nothing runs
])
def test_each_import_and_call_form_acts(body, acts):
    """Each opcode that imports or calls is judged on its own (a front made of the length field
    ``X`` + count, then ``body`` where the count ends)."""
    data = _x_front_raw(body)
    front = polyglot.pickle_front(Span.of_bytes(data))
    assert front.acts is acts, front.issue
    assert front.issue.rule_id == ("ST-P08" if acts else "ST-A04")


def _x_front_raw(body: bytes) -> bytes:
    return b"X" + struct.pack("<I", 3) + b"\x00\x00\x00" + body + b" " * 20


def test_an_import_that_cannot_succeed_stops_the_loader():
    """A GLOBAL whose first dotted part holds a NUL imports nothing, and the loader stops there:
    what comes after it is not reached (and the real unpickler agrees it is asked nothing else)."""
    data = b"(c\x00\x00\x00\x00{.x\nname\n" + b"cos\nsystem\n."
    front = polyglot.pickle_front(Span.of_bytes(data))
    assert front.issue is None
    assert [m for m, _ in unpickler_imports(data)] == ["\x00\x00\x00\x00{.x"]
    assert importlib.util.find_spec("\x00\x00\x00\x00{") is None if _find_spec_ok("\x00\x00\x00\x00{") else True
    assert polyglot.pickle_front(Span.of_bytes(b"(cos\nsystem\n" + b"c\x00\nx\n.")).acts


def _find_spec_ok(name: str) -> bool:
    try:
        importlib.util.find_spec(name)
    except (ValueError, ModuleNotFoundError):
        return False
    return True


def test_a_front_that_runs_past_the_limits_fails():
    data = _x_front_raw(b"]" * 40_000 + b".")  # the walker checks its budget every 32,768 opcodes
    front = polyglot.pickle_front(Span.of_bytes(data), polyglot.WalkBounds(max_opcodes=100))
    assert front.acts and front.issue.trigger == "MAX_OPCODES"


# -- no false positives -----------------------------------------------------------------------------
SD_NAMES = ["model.diffusion_model.input_blocks.{i}.0.weight", "model.diffusion_model.input_blocks.{i}.1.proj_in.bias",
            "model.diffusion_model.middle_block.{i}.emb_layers.1.weight", "first_stage_model.decoder.up.{i}.block.0.conv1.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.{i}.self_attn.k_proj.weight"]
LORA_NAMES = ["lora_unet_down_blocks_{i}_attentions_0_proj_in.alpha", "lora_unet_down_blocks_{i}_attentions_0_proj_in.lora_down.weight",
              "lora_te_text_model_encoder_layers_{i}_mlp_fc1.lora_up.weight", "lora_unet_mid_block_attentions_{i}_transformer_blocks_0_attn1_to_q.lora_down.weight"]
HF_NAMES = ["text_model.encoder.layers.{i}.mlp.fc1.bias", "text_model.embeddings.position_ids",
            "model.layers.{i}.self_attn.q_proj.weight", "transformer.h.{i}.attn.c_attn.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"]
DTYPES = [np.float16, np.float32, np.int64, np.uint8, np.float64, np.int8]


def writer_file(rng: random.Random) -> bytes:
    """A file as the safetensors library writes it: realistic names, random counts, values and metadata."""
    families = rng.choice([SD_NAMES, LORA_NAMES, HF_NAMES, SD_NAMES + LORA_NAMES])
    tensors = {}
    for _ in range(rng.randint(1, 12)):
        name = rng.choice(families).format(i=rng.randint(0, 23))
        if rng.random() < 0.2:
            name += "_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz._0123456789") for _ in range(rng.randint(1, 40)))
        dtype = rng.choice(DTYPES)
        shape = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 3)))
        kind = rng.random()
        if kind < 0.15:
            value = np.zeros(shape, dtype)
        elif kind < 0.3:
            value = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)  # position_ids-like
        elif np.dtype(dtype).kind == "f":
            value = np.asarray(np.random.default_rng(rng.randrange(1 << 30)).standard_normal(shape), dtype)
        else:
            value = np.asarray(np.random.default_rng(rng.randrange(1 << 30)).integers(-100, 100, shape) % 127, dtype)
        tensors[name] = value
    metadata = None
    if rng.random() < 0.7:
        metadata = {rng.choice(["format", "ss_network_dim", "modelspec.title", "note", "ss_tag_frequency"]) + str(k):
                    "".join(rng.choice("abc XYZ.().\n\t{}[]:,0123456789é😀\"\\") for _ in range(rng.randint(0, 300)))
                    for k in range(rng.randint(0, 4))}
    return st_save(tensors, metadata)


@pytest.mark.slow
def test_thousands_of_writer_files_never_fail(tmp_path):
    rng = random.Random(20240611)
    firsts, advisories = set(), 0
    for i in range(3000):
        data = writer_file(rng)
        firsts.add(data[0])
        check = check_source(Span.of_bytes(data))
        ids = _ids_of_issues(check.issues)
        assert "ST-P08" not in ids, (i, data[:200])
        assert not any(issue.rule_id.startswith(("ST-F", "ST-P", "ST-E")) for issue in check.issues), (i, check.issues)
        advisories += "ST-A04" in ids
        if i % 10 == 0:  # through the fast paths and the command's own reading, from a file
            path = tmp_path / f"w{i}.safetensors"
            path.write_bytes(data)
            assert not {f.rule_id for f in validate_file(path).findings} - {"ST-A04"}, i
    assert {0x28, 0x50, 0x58, 0x80, 0x88} <= firsts  # MARK, PERSID, BINUNICODE, PROTO, NEWTRUE fronts were written


def _known_false_positive(metadata_text: str) -> bytes:
    """The writer's file whose length starts with ``X`` and whose header has a ``.`` where the
    BINUNICODE count ends: pickle.load returns a string from it (a data-only front)."""
    for pad in range(512):  # the count is about N / 256: 12,000 dots put its end among them
        data = st_save({"a.weight": np.zeros((2,), np.float16)}, {"note": metadata_text + "." * 12_000 + "x" * pad})
        if data[0] == 0x58:
            count = struct.unpack_from("<I", data, 1)[0]
            if data[5 + count:6 + count] == b".":
                return data
    raise AssertionError("no padding gives the shape")


def test_the_known_false_positive_shape_is_an_advisory(tmp_path):
    data = _known_false_positive("trained on things")
    front = polyglot.pickle_front(Span.of_bytes(data))
    assert front.trace.stopped and front.issue.rule_id == "ST-A04"
    path = tmp_path / "writer.safetensors"
    path.write_bytes(data)
    for command in ("scan", "validate"):
        result = invoke([command, str(path)])
        assert result.exit_code == 0, result.output
    assert _ids(validate_file(path).findings) == {"ST-A04"}
    assert unpickler_imports(data) == []


def test_converted_files_validate_clean(tmp_path, fixtures_dir):
    dst = tmp_path / "converted"
    result = invoke(["convert", "-q", str(fixtures_dir / "tiny-sd1.ckpt"), str(dst)])
    assert result.exit_code == 0, result.output
    outputs = sorted(dst.rglob("*.safetensors"))
    assert outputs
    result = invoke(["validate", *map(str, outputs)])
    assert result.exit_code == 0, result.output


# -- ST-F16 on large headers, every path ---------------------------------------------------------------
def _many(overlap: str, n: int = 5000) -> bytes:
    entries, offset = [], 0
    for i in range(n):
        entries.append([f"model.layers.{i}.weight", offset, offset + 4])
        offset += 4
    if overlap == "shared":
        entries[-1][1:] = entries[-2][1:]
    elif overlap == "inside":
        entries[-2][1:] = [entries[-2][1], entries[-2][1] + 8]
        entries[-1][1:] = [entries[-2][1] + 2, entries[-2][1] + 6]
    else:  # backwards
        entries[-1][1:] = [entries[-1][2], entries[-1][1]]
    header = {name: {"dtype": "U8", "shape": [abs(e - b)], "data_offsets": [b, e]} for name, b, e in entries}
    if overlap == "inside":
        header[entries[-2][0]]["shape"] = [8]
    size = max(max(b, e) for _, b, e in entries)
    import json

    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(size)


@pytest.mark.parametrize("overlap", ["shared", "inside", "backwards"])
def test_overlaps_in_large_headers_on_every_path(tmp_path, monkeypatch, overlap):
    data = _many(overlap)
    path = tmp_path / "many.safetensors"
    path.write_bytes(data)
    with FileSource(path) as src:
        assert check_source(src).issues[0].rule_id == "ST-F16"
    assert "ST-F16" in _ids(validate_file(path).findings)
    assert "ST-F16" in _ids(tensorsafe.scan(path).findings)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/model.safetensors", data, zipfile.ZIP_DEFLATED)
    assert "ST-F16" in _ids(_scan_bytes(buf.getvalue(), "m.zip").findings)


# -- the verdict against an independent model of the loader ---------------------------------------------
def _loader_imports(data: bytes) -> tuple[bool, bool]:
    """(a loader imports something that may exist, it reaches STOP), per tests/pickle_oracle.py
    (CPython's C unpickler) and the pure-Python unpickler's more lenient line reading."""
    imports = stopped = False
    for mode in ("c", "py"):
        stream = run_stream(data, 0, mode=mode)
        stopped |= stream.stopped
        imports |= bool(stream.unresolved) or any(_may_exist(m) for m, _, _ in stream.imports)
    return imports, stopped


def _may_exist(module: str) -> bool:
    """A NUL in the first dotted part: independently, the import system finds no such module."""
    first = module.split(".")[0]
    if "\x00" not in first:
        return True
    return _find_spec_ok(first) and importlib.util.find_spec(first) is not None


OPCODE_BYTES = st.sampled_from(list(b"(XPcCUTV\x80\x88\x8c\x93R.]})aSIK\x95"))
VALID_TAIL = st_save({"text_model.encoder.layers.11.mlp.fc1.bias": np.arange(6, dtype=np.float16)}, {"k": "v" * 40})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=OPCODE_BYTES, rest=st.binary(max_size=63), cut=st.integers(0, 64))
@example(first=ord("X"), rest=b"\x03\x00\x00\x00abc" + PAYLOAD, cut=0)
@example(first=ord("("), rest=b"cos\nsystem\n", cut=0)
@example(first=ord("P"), rest=b"\x00\x00\x00\x00\x00\x00\x00", cut=8)
def test_front_verdict_matches_the_loader_model(first, rest, cut):
    """Random first bytes over an otherwise valid file: never no verdict where a loader imports,
    never no verdict where it returns data."""
    prefix = bytes([first]) + rest
    data = prefix + VALID_TAIL[len(prefix) + cut:] if len(prefix) + cut < len(VALID_TAIL) else prefix
    front = polyglot.pickle_front(Span.of_bytes(data))
    imports, stopped = _loader_imports(data)
    rule = None if front is None or front.issue is None else front.issue.rule_id
    if imports:
        assert rule == "ST-P08", data[:80]
    elif stopped:
        assert rule in ("ST-A04", "ST-P08"), data[:80]


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
