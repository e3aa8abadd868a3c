"""The safetensors reference's own cases, against the installed library and every reader of ours.

Cases read in huggingface/safetensors (commit 24b0b28, the 0.8.0 line): the Rust core's unit tests
(``safetensors/src/tensor.rs``: deserialization, empty shapes, zero-sized tensors, whitespace
padding, the "JSON attack", incomplete buffers, header too large / too small, invalid length,
non-UTF-8, not JSON, invalid info, validation overflow) and the Python binding's tests
(``bindings/python/tests``: the writer's exact bytes, the pread backend's truncated header and
lying offsets, the dtype round trips), plus the edges the brief names (metadata placement,
escaped names, zero-size tensors at the ends, offsets at 2^64-1, the header-size limit itself).
The fixtures are our own bytes, built here.

For each: the installed library (``safe_open``) gives the expected verdict; ``validate`` and
``scan`` report the rule its error stands for first (or nothing that fails); ``inspect`` refuses
with the same rule or reads the same tensors. Files the reference accepts but whose meaning other
readers dispute (ST-F08/F10/F11) are refused everywhere, ``inspect`` included.

Then the readings of the same bytes by the loaders beside safetensors (ST-P08, regressions): a
``torch.save`` zip (zip64 end records) in the last tensor, a zip after it, a pickle front or a zip
in a file with a format error, a tar header in the first 512 bytes (torch.load's pre-1.0 reader),
an HDF5 file after a user block (h5py, Keras .h5 loaders).
"""
from __future__ import annotations

import json
import re
import struct

import pytest

import tensorsafe
from tensorsafe.readers.safetensors.dtypes import DTYPE_ORDER
from tensorsafe.readers.safetensors.model import HeaderFormatError
from tensorsafe.safetensors.inspect import inspect_file
from tensorsafe.tensors import DTYPE_BITS
from tests.cli_runner import invoke
from tests.safetensors_oracle import reference_read
from tests.st_build import build, model

U64_MAX = (1 << 64) - 1


def _file(header: bytes | str, data: bytes = b"", *, length: int | None = None) -> bytes:
    """8-byte length (the header's own unless ``length``), header bytes as given, data."""
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _tensors(entries: dict) -> str:
    return json.dumps(entries, separators=(",", ":"))


I32_2x2 = '{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}'
U8 = {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}
EMPTY_AT = lambda k: {"dtype": "F32", "shape": [0], "data_offsets": [k, k]}  # noqa: E731

