"""One fixture per safetensors header rule (docs/safetensors.md), built here.

Every format case is also read by the real safetensors library: where it refuses the file, our
first finding is the rule its error stands for; where it accepts (our stricter F08/F10/F11), the
test says so.
"""
from __future__ import annotations

import json
import struct
import zipfile
from io import BytesIO

import pytest

import tensorsafe
from tensorsafe.safetensors import HeaderLimits
from tests.safetensors_oracle import reference_read
from tests.st_build import build, entries, model

U8 = {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}


def _file(tmp_path, data: bytes, name: str = "model.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _findings(tmp_path, data: bytes, limits: HeaderLimits | None = None):
    report = tensorsafe.validate(_file(tmp_path, data), limits or HeaderLimits())
    return report, [f.rule_id for f in report.findings]


def _raw(header: bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    return build(header, data, length=length, align=1)


def _j(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- format rules: (id, file bytes, rule) --------------------------------------------------------------
FORMAT_CASES = [
    ("F01-empty", b"", "ST-F01"),
    ("F01-seven-bytes", b"\x01" * 7, "ST-F01"),
    ("F02-2^63-on-16-bytes", struct.pack("<Q", 1 << 63) + b"{}      ", "ST-F02"),
    ("F02-2^64-1", struct.pack("<Q", (1 << 64) - 1) + b"{}", "ST-F02"),
    ("F02-just-over", _raw("{}", length=100_000_001), "ST-F02"),
    ("F03-past-eof", _raw("{}", length=1000), "ST-F03"),
    ("F03-99MB-on-1KB", struct.pack("<Q", 99_999_999) + b"{" + b" " * 1015, "ST-F03"),
    ("F04-invalid-byte", _raw(b"\xff{}"), "ST-F04"),
    ("F04-utf16-bom", _raw("{}".encode("utf-16")), "ST-F04"),
    ("F04-encoded-surrogate", _raw(b'{"a\xed\xa0\x80":1}'), "ST-F04"),
    ("F04-overlong", _raw(b'{"\xc0\xaf":1}'), "ST-F04"),
    ("F05-empty-header", _raw(b""), "ST-F05"),
    ("F05-utf8-bom", _raw(b"\xef\xbb\xbf{}"), "ST-F05"),
    ("F05-utf16le-no-bom", _raw("{}".encode("utf-16-le")), "ST-F05"),
    ("F05-nul-padding", _raw(b"{}\x00\x00\x00\x00\x00\x00"), "ST-F05"),
    ("F05-two-objects", _raw(b"{}{}"), "ST-F05"),
    ("F05-comment", _raw(b"{/* c */}"), "ST-F05"),
    ("F05-trailing-comma", _raw(b'{"__metadata__":{"a":"b",}}'), "ST-F05"),
    ("F05-single-quotes", _raw(b"{'a':1}"), "ST-F05"),
    ("F05-nan", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":NaN}}', b"x"), "ST-F05"),
    ("F05-infinity", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":-Infinity}}', b"x"), "ST-F05"),
    ("F05-leading-zero", _raw('{"t":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}', b"x"), "ST-F05"),
    ("F05-raw-control-char", _raw('{"t\x01":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"), "ST-F05"),
    ("F05-lone-surrogate", _raw('{"__metadata__":{"k":"\\ud800"}}'), "ST-F05"),
    ("F05-lone-trailing-surrogate", _raw('{"t\\udc00":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
     "ST-F05"),
    ("F05-number-out-of-range", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1e400}}', b"x"),
     "ST-F05"),
    ("F05-before-later-type-error", _raw('{"t":{"dtype":"XX"},"u":tru}'), "ST-F05"),
    ("F05-trailing-after-valid", _raw(_j({"t": U8}) + "x", b"x"), "ST-F05"),
    ("F06-depth-128", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + "[" * 126 + "]" * 126
                           + "}}", b"x"), "ST-F06"),
    ("F06-deep-metadata-value", _raw('{"x":' + "[" * 200 + "]" * 200 + "}"), "ST-F06"),
    ("F07-array", _raw(b"[]"), "ST-F07"),
    ("F07-string", _raw(b'"abc"'), "ST-F07"),
    ("F07-number", _raw(b"1"), "ST-F07"),
    ("F07-null", _raw(b"null"), "ST-F07"),
    ("F08-duplicate-metadata", _raw('{"__metadata__":{},"__metadata__":null}'), "ST-F08"),
    ("F08-duplicate-field", _raw('{"t":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"),
     "ST-F08"),
    ("F09-metadata-number", _raw('{"__metadata__":1}'), "ST-F09"),
    ("F09-metadata-array", _raw('{"__metadata__":[]}'), "ST-F09"),
    ("F09-metadata-value-number", _raw('{"__metadata__":{"k":1}}'), "ST-F09"),
    ("F09-metadata-value-null", _raw('{"__metadata__":{"k":null}}'), "ST-F09"),
    ("F09-before-earlier-tensor-error", _raw('{"t":{"dtype":"XX"},"__metadata__":{"k":1}}'), "ST-F09"),
    ("F10-missing-field", _raw('{"t":{"dtype":"U8","shape":[1]}}', b"x"), "ST-F10"),
    ("F10-string-entry", _raw('{"t":"U8"}'), "ST-F10"),
    ("F10-null-entry", _raw('{"t":null}'), "ST-F10"),
    ("F10-array-wrong-length", _raw('{"t":["U8",[1]]}', b"x"), "ST-F10"),
    ("F11-unknown-dtype", _raw('{"t":{"dtype":"XX","shape":[1],"data_offsets":[0,1]}}', b"x"), "ST-F11"),
    ("F11-lowercase", _raw('{"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}', b"x" * 4), "ST-F11"),
    ("F11-u128", _raw('{"t":{"dtype":"U128","shape":[1],"data_offsets":[0,16]}}', b"x" * 16), "ST-F11"),
    ("F11-map-two-keys", _raw('{"t":{"dtype":{"U8":null,"I8":null},"shape":[1],"data_offsets":[0,1]}}', b"x"),
     "ST-F11"),
    ("F11-map-value", _raw('{"t":{"dtype":{"U8":1},"shape":[1],"data_offsets":[0,1]}}', b"x"), "ST-F11"),
    ("F11-wins-over-trailing", _raw('{"t":{"dtype":"XX","shape":[1],"data_offsets":[0,1]}}\x00', b"x"), "ST-F11"),
    ("F12-negative", _raw('{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', b"x"), "ST-F12"),
    ("F12-fraction", _raw('{"t":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', b"x"), "ST-F12"),
    ("F12-exponent", _raw('{"t":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}', b"x"), "ST-F12"),
    ("F12-minus-zero", _raw('{"t":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}'), "ST-F12"),
    ("F12-2^64", _raw('{"t":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}}', b"x"), "ST-F12"),
    ("F12-string", _raw('{"t":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}}', b"x"), "ST-F12"),
    ("F12-not-array", _raw('{"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}', b"x"), "ST-F12"),
    ("F13-three", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}', b"x"), "ST-F13"),
    ("F13-one", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[1]}}', b"x"), "ST-F13"),
    ("F13-object", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":{"a":1}}}', b"x"), "ST-F13"),
    ("F13-null", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":null}}', b"x"), "ST-F13"),
    ("F13-negative", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,-1]}}', b"x"), "ST-F13"),
    ("F14-overflow-before-zero", _raw(_j({"t": {"dtype": "U8", "shape": [1 << 32, 1 << 32, 0],
                                               "data_offsets": [0, 0]}})), "ST-F14"),
    ("F14-bits-overflow", _raw(_j({"t": {"dtype": "F64", "shape": [1 << 61], "data_offsets": [0, 0]}})), "ST-F14"),
    ("F15-f4-scalar", _raw(_j({"t": {"dtype": "F4", "shape": [], "data_offsets": [0, 0]}})), "ST-F15"),
    ("F15-f4-odd", _raw(_j({"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}), b"x"), "ST-F15"),
    ("F15-f6-three", _raw(_j({"t": {"dtype": "F6_E2M3", "shape": [3], "data_offsets": [0, 2]}}), b"xx"), "ST-F15"),
    ("F16-hole", _raw(_j({"a": U8, "b": {**U8, "data_offsets": [2, 3]}}), b"xxx"), "ST-F16"),
    ("F16-overlap", _raw(_j({"a": {**U8, "shape": [2], "data_offsets": [0, 2]},
                             "b": {**U8, "data_offsets": [1, 2]}}), b"xx"), "ST-F16"),
    ("F16-shared-range", _raw(_j({"a": U8, "b": U8}), b"x"), "ST-F16"),
    ("F16-backwards", _raw(_j({"a": {**U8, "data_offsets": [1, 0]}}), b"x"), "ST-F16"),
    ("F16-not-from-zero", _raw(_j({"a": {**U8, "data_offsets": [1, 2]}}), b"xx"), "ST-F16"),
    ("F17-size-mismatch", _raw(_j({"a": {**U8, "shape": [2]}}), b"x"), "ST-F17"),
    ("F17-f32-bytes", _raw(_j({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}), b"xxxx"), "ST-F17"),
    ("F18-truncated", _raw(_j({"a": {**U8, "shape": [4], "data_offsets": [0, 4]}}), b"xx"), "ST-F18"),
    ("F18-trailing-bytes", _raw(_j({"a": U8}), b"x" + b"PK\x05\x06" + bytes(18)), "ST-F18"),
    ("F18-no-tensors-trailing", _raw(b"{}", b"x"), "ST-F18"),
]


@pytest.mark.parametrize("case, data, rule", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_format_rule(tmp_path, case, data, rule):
    report, ids = _findings(tmp_path, data)
    assert ids and ids[0] == rule, report.findings
    assert report.exit_code == 2
    assert all(r.startswith("ST-F") for r in ids)
    refused, _ = reference_read(_file(tmp_path, data, "ref.safetensors"))
    assert refused is not None and rule in refused, (case, refused)


DIFFERENTIAL_CASES = [
    # the reference accepts these; the format forbids them and other readers disagree (spec F08, F10, F11)
    ("F08-same-tensor-twice", _raw(_j({"t": U8})[:-1] + ',"t":' + _j(U8) + "}", b"x"), "ST-F08"),
    ("F08-duplicate-metadata-key", _raw('{"__metadata__":{"k":"a","k":"b"}}'), "ST-F08"),
    ("F08-duplicate-ignored-key", _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"q":1,"q":2}}', b"x"),
     "ST-F08"),
    ("F08-two-empty-tensors", _raw('{"t":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
                                   '"t":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'), "ST-F08"),
    ("F10-array-entry", _raw('{"t":["U8",[1],[0,1]]}', b"x"), "ST-F10"),
    ("F11-map-dtype", _raw('{"t":{"dtype":{"U8":null},"shape":[1],"data_offsets":[0,1]}}', b"x"), "ST-F11"),
]


@pytest.mark.parametrize("case, data, rule", DIFFERENTIAL_CASES, ids=[c[0] for c in DIFFERENTIAL_CASES])
def test_stricter_than_reference(tmp_path, case, data, rule):
    report, ids = _findings(tmp_path, data)
    assert ids[0] == rule and report.exit_code == 2, report.findings
    refused, _ = reference_read(_file(tmp_path, data, "ref.safetensors"))
    assert refused is None, "the reference accepts this file; we refuse it on purpose"


def test_duplicate_names_that_differ_report_the_reference_error_first(tmp_path):
    # safetensors#401: the lost range shows up as an offset error; we report it, then the duplicate
    data = _raw('{"t":' + _j(U8) + ',"t":' + _j({**U8, "data_offsets": [1, 2]}) + "}", b"xx")
    _, ids = _findings(tmp_path, data)
    assert ids[:2] == ["ST-F16", "ST-F08"]


def test_depth_127_is_accepted_by_the_format(tmp_path):
    data = _raw('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + "[" * 125 + "]" * 125 + "}}", b"x")
    report, ids = _findings(tmp_path, data)
    assert "ST-P07" in ids and not any(r.startswith("ST-F") for r in ids)
    assert reference_read(_file(tmp_path, data, "ref.safetensors"))[0] is None


def test_metadata_key_is_case_sensitive(tmp_path):
    data = _raw('{"__METADATA__":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}')
    report, ids = _findings(tmp_path, data)
    assert not any(r.startswith("ST-F") for r in ids)


def test_escaped_metadata_key_is_metadata(tmp_path):
    data = _raw('{"__metadata\\u005f_":{"k":1}}')  # serde compares the unescaped key
    assert _findings(tmp_path, data)[1][0] == "ST-F09"


# -- policy rules ---------------------------------------------------------------------------------------
def _named(name: str) -> bytes:
    return _raw(_j({name: U8}), b"x")


POLICY_CASES = [
    ("P01-header-size", model([("a", "F32", (2,))]), HeaderLimits(header_warn_bytes=16), "ST-P01"),
    ("P02-tensor-count", model([("a", "U8", (1,)), ("b", "U8", (1,)), ("c", "U8", (1,))]),
     HeaderLimits(max_tensors=2), "ST-P02"),
    ("P03-rank", model([("a", "U8", (1,) * 17)]), None, "ST-P03"),
    ("P04-dimension", _raw(_j({"a": {"dtype": "U8", "shape": [0, 1 << 48], "data_offsets": [0, 0]}})), None,
     "ST-P04"),
    ("P04-empty-absurd", _raw(_j({"a": {"dtype": "U8", "shape": [0, 1 << 63], "data_offsets": [0, 0]}})), None,
     "ST-P04"),
    ("P04-non-zero-product", _raw(_j({"a": {"dtype": "U8", "shape": [0, 1 << 30, 1 << 30],
                                            "data_offsets": [0, 0]}})), None, "ST-P04"),
    ("P05-empty-name", _named(""), None, "ST-P05"),
    ("P05-long-name", _named("x" * 1025), None, "ST-P05"),
    ("P05-nul", _named("a\x00b"), None, "ST-P05"),
    ("P05-del", _named("a\x7fb"), None, "ST-P05"),
    ("P05-c1-control", _named("a\x85b"), None, "ST-P05"),
    ("P05-bidi-override", _named("weight\u202e"), None, "ST-P05"),
    ("P05-zero-width", _named("we\u200bight"), None, "ST-P05"),
    ("P05-bom", _named("\ufeffweight"), None, "ST-P05"),
    ("P05-backslash", _named("a\\b"), None, "ST-P05"),
    ("P05-absolute", _named("/etc/passwd"), None, "ST-P05"),
    ("P05-parent-segment", _named("a/../../b"), None, "ST-P05"),
    ("P05-drive", _named("C:weights"), None, "ST-P05"),
    ("P06-entries", model([("a", "U8", (1,))], {f"k{i}": "v" for i in range(1025)}), None, "ST-P06"),
    ("P06-empty-key", model([("a", "U8", (1,))], {"": "v"}), None, "ST-P06"),
    ("P06-long-key", model([("a", "U8", (1,))], {"k" * 1025: "v"}), None, "ST-P06"),
    ("P06-control-key", model([("a", "U8", (1,))], {"k\x1b[2J": "v"}), None, "ST-P06"),
    ("P06-nul-value", model([("a", "U8", (1,))], {"k": "a\x00b"}), None, "ST-P06"),
    ("P06-total-size", model([("a", "U8", (1,))], {"k": "v" * 200}), HeaderLimits(max_metadata_bytes=100), "ST-P06"),
    ("P07-extra-field", _raw(_j({"a": {**U8, "extra": "x"}}), b"x"), None, "ST-P07"),
    ("P07-metadata-null", _raw(_j({"__metadata__": None, "a": U8}), b"x"), None, "ST-P07"),
    ("P07-deep", _raw(_j({"a": {**U8, "x": [[1]]}}), b"x"), None, "ST-P07"),
]


@pytest.mark.parametrize("case, data, limits, rule", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_policy_rule(tmp_path, case, data, limits, rule):
    report, ids = _findings(tmp_path, data, limits)
    assert rule in ids and not any(r.startswith("ST-F") for r in ids), report.findings
    expected = 0 if rule == "ST-P01" else 1  # P01 is an advisory about size
    assert report.exit_code == expected
    assert reference_read(_file(tmp_path, data, "ref.safetensors"))[0] is None, "policy cases are valid files"


@pytest.mark.parametrize("name", ["dense/kernel:0", "model.layers.0.weight", "a/b/c", "ünïcode.wéight", "..x",
                                  "x.."])
def test_ordinary_names_pass(tmp_path, name):
    assert "ST-P05" not in _findings(tmp_path, _named(name))[1]


def test_zip_in_last_tensor_is_a_polyglot(tmp_path):
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data.pkl", b"\x80\x02}q\x00.")
    blob = buf.getvalue()
    data = model([("w", "F32", (4,)), ("blob", "U8", (len(blob),))])
    data = data[:-len(blob)] + blob
    report, ids = _findings(tmp_path, data)
    assert "ST-P08" in ids and report.exit_code == 1
    assert zipfile.is_zipfile(_file(tmp_path, data, "z.safetensors"))


def test_data_only_pickle_front_is_an_advisory(tmp_path):
    # N = 11,869 = 0x2E5D: the file starts with "]." (EMPTY_LIST, STOP), a complete pickle that
    # imports and calls nothing (ST-P08 for fronts that act: tests/safetensors/test_polyglot_front.py)
    header, size = entries([("a", "U8", (4,))])
    text = _j(header).encode()
    data = struct.pack("<Q", 11_869) + text + b" " * (11_869 - len(text)) + bytes(size)
    assert data[:2] == b"]."
    report, ids = _findings(tmp_path, data)
    assert "ST-A04" in ids and "ST-P08" not in ids and report.exit_code == 0


def test_scan_judges_the_pickle_front_of_a_polyglot(tmp_path):
    header, size = entries([("a", "U8", (4,))])
    text = _j(header).encode()
    data = struct.pack("<Q", 11_869) + text + b" " * (11_869 - len(text)) + bytes(size)
    report = tensorsafe.scan(_file(tmp_path, data, "front.bin"))
    ids = [f.rule_id for f in report.findings]
    assert "ST-A04" in ids and report.files[0].kind == "safetensors" and report.files[0].pickles == 1
    assert report.exit_code == 0


# -- advisories -----------------------------------------------------------------------------------------
def test_padding_advisories(tmp_path):
    header, size = entries([("a", "U8", (1,))])
    data = build("  " + _j(header) + "\t\n", size, align=1)
    report, ids = _findings(tmp_path, data)
    messages = [f.message for f in report.findings if f.rule_id == "ST-A01"]
    assert len(messages) == 3 and report.exit_code == 0, messages  # leading, non-space padding, N % 8


def test_alignment_advisory(tmp_path):
    header, size = entries([("b", "U8", (1,)), ("a", "F32", (2,))])
    report, ids = _findings(tmp_path, build(header, size))
    assert "ST-A02" in ids and report.exit_code == 0


@pytest.mark.parametrize("tensors, expected", [
    ([("a", "F6_E2M3", (4,))], "F6_E2M3"),
    ([("a", "F4", (2, 3))], "odd last dimension"),
    ([], "no tensors"),
])
def test_loader_support_advisory(tmp_path, tensors, expected):
    report, ids = _findings(tmp_path, model(tensors))
    assert "ST-A03" in ids and report.exit_code == 0
    assert any(expected in f.message for f in report.findings if f.rule_id == "ST-A03")


# -- valid edge cases -----------------------------------------------------------------------------------
ALL_DTYPES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16",
              "F16", "BF16", "I32", "U32", "F32", "I64", "U64", "F64", "C64"]

VALID_CASES = [
    ("zero-size-tensors", [("a", "F32", (2,)), ("e", "F32", (0,)), ("b", "F16", (2, 0, 3)), ("c", "U8", (4,))]),
    ("scalars", [("s", "F32", ()), ("t", "I64", ())]),
    ("every-dtype", [(d.lower(), d, (2, 3)) for d in ALL_DTYPES]),
    ("sub-byte", [("f4", "F4", (2, 4))]),
    ("no-metadata", [("w", "F32", (8,))]),
    ("large-dims", [("w", "U8", (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3))]),
    ("many-tensors", [(f"layer.{i}.weight", "F32", (i % 3, 2)) for i in range(300)]),
]


@pytest.mark.parametrize("case, tensors", VALID_CASES, ids=[c[0] for c in VALID_CASES])
def test_valid_files(tmp_path, case, tensors):
    report, ids = _findings(tmp_path, model(sorted(tensors, key=lambda t: -_align(t[1])),
                                            {"format": "pt", "note": 'quoted "json" \\ and ünïcode'}))
    assert report.exit_code == 0 and not [r for r in ids if r.startswith(("ST-F", "ST-P"))], report.findings


def _align(dtype: str) -> int:
    from tensorsafe.readers.safetensors.dtypes import element_bytes

    return element_bytes(dtype)


def test_unsorted_keys_with_contiguous_offsets(tmp_path):
    header, size = entries([("z", "F32", (2,)), ("a", "F32", (3,)), ("m", "F32", (1,))])
    shuffled = {k: header[k] for k in ["m", "z", "a"]}
    report, ids = _findings(tmp_path, build(shuffled, size))
    assert report.exit_code == 0 and not ids


def test_padded_header_with_spaces(tmp_path):
    report, ids = _findings(tmp_path, model([("a", "F32", (2,))], align=64))
    assert report.exit_code == 0 and not ids


def test_written_by_the_reference(tmp_path):
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    save_file({"a": np.ones((2, 3), np.float32), "b": np.arange(5, dtype=np.int64), "c": np.zeros(0, np.float16)},
              tmp_path / "np.safetensors", metadata={"format": "np"})
    save_torch({"w": torch.ones(3, 4, dtype=torch.bfloat16), "f8": torch.zeros(2, 2).to(torch.float8_e4m3fn),
                "f8b": torch.zeros(3).to(torch.float8_e5m2), "s": torch.tensor(1.5)}, tmp_path / "pt.safetensors")
    report = tensorsafe.validate(tmp_path)
    assert len(report.files) == 2 and report.exit_code == 0 and not report.findings, report.findings


def test_names_are_reported_escaped(tmp_path):
    report, _ = _findings(tmp_path, _named("a\x1b[2Jb"))
    assert all("\x1b" not in f.message for f in report.findings)


# -- the file is read by structure, not by name -----------------------------------------------------------
def test_validate_reads_any_file_given(tmp_path):
    data = _raw(_j({"a": U8}), b"x")
    report = tensorsafe.validate(_file(tmp_path, data, "weights.bin"))
    assert report.exit_code == 0 and report.files[0].kind == "safetensors"


def test_validate_reports_a_lying_length_in_any_file(tmp_path):
    # sniff() does not call this safetensors (N runs past the end); validate still judges it
    data = _raw(_j({"a": U8}), b"x", length=500)
    report = tensorsafe.validate(_file(tmp_path, data, "weights.bin"))
    assert [f.rule_id for f in report.findings] == ["ST-F03"]


def test_folder_picks_safetensors_by_name_and_structure(tmp_path):
    _file(tmp_path, model([("a", "U8", (1,))]), "a.safetensors")
    _file(tmp_path, model([("a", "U8", (1,))]), "b.bin")
    _file(tmp_path, b"not a model", "README.md")
    _file(tmp_path, b"", "empty.safetensors")
    report = tensorsafe.validate(tmp_path)
    names = sorted(f.path.rsplit("/", 1)[-1] for f in report.files)
    assert names == ["a.safetensors", "b.bin", "empty.safetensors"]
    assert report.exit_code == 2  # the empty one is ST-F01


def test_scan_runs_the_header_checks(tmp_path):
    _file(tmp_path, model([("a", "U8", (1,))]), "good.safetensors")
    _file(tmp_path, _raw(_j({"a": U8, "b": U8}), b"x"), "overlap.safetensors")
    _file(tmp_path, build(_j({"../escape": U8}), b"x"), "renamed.dat")
    report = tensorsafe.scan(tmp_path)
    by_name = {f.path.rsplit("/", 1)[-1]: [x.rule_id for x in f.findings] for f in report.files}
    assert by_name == {"good.safetensors": [], "overlap.safetensors": ["ST-F16"], "renamed.dat": ["ST-P05"]}
    assert all(f.kind == "safetensors" for f in report.files)
    assert report.exit_code == 1  # fail wins over error


def test_scan_judges_the_zip_inside_a_polyglot(tmp_path):
    # a valid safetensors file whose last tensor is a PyTorch-like zip with a malicious pickle
    payload = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."  # built here, never loaded
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", b"3\n")
    blob = buf.getvalue()
    data = model([("w", "F32", (4,)), ("blob", "U8", (len(blob),))])
    data = data[:-len(blob)] + blob
    report = tensorsafe.scan(_file(tmp_path, data, "model.safetensors"))
    ids = {f.rule_id for f in report.findings}
    assert {"ST-P08", "PK-I01"} <= ids and report.exit_code == 1
    assert report.files[0].kind == "safetensors"
