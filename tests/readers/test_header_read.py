"""The one safetensors header reader for use (tensorsafe/readers/safetensors/read.py): what the
converter, the loader, the pipeline and the converter's own verification read headers through."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from tensorsafe.errors import ParseError
from tensorsafe.readers.blob import Span
from tensorsafe.readers.safetensors.model import HeaderFormatError
from tensorsafe.readers.safetensors.read import read_checked_header, read_tensor_refs
from tests.st_build import build


def test_refs_point_at_the_bytes_the_reference_writer_wrote():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, 8], dtype=np.int64)}
    data = save(tensors, metadata={"format": "pt"})
    header, refs = read_tensor_refs(Span.of_bytes(data))
    assert header.metadata == {"format": "pt"}
    for name, array in tensors.items():
        ref = refs[name]
        assert (ref.dtype.name, ref.shape) == ({"a": "F32", "b": "I64"}[name], array.shape)
        start = ref.storage.offset
        assert data[start:start + ref.storage.nbytes] == array.tobytes()


def test_a_repeated_name_is_refused_although_the_reference_keeps_the_last():
    """Readers disagree on which entry counts (serde keeps the last, others the first): refused."""
    text = ('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            '"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}')
    data = build(text, 2)
    assert read_checked_header(Span.of_bytes(data)).differentials  # the validator reports ST-F08
    with pytest.raises(HeaderFormatError) as info:
        read_tensor_refs(Span.of_bytes(data))
    assert info.value.rule_id == "ST-F08"


def test_a_format_error_is_the_reference_error():
    data = build({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4)  # 2 x F32 is 8 bytes
    with pytest.raises(HeaderFormatError) as info:
        read_tensor_refs(Span.of_bytes(data))
    assert info.value.rule_id.startswith("ST-F")


def test_a_sub_byte_dtype_is_valid_but_not_readable_as_an_array():
    data = build({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, 1)
    assert read_checked_header(Span.of_bytes(data)).tensors[0][1] == "F4"
    with pytest.raises(ParseError, match="F4"):
        read_tensor_refs(Span.of_bytes(data))