# (id, file bytes, rule id of the refusal, or None: the reference reads the file)
PEER_CASES = [
    # safetensors/src/tensor.rs
    ("rs-deserialization", _file(I32_2x2, bytes(16)), None),
    ("rs-empty-shape-is-a-scalar", _file('{"test":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}', bytes(4)), None),
    ("rs-zero-sized-tensor", _file('{"test":{"dtype":"I32","shape":[2,0],"data_offsets":[0, 0]}}'), None),
    ("rs-whitespace-trailing", _file(b"{}\r \t\n"), None),
    ("rs-whitespace-leading", _file(b"\t\n{}\r "), None),
    ("rs-json-attack-ten-names-one-range",
     _file(_tensors({f"weight_{i}": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]} for i in range(10)}),
           bytes(16)), "ST-F16"),
    ("rs-incomplete-polyglot-tail", _file(I32_2x2, bytes(16) + b"extra_bogus_data_for_polyglot_file"), "ST-F18"),
    ("rs-incomplete-missing-bytes", _file(I32_2x2, bytes(14)), "ST-F18"),
    ("rs-header-too-large", b"<\x00\x00\x00\x00\xff\xff\xff" + I32_2x2.encode() + bytes(16), "ST-F02"),
    ("rs-header-too-small", b"", "ST-F01"),
    ("rs-invalid-header-length", struct.pack("<Q", 60), "ST-F03"),
    ("rs-non-utf8", _file(b"\xff"), "ST-F04"),
    ("rs-not-json", _file(b"{"), "ST-F05"),
    ("rs-invalid-info", _file('{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0, 4]}}'), "ST-F17"),
    ("rs-overflow-of-the-shape",
     _file('{"test":{"dtype":"I32","shape":[2,18446744073709551614],"data_offsets":[0,16]}}', bytes(16)), "ST-F14"),
    ("rs-overflow-of-the-bits",
     _file('{"test":{"dtype":"I32","shape":[2,9223372036854775807],"data_offsets":[0,16]}}', bytes(16)), "ST-F14"),
    # bindings/python/tests
    ("py-writer-bytes", _file(I32_2x2 + "    ", bytes(12) + b"\x01\x00\x00\x00"), None),
    ("py-writer-metadata",
     _file('{"__metadata__":{"framework":"pt"},"test1":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}} ',
           bytes(16)), None),
    ("py-writer-two-dtypes",
     _file('{"test1":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},'
           '"test2":{"dtype":"F16","shape":[2,2],"data_offsets":[16,24]}}      ', bytes(24)), None),
    ("py-c64", _file('{"test":{"dtype":"C64","shape":[2,2],"data_offsets":[0,32]}}    ', bytes(32)), None),
    ("py-bf16", _file('{"test":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}    ', b"\x10@\x80?\x80?\x80?"),
     None),
    ("py-pread-lying-offsets",
     _file(b'{"liar":{"dtype":"F32","shape":[1024,1024],"data_offsets":[0,4194304]}}', b"\x00"), "ST-F18"),
    # edges named by the brief
    ("exactly-8-bytes-n0", struct.pack("<Q", 0), "ST-F05"),
    ("exactly-8-bytes-n1", struct.pack("<Q", 1), "ST-F03"),
    ("header-length-at-the-limit-past-eof", _file("{}", length=100_000_000), "ST-F03"),
    ("header-length-2^64-8", _file("{}", length=U64_MAX - 7), "ST-F02"),
    ("metadata-last", _file('{"t":' + _tensors(U8) + ',"__metadata__":{"a":"b"}}', b"abcd"), None),
    ("metadata-between-tensors",
     _file('{"t":' + _tensors(U8) + ',"__metadata__":{"a":"b"},"e":' + _tensors(EMPTY_AT(4)) + "}", b"abcd"), None),
    ("metadata-shaped-like-a-tensor", _file('{"__metadata__":' + _tensors(U8) + "}"), "ST-F09"),
    ("metadata-nested-object", _file('{"__metadata__":{"a":{"b":"c"}}}'), "ST-F09"),
    ("escaped-dtype", _file('{"t":{"dtype":"F\\u0033\\u0032","shape":[1],"data_offsets":[0,4]}}', bytes(4)), None),
    ("escaped-field-name", _file('{"t":{"d\\u0074ype":"U8","shape":[4],"data_offsets":[0,4]}}', b"abcd"), None),
    ("zero-size-between", _file(_tensors({"a": U8, "e": EMPTY_AT(4), "b": {**U8, "data_offsets": [4, 8]}}),
                                b"abcdefgh"), None),
    ("zero-size-at-the-end", _file(_tensors({"a": U8, "e": EMPTY_AT(4)}), b"abcd"), None),
    ("zero-size-twice-at-0", _file(_tensors({"e": EMPTY_AT(0), "f": EMPTY_AT(0), "a": U8}), b"abcd"), None),
    ("zero-size-past-the-end", _file(_tensors({"a": U8, "e": EMPTY_AT(9)}), b"abcd"), "ST-F16"),
    ("offsets-both-u64-max", _file(_tensors({"e": {"dtype": "U8", "shape": [0],
                                                    "data_offsets": [U64_MAX, U64_MAX]}})), "ST-F16"),
    ("offset-end-u64-max", _file(_tensors({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, U64_MAX]}}), b"x"),
     "ST-F17"),
    ("form-feed-is-not-json-whitespace", _file("{\f}"), "ST-F05"),
    ("no-break-space-padding", _file("{}\u00a0"), "ST-F05"),
    ("non-ascii-digit", _file('{"t":{"dtype":"U8","shape":[\u0661],"data_offsets":[0,1]}}', b"x"), "ST-F05"),
    ("number-past-a-double-in-an-ignored-field",
     _file('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1' + "0" * 400 + "}}", b"x"), "ST-F05"),
]


