"""The canonical fast path (msgspec decode + re-encoding check) takes the writer's texts and
refuses every text where a lenient JSON reader and serde_json could disagree; the exact reader
then decides, and both give the same outcome."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from tensorsafe.readers.safetensors import canonical
from tensorsafe.readers.safetensors.layout import FileSource, RawHeader, read_header
from tensorsafe.readers.safetensors.model import HeaderFormatError
from tensorsafe.readers.safetensors.parse import parse_header

T = '"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}'


def _outcome(text: str, accelerate: bool):
    raw = RawHeader(len(text.encode()), 1 << 40, text, text.encode())
    try:
        header = parse_header(raw, accelerate=accelerate)
    except HeaderFormatError as exc:
        return ("error", exc.rule_id, exc.message)
    return ("ok", header.tensors, header.metadata, header.metadata_null, header.extra_fields,
            [i.rule_id for i in header.differentials], header.max_depth, header.leading_whitespace,
            header.trailing_padding)


def test_files_written_by_safetensors_take_the_fast_path(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {f"layer.{i}.weight": np.zeros((i + 1, 3), np.float16) for i in range(5)}
    tensors["scalar"] = np.zeros((), np.float32)
    save_file(tensors, str(path), metadata={"format": "pt", "note": 'quote " and \\ and \n é'})
    with FileSource(path) as src:
        raw = read_header(src)
    fast = canonical.read(raw.text, raw.data)
    assert fast is not None
    assert fast.metadata == {"format": "pt", "note": 'quote " and \\ and \n é'}
    assert {r[0]: r[2] for r in fast.table.rows()} == {k: v.shape for k, v in tensors.items()}
    assert _outcome(raw.text, True) == _outcome(raw.text, False)


@pytest.mark.parametrize("text", [
    "{" + T + "}", '{"__metadata__":{"a":"b"},' + T + "}   ", '{"__metadata__":{}}', "{}", "  {" + T + "}\n",
    '{"__metadata__":{"k\\u0001":"v\\n\\"é"},' + T + "}",
])
def test_canonical_texts_are_read_fast_and_exactly(text):
    assert canonical.read(text) is not None
    assert _outcome(text, True) == _outcome(text, False)


@pytest.mark.parametrize("text", [
    "{" + T + "," + T + "}",                                    # a repeated name
    '{"t":{"dtype":"F16","dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}',  # a repeated field
    '{"__metadata__":{"a":"b","a":"c"},' + T + "}",             # a repeated metadata key
    '{"__metadata__":{"a":"b"},' + T + ',"__metadata__":{"a":"b"}}',
    "{" + T + ',"__metadata__":{"a":"b"}}',                      # metadata last
    '{"t":{"dtype":"F16","shape":[-0],"data_offsets":[0,0]}}',  # -0: a float to serde
    '{"t":{"dtype":"F16","shape":[2.0],"data_offsets":[0,4]}}',
    '{"t":{"dtype":"F16","shape":[18446744073709551616],"data_offsets":[0,4]}}',  # past u64
    '{"t":{"dtype":"F16","shape":[9223372036854775808],"data_offsets":[0,4]}}',   # in [2^63, 2^64)
    '{"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12],"x":{"y":[1]}}}',  # an unknown field
    '{"t":{"dtype":"F16","data_offsets":[0,4]}}',               # a missing field
    '{"t":{"dtype":"F16","shape":null,"data_offsets":[0,4]}}',
    '{"t":{"shape":[2,3],"dtype":"F16","data_offsets":[0,12]}}',  # another field order
    '{"t": {"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}',  # whitespace inside
    '{"t":{"dtype":"F\\u0031\\u0036","shape":[2,3],"data_offsets":[0,12]}}',  # an escape serde does not write
    '{"__metadata__":null,' + T + "}",
    '{"__metadata__":{"a":"b"},}', "{" + T + ",}", "{" + T + "}x", '{"t":["F16",[2,3],[0,12]]}',
    '{"\\ud800":{"dtype":"F16","shape":[],"data_offsets":[0,2]}}',  # a lone surrogate
    "{" * 300 + "}" * 300,
])
def test_texts_a_lenient_reader_could_read_otherwise_take_the_exact_reader(text):
    assert canonical.read(text) is None
    assert _outcome(text, True) == _outcome(text, False)


def test_a_big_header_is_read_fast_and_exactly():
    doc, offset = {"__metadata__": {"format": "pt"}}, 0
    for i in range(300):
        doc[f"t.{i}"] = {"dtype": "U8", "shape": [i % 7, 3] if i % 5 else [], "data_offsets": [offset, offset + (i % 7) * 3 if i % 5 else offset + 1]}
        offset = doc[f"t.{i}"]["data_offsets"][1]
    text = json.dumps(doc, separators=(",", ":"))
    assert canonical.read(text) is not None
    assert _outcome(text, True) == _outcome(text, False)
