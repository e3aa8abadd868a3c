"""Hostile bytes through the library entry points (load_state_dict, identify, convert) raise typed errors only.

Each case is one a fuzz pass of mutated torch files found escaping as a bare ``ValueError``/``TypeError``
(numpy or torch refusing a size, stride or offset); the bytes are built here. The one property test
mutates a small torch file and asserts that nothing but a :class:`~tensorsafe.TensorsafeError` escapes.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.errors import ParseError, TensorsafeError, UsageError
from tests import pickle_ops as op

INT64_MAX = 2**63 - 1


def _int(v: int) -> bytes:
    """An int as picklers write it: BININT1 when small, else LONG1 (any size, signed); a bool as NEWTRUE/NEWFALSE."""
    if isinstance(v, bool):
        return b"\x88" if v else b"\x89"
    if 0 <= v < 256:
        return b"K" + bytes([v])
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _tensor_pickle(offset: int, size: tuple[int, ...], stride: tuple[int, ...], numel: int) -> bytes:
    """``{"e": _rebuild_tensor_v2(FloatStorage '0' of numel, offset, size, stride, False, OrderedDict())}``."""
    return b"".join([
        op.proto(2), b"}", op.binunicode("e"), op.global_("torch._utils", "_rebuild_tensor_v2"), b"((",
        op.binunicode("storage"), op.global_("torch", "FloatStorage"), op.binunicode("0"), op.binunicode("cpu"),
        _int(numel), b"tQ", _int(offset), b"(", *map(_int, size), b"t(", *map(_int, stride), b"t\x89",
        op.global_("collections", "OrderedDict"), b")Rt", b"R", b"s."])


def _torch_file(tmp_path: Path, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> Path:
    """A real ``torch.save`` zip of a (1, 7) float tensor whose data.pkl is replaced by :func:`_tensor_pickle`."""
    buf = io.BytesIO()
    torch.save({"e": torch.zeros(1, 7)}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                data = _tensor_pickle(offset, size, stride, 7)
            z.writestr(info.filename, data)
    path = tmp_path / "model.pt"
    path.write_bytes(out.getvalue())
    return path


def _calls(path: Path, tmp_path: Path) -> dict:
    return {
        "numpy": lambda: tensorsafe.load_state_dict(path, framework="numpy"),
        "torch": lambda: tensorsafe.load_state_dict(path, framework="torch"),
        "identify": lambda: tensorsafe.identify(path),
        "convert": lambda: tensorsafe.convert(path, tmp_path / "out.safetensors", overwrite=True),
    }


def test_the_hand_built_file_loads_when_its_values_are_sane(tmp_path):
    path = _torch_file(tmp_path, 0, (1, 7), (7, 1))
    assert tuple(tensorsafe.load_state_dict(path, framework="numpy")["e"].shape) == (1, 7)
    assert tuple(tensorsafe.load_state_dict(path, framework="torch")["e"].shape) == (1, 7)


@pytest.mark.parametrize("offset, size, stride, what", [
    (0, (0, 2**64), (7, 1), "size"),          # was TypeError from Tensor.set_, ParseError naming a temp file in convert
    (0, (1, 7), (2**70, 1), "stride"),        # was TypeError from Tensor.set_ (torch mode)
    (2**63, (0, 7), (7, 1), "storage offset"),  # was ValueError "Overflow when unpacking long long"
    (False, (1, 7), (7, 1), "storage offset"),  # a bool (torch.load's set_ refuses it): was TypeError in torch mode
])
def test_a_size_stride_or_offset_past_int64_is_a_parse_error_naming_the_file(tmp_path, offset, size, stride, what):
    path = _torch_file(tmp_path, offset, size, stride)
    for name, call in _calls(path, tmp_path).items():
        with pytest.raises(ParseError, match=f"tensor {what} .* int64") as info:
            call()
        assert info.value.path == str(path), name
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("size, stride", [
    ((0, 2**62), (7, 1)),            # an empty tensor numpy cannot shape: was ValueError "array is too big"
    ((0, INT64_MAX), (7, 1)),
    ((1, 7), (2**62, 1)),            # a size-1 dim's huge stride (torch ignores it): was ValueError from np.ndarray
])
def test_a_tensor_numpy_cannot_hold_is_a_usage_error_in_numpy_mode_and_loads_in_torch(tmp_path, size, stride):
    path = _torch_file(tmp_path, 0, size, stride)
    with pytest.raises(UsageError, match="numpy cannot hold a tensor of shape") as info:
        tensorsafe.load_state_dict(path, framework="numpy")
    assert (info.value.path, info.value.location) == (str(path), "e")
    assert tuple(tensorsafe.load_state_dict(path, framework="torch")["e"].shape) == size


def test_a_reader_error_from_identify_names_the_file(tmp_path):
    path = _torch_file(tmp_path, 0, (0, 2**64), (7, 1))
    with pytest.raises(ParseError) as info:
        tensorsafe.identify(path)
    assert str(info.value).startswith(f"{path}: ")


def _small_torch_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64),
                "meta": {"step": 3, "name": "x"}}, buf)
    return buf.getvalue()


SMALL = _small_torch_bytes()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SMALL)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "int"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        else:
            data[at:at + 4] = draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, len(data)])).to_bytes(4, "little")
        if not data:
            data = bytearray(b"\x80")
    return bytes(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=_mutated())
def test_mutated_torch_files_raise_only_typed_errors_from_load_state_dict(tmp_path, blob):
    path = tmp_path / "mutated.pt"
    path.write_bytes(blob)
    for framework in ("numpy", "torch"):
        try:
            tensorsafe.load_state_dict(path, framework=framework)
        except TensorsafeError as exc:
            assert "\n" not in str(exc).strip()


def test_a_tensor_name_with_a_lone_surrogate_is_a_parse_error_from_convert(tmp_path):
    """pickle writes lone surrogates (``surrogatepass``); a safetensors header is UTF-8. Was UnicodeEncodeError."""
    path = tmp_path / "model.pt"
    torch.save({"w\udcff": torch.ones(2)}, path)
    with pytest.raises(ParseError, match="not UTF-8 text") as info:
        tensorsafe.convert(path, tmp_path / "out.safetensors")
    assert info.value.path == str(path)
    str(info.value).encode("utf-8")  # the message itself can be printed
    assert not (tmp_path / "out.safetensors").exists()


def test_plain_values_with_a_lone_surrogate_are_dropped_not_written(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "note\udcff": 1, "name": "x\udcff", "epoch": 3}, path)
    result = tensorsafe.convert(path, tmp_path / "out.safetensors")
    assert {"note\udcff", "name"} <= set(result.dropped)
    assert "not UTF-8" in result.dropped["name"]
    assert tensorsafe.validate(tmp_path / "out.safetensors").clean