def _write(tmp_path, data: bytes, name: str = "model.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, data, rule", PEER_CASES, ids=[c[0] for c in PEER_CASES])
def test_peer_case(tmp_path, case, data, rule):
    path = _write(tmp_path, data)
    refused, shapes = reference_read(path)
    validated = tensorsafe.validate(path)
    scanned = tensorsafe.scan(path)
    if rule is not None:
        assert refused is not None and rule in refused, f"the reference: {refused}"
        assert validated.findings[0].rule_id == rule and validated.exit_code == 2, validated.findings
        assert scanned.findings[0].rule_id == rule and scanned.exit_code == 2, scanned.findings
        with pytest.raises(HeaderFormatError) as info:
            inspect_file(path)
        assert info.value.rule_id == rule
        return
    assert refused is None
    for report in (validated, scanned):
        failing = [f for f in report.findings if f.rule_id.startswith(("ST-F", "ST-P", "ST-E"))]
        assert report.exit_code == 0 and not failing, report.findings
    assert {t.name: t.shape for t in inspect_file(path).tensors} == shapes


def test_the_writers_own_bytes_raise_no_finding(tmp_path):
    """The Python binding's expected output of its writer: canonical, padded to 8, aligned."""
    path = _write(tmp_path, _file(I32_2x2 + "    ", bytes(16)))
    assert not tensorsafe.validate(path).findings


# -- reference accepts, we refuse on purpose: a duplicate hidden behind an escape -------------------------
def test_duplicate_name_spelled_with_an_escape_is_a_duplicate(tmp_path):
    """serde compares unescaped keys: ``"a"`` and ``"\\u0061"`` are one name, the last one wins (ST-F08)."""
    path = _write(tmp_path, _file('{"a":' + _tensors(U8) + ',"\\u0061":' + _tensors(U8) + "}", b"abcd"))
    assert reference_read(path)[0] is None
    report = tensorsafe.validate(path)
    assert report.findings[0].rule_id == "ST-F08" and report.exit_code == 2


# -- inspect refuses what validate refuses ------------------------------------------------------------------
DISPUTED = [
    ("same-name-twice", _file('{"a":' + _tensors(U8) + ',"a":' + _tensors(U8) + "}", b"abcd"), "ST-F08"),
    ("same-name-escaped", _file('{"a":' + _tensors(U8) + ',"\\u0061":' + _tensors(U8) + "}", b"abcd"), "ST-F08"),
    ("metadata-key-twice", _file('{"__metadata__":{"k":"a","k":"b"},"a":' + _tensors(U8) + "}", b"abcd"), "ST-F08"),
    ("array-form-entry", _file('{"t":["U8",[4],[0,4]]}', b"abcd"), "ST-F10"),
    ("map-form-dtype", _file('{"t":{"dtype":{"U8":null},"shape":[4],"data_offsets":[0,4]}}', b"abcd"), "ST-F11"),
]


@pytest.mark.parametrize("case, data, rule", DISPUTED, ids=[c[0] for c in DISPUTED])
def test_inspect_refuses_a_header_readers_disagree_on(tmp_path, case, data, rule):
    """Regression: ``inspect`` used to show the reference's reading of these (exit 0) while
    ``validate`` fails them; now both refuse with the same rule."""
    path = _write(tmp_path, data)
    assert reference_read(path)[0] is None  # the reference reads them; other readers read them otherwise
    assert tensorsafe.validate(path).findings[0].rule_id == rule
    with pytest.raises(HeaderFormatError) as info:
        inspect_file(path)
    assert info.value.rule_id == rule
    result = invoke(["inspect", str(path)])
    assert result.exit_code == 2 and "model.safetensors" in result.output, result.output
    with pytest.raises(tensorsafe.TensorsafeError):
        tensorsafe.load_state_dict(path)


