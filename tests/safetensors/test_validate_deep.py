"""``--deep``: NaN/Inf counts per float tensor and a SHA-256, streamed in bounded chunks."""
from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest

from tensorsafe.safetensors.deep import count_non_finite, deep_check
from tensorsafe.readers.safetensors.dtypes import FLOAT_BITS
from tensorsafe.readers.safetensors.layout import FileSource
from tensorsafe.safetensors.validator import read_checked_header, validate_file
from tests.st_build import build, entries

VALUES = [0.0, -1.5, float("nan"), float("inf"), float("-inf"), 3.0, float("nan"), 1e-3]


def _torch_bytes(values, dtype) -> bytes:
    torch = pytest.importorskip("torch")
    return torch.tensor(values, dtype=torch.float32).to(dtype).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype, make", [
    ("F16", lambda v: np.array(v, np.float16).tobytes()),
    ("F32", lambda v: np.array(v, np.float32).tobytes()),
    ("F64", lambda v: np.array(v, np.float64).tobytes()),
    ("C64", lambda v: np.array(v, np.complex64).tobytes()),
    ("BF16", lambda v: _torch_bytes(v, __import__("torch").bfloat16)),
    ("F8_E5M2", lambda v: _torch_bytes(v, __import__("torch").float8_e5m2)),
])
def test_counts_match_numpy(dtype, make):
    data = make(VALUES)
    nan, inf = count_non_finite(data, FLOAT_BITS[dtype])
    assert (nan, inf) == (2, 2)


def test_fp8_without_infinity():
    torch = pytest.importorskip("torch")
    data = torch.tensor([1.0, float("nan"), 448.0, -2.0]).to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes()
    assert count_non_finite(data, FLOAT_BITS["F8_E4M3"]) == (1, 0)
    assert count_non_finite(bytes([0x80, 0x00, 0x7F, 0xFF]), FLOAT_BITS["F8_E4M3FNUZ"]) == (1, 0)
    assert count_non_finite(bytes([0xFF, 0x7F, 0x00]), FLOAT_BITS["F8_E8M0"]) == (1, 0)


def test_deep_check_streams_across_chunks(tmp_path):
    a = np.array(VALUES * 5, np.float32)
    b = np.array(VALUES * 3, np.float16)
    header, size = entries([("a", "F32", a.shape), ("i", "I64", (3,)), ("b", "F16", b.shape)])
    data = build(header, a.tobytes() + np.arange(3, dtype=np.int64).tobytes() + b.tobytes())
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with FileSource(path) as src:
        header_ = read_checked_header(src)
        for chunk in (8, 24, 1 << 20):  # chunk boundaries inside and between tensors
            result = deep_check(src, header_, chunk_bytes=chunk)
            assert result.sha256 == hashlib.sha256(data).hexdigest()
            assert result.float_tensors == 2 and result.bytes_read == len(data)
            assert [(t.name, t.nan, t.inf) for t in result.non_finite] == [("a", 10, 10), ("b", 6, 6)]


def test_deep_memory_does_not_grow_with_the_file(tmp_path):
    size = 64 << 20
    header, _ = entries([("big", "F32", (size // 4,))])
    path = tmp_path / "big.safetensors"
    path.write_bytes(build(header))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size + size)  # sparse zeros
    tracemalloc.start()
    try:
        result = validate_file(path, deep=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [f.rule_id for f in result.findings] == ["ST-D02"]
    assert peak < 48 << 20, f"peak {peak:,} bytes for a {size:,}-byte file"  # a few 8 MiB chunks and temporaries