def test_remote_inspect_refuses_a_header_readers_disagree_on(tmp_path, hub):
    path = _write(tmp_path, DISPUTED[0][1])
    hub.add_repo("me/dup", {"model.safetensors": path})
    result = invoke(["inspect", "hf://me/dup/model.safetensors"])
    assert result.exit_code == 2 and "declared twice" in result.output, result.output


# -- dtypes ---------------------------------------------------------------------------------------------------
def test_the_installed_library_knows_exactly_our_dtypes(tmp_path):
    """Its "unknown variant" error lists its dtype enum: the same names, in the same order, as ours."""
    path = _write(tmp_path, _file('{"t":{"dtype":"NOPE","shape":[1],"data_offsets":[0,1]}}', b"x"))
    from safetensors import safe_open

    with pytest.raises(Exception) as info:
        safe_open(str(path), "np")
    listed = re.search(r"expected one of (.*?) at line", str(info.value)).group(1)
    assert tuple(re.findall(r"`(\w+)`", listed)) == DTYPE_ORDER
    assert set(DTYPE_ORDER) == set(DTYPE_BITS)
    report = tensorsafe.validate(path)
    assert report.findings[0].rule_id == "ST-F11"


def _torch_tensors():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f64_scalar": torch.tensor(3.5, dtype=torch.float64),
        "f16_empty": torch.zeros(0, 3, dtype=torch.float16),
        "bf16": torch.randn(4, generator=g).to(torch.bfloat16),
        "c64": torch.randn(2, 3, dtype=torch.complex64, generator=g),
        "f8_e4m3": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(5, generator=g).to(torch.float8_e5m2),
        "f8_e8m0": torch.rand(5, generator=g).to(torch.float8_e8m0fnu),
        "f8_e4m3fnuz": torch.randn(5, generator=g).to(torch.float8_e4m3fnuz),
        "f8_e5m2fnuz": torch.randn(5, generator=g).to(torch.float8_e5m2fnuz),
        "bool": torch.tensor([True, False, True]),
        "u16": torch.tensor([1, 2, 60000], dtype=torch.int32).to(torch.uint16),
        "u32": torch.tensor([1, 2], dtype=torch.int64).to(torch.uint32),
        "u64": torch.tensor([1, 2]).to(torch.uint64),
        "i8": torch.tensor([-2, 1], dtype=torch.int8),
    }


def _same_bytes(ours: dict, reference: dict) -> None:
    import torch

    assert set(ours) == set(reference)
    for name, want in reference.items():
        got = ours[name]
        assert (got.dtype, tuple(got.shape)) == (want.dtype, tuple(want.shape)), name
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), name


def test_every_dtype_the_writer_writes_is_clean_and_reads_byte_exact(tmp_path):
    """safetensors.torch writes every dtype torch has a type for (the 0.6/0.8 additions included):
    validate and scan pass it, load_state_dict and convert give the library's tensors bit for bit."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "all.safetensors"
    save_file(_torch_tensors(), str(path), metadata={"format": "pt"})
    assert not tensorsafe.validate(path).findings and not tensorsafe.scan(path).findings
    reference = load_file(str(path))
    _same_bytes(tensorsafe.load_state_dict(path), reference)
    out = tmp_path / "out.safetensors"
    tensorsafe.convert(path, out)
    _same_bytes(load_file(str(out)), reference)


def test_f4_from_the_writer_is_valid_but_not_read(tmp_path):
    """F4 (two per byte) is a valid header dtype; tensorsafe has no array type for it: a typed error."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "f4.safetensors"
    save_file({"w": torch.zeros(2, 4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)}, str(path))
    assert reference_read(path)[0] is None and not tensorsafe.validate(path).findings
    assert [(t.dtype, t.shape) for t in inspect_file(path).tensors] == [("F4", (2, 8))]
    with pytest.raises(tensorsafe.TensorsafeError):
        tensorsafe.load_state_dict(path)


@pytest.mark.parametrize("dtype, shape, nbytes, torch_reads", [
    ("F6_E2M3", [4], 3, False),       # no Python loader has an F6 type
    ("F6_E3M2", [2, 4], 6, False),
    ("F4", [2, 3], 3, False),         # torch needs an even last dimension
    ("F4", [3, 2], 3, True),
])
def test_sub_byte_dtypes_the_loader_cannot_build_are_advisories(tmp_path, dtype, shape, nbytes, torch_reads):
    """The header is valid (the reference reads it); whether torch can build the tensor is ST-A03."""
    from safetensors import safe_open

    path = _write(tmp_path, build(_tensors({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}),
                                  nbytes))
    assert reference_read(path)[0] is None
    try:
        with safe_open(str(path), "pt") as f:
            f.get_tensor("t")
        read = True
    except Exception:  # SafetensorError: "Dtype not understood" / "f4_x2 dtype requires ..."
        read = False
    assert read == torch_reads
    report = tensorsafe.validate(path)
    assert report.exit_code == 0 and ("ST-A03" in {f.rule_id for f in report.findings}) == (not torch_reads)


def test_pread_backend_truncated_header(tmp_path):
    """The pread backend test's cut: 8 + N/2 bytes of a real file is ST-F03 (the header runs past the end)."""
    whole = model([("w", "F32", (3, 4)), ("b", "BF16", (4,))], {"foo": "bar"})
    n = struct.unpack_from("<Q", whole)[0]
    path = _write(tmp_path, whole[:8 + n // 2])
    assert "ST-F03" in reference_read(path)[0]
    assert [f.rule_id for f in tensorsafe.validate(path).findings] == ["ST-F03"]


# -- polyglots the reference's loaders would open otherwise (regressions) ------------------------------------
class _RunsTrue:
    """Pickled as a call of os.system("true") by torch.save (only written, never loaded)."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


def _torch_zip(hostile: bool) -> bytes:
    import io

    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), **({"hook": _RunsTrue()} if hostile else {})}, buf)
    return buf.getvalue()


def _ids(report) -> set[str]:
    return {f.rule_id for f in report.findings}


@pytest.mark.parametrize("hostile", [True, False])
def test_torch_save_zip_in_the_last_tensor_is_a_polyglot(tmp_path, hostile):
    """Regression: torch.save writes zip64 end records between the central directory and the end
    record; the zip check looked for the directory right before the end record and called this clean."""
    import zipfile

    blob = _torch_zip(hostile)
    data = model([("w", "F32", (4,)), ("blob", "U8", (len(blob),))])
    path = _write(tmp_path, data[:-len(blob)] + blob)
    assert reference_read(path)[0] is None and zipfile.is_zipfile(path)
    validated, scanned = tensorsafe.validate(path), tensorsafe.scan(path)
    assert "ST-P08" in _ids(validated) and validated.exit_code == 1
    assert "ST-P08" in _ids(scanned) and scanned.exit_code == 1
    assert ("PK-I01" in _ids(scanned)) == hostile


def test_zip_appended_after_the_last_tensor_is_judged(tmp_path):
    """Regression: the reference refuses it (ST-F18) but zip readers open it; scan judged nothing."""
    path = _write(tmp_path, model([("w", "F32", (4,))]) + _torch_zip(True))
    assert "ST-F18" in reference_read(path)[0]
    validated, scanned = tensorsafe.validate(path), tensorsafe.scan(path)
    assert [f.rule_id for f in validated.findings][:2] == ["ST-F18", "ST-P08"] and validated.exit_code == 1
    assert {"ST-F18", "ST-P08", "PK-I01"} <= _ids(scanned) and scanned.exit_code == 1


@pytest.mark.parametrize("edit", ["one-byte-more", "one-byte-less"])
def test_acting_pickle_front_of_a_broken_file_is_judged(tmp_path, edit):
    """Regression: a pickle front that calls os.system in a file one byte off (ST-F18): the
    front was not walked once the header failed, so scan said "error" and never named the call."""
    from tests.safetensors.test_polyglot_front import PAYLOAD, x_front

    good = x_front(PAYLOAD)
    path = _write(tmp_path, good + b"Z" if edit == "one-byte-more" else good[:-1])
    assert "ST-F18" in reference_read(path)[0]
    validated, scanned = tensorsafe.validate(path), tensorsafe.scan(path)
    assert validated.findings[0].rule_id == "ST-F18" and {"ST-P08", "PK-I01"} <= _ids(validated)
    assert {"ST-F18", "ST-P08", "PK-I01"} <= _ids(scanned) and scanned.exit_code == 1


def test_disputed_header_with_a_zip_in_the_last_tensor_is_judged(tmp_path):
    """Regression: a repeated metadata key (ST-F08) stopped every other check, the zip included."""
    blob = _torch_zip(True)
    entries = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "blob": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [16, 16 + len(blob)]}}
    text = '{"__metadata__":{"k":"a","k":"b"},' + _tensors(entries)[1:]
    path = _write(tmp_path, build(text, bytes(16) + blob))
    assert reference_read(path)[0] is None
    validated, scanned = tensorsafe.validate(path), tensorsafe.scan(path)
    assert validated.findings[0].rule_id == "ST-F08" and "ST-P08" in _ids(validated)
    assert {"ST-F08", "ST-P08", "PK-I01"} <= _ids(scanned) and scanned.exit_code == 1


def test_broken_files_without_a_polyglot_keep_their_one_finding(tmp_path):
    """What the change leaves alone: a data-only front (ST-A04) of a broken file adds nothing, and a
    file whose length field already fails (ST-F01-F03: a plain pickle given to validate) is not walked."""
    n = 11_869  # the length's bytes start with "]." (EMPTY_LIST, STOP): a data-only pickle front
    text = _tensors({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    data = struct.pack("<Q", n) + text + b" " * (n - len(text)) + b"abcd"
    assert [f.rule_id for f in tensorsafe.validate(_write(tmp_path, data + b"Z")).findings] == ["ST-F18"]
    hostile_pickle = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    report = tensorsafe.validate(_write(tmp_path, hostile_pickle, "evil.pkl"))
    assert [f.rule_id for f in report.findings] == ["ST-F02"] and report.exit_code == 2


def _tar_polyglot(pickle_bytes: bytes) -> bytes:
    """A safetensors file whose first 512 bytes (length + header text) are also a tar header that
    ``tarfile`` reads: a pax record naming the next member ``storages`` (torch's pre-1.0 layout, which
    torch.load reads with tarfile first) and that member, both in the tensor's bytes."""
    import tarfile

    record = b" path=storages\n"
    record = b"%d" % (len(record) + 2) + record
    member = tarfile.TarInfo("storages")
    member.size, member.mtime = len(pickle_bytes), 0
    data = record.ljust(512, b"\0") + member.tobuf(format=tarfile.USTAR_FORMAT) \
        + pickle_bytes + bytes(-len(pickle_bytes) % 512 + 1024)
    block = bytearray(b" " * 512)
    block[0:8] = struct.pack("<Q", 504)  # the data area starts at 512
    block[8:30] = b'{"__metadata__":{"k":"'  # a metadata string runs over tarfile's number fields
    block[30:100] = b"a" * 70
    block[100:157] = b"0000644 0000000 0000000 %011o 00000000000         x" % len(record)
    block[157:329] = b"b" * 172  # devmajor and devminor (329..345) stay spaces: empty numbers
    block[345:360] = b"b" * 15
    tail = b'"},"t":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (len(data), len(data))
    block[360:360 + len(tail)] = tail
    block[148:156] = b"%07o " % sum(block)  # the checksum, counted with its own field as spaces
    return bytes(block) + data


def test_tar_header_at_the_start_is_a_polyglot(tmp_path):
    """Regression: a valid safetensors file that tarfile also opens, holding a pickle that calls
    os.system("true") as torch's legacy ``storages`` member: validate and scan called it clean."""
    import tarfile

    payload = b"cos\nsystem\n(S'true'\ntR."
    path = _write(tmp_path, _tar_polyglot(payload))
    assert reference_read(path)[0] is None
    with tarfile.open(path, mode="r:") as tar:  # what torch.load's pre-1.0 reader opens
        assert tar.extractfile("storages").read() == payload
    validated, scanned = tensorsafe.validate(path), tensorsafe.scan(path)
    assert "ST-P08" in _ids(validated) and validated.exit_code == 1
    assert {"ST-P08", "PK-I01"} <= _ids(scanned) and scanned.exit_code == 1


def test_hdf5_after_a_user_block_is_a_polyglot(tmp_path):
    """Regression: an HDF5 file written with a 512-byte user block, its first 512 bytes replaced by a
    safetensors length and header whose one tensor is the rest of the file. The reference reads it,
    h5py opens it (Keras .h5 loaders test ``h5py.is_hdf5``); its Keras config holds a Lambda layer.
    validate and scan called it clean; the same HDF5 file on its own fails KERAS-01."""
    h5py = pytest.importorskip("h5py")
    import numpy as np

    config = json.dumps({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Lambda", "config": {"function": ["4wEAAAAA", None, None], "function_type": "lambda"}}]}})
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w", userblock_size=512) as f:
        f.attrs["model_config"] = config
        f.create_dataset("w", data=np.zeros(4, dtype=np.float32))
    raw = bytearray(h5.read_bytes())
    size = len(raw) - 512
    text = _tensors({"blob": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    raw[:512] = struct.pack("<Q", 504) + text.ljust(504)
    path = _write(tmp_path, bytes(raw))
    assert reference_read(path)[0] is None and h5py.is_hdf5(path)
    validated, scanned = tensorsafe.validate(path), tensorsafe.scan(path)
    assert "ST-P08" in _ids(validated) and validated.exit_code == 1
    assert {"ST-P08", "KERAS-01"} <= _ids(scanned) and scanned.exit_code == 1


def test_remote_validate_sees_the_tar_polyglot(tmp_path, hub):
    """The hf:// validator runs the same checks over range reads: the tar header is found there too."""
    from tensorsafe.hub.scan import validate_hub

    path = _write(tmp_path, _tar_polyglot(b"cos\nsystem\n(S'true'\ntR."))
    hub.add_repo("me/tar", {"model.safetensors": path})
    result = validate_hub("hf://me/tar/model.safetensors").files[0]
    assert "ST-P08" in {f.rule_id for f in result.findings}


def test_header_of_exactly_the_limit_is_read(tmp_path):
    """N = 100,000,000 (MAX_HEADER_SIZE itself) is allowed: the reference reads it, and so do we
    (ST-P01 says the Hub's helpers would not; no tensors: ST-A03)."""
    n = 100_000_000
    path = _write(tmp_path, struct.pack("<Q", n) + b"{}" + b" " * (n - 2))
    assert reference_read(path)[0] is None
    report = tensorsafe.validate(path)
    assert report.exit_code == 0 and {f.rule_id for f in report.findings} == {"ST-P01", "ST-A03"}


def test_zip_that_only_other_zip_readers_open_is_still_a_polyglot(tmp_path):
    """A stray end-record signature in the archive comment makes ``zipfile`` give up; readers that
    search back for an end record that fits still open the archive: ST-P08 stays."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data.pkl", b"\x80\x02}q\x00.")
        zf.comment = b"xxxxPK\x05\x06xxxx"
    blob = buf.getvalue()
    data = model([("w", "F32", (4,)), ("blob", "U8", (len(blob),))])
    path = _write(tmp_path, data[:-len(blob)] + blob)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(path)
    report = tensorsafe.validate(path)
    assert "ST-P08" in _ids(report) and report.exit_code == 1
