"""GGUF tensor infos are checked the way llama.cpp checks them before it reads a tensor's bytes.

``gguf_init_from_file`` refuses an unknown ggml type, a row that is not whole blocks, a bad shape,
a long or repeated name, an offset that is not the running sum of the padded tensors before it;
the model loader refuses a tensor whose bytes run past the end of the file. Each such file is
GGUF-02 (an error, never clean) with a one-line message naming the tensor; what a real writer
(``gguf.GGUFWriter``) writes stays clean.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

from tensorsafe.readers.ggml_types import GGML_TYPES
from tests.conftest import rule_ids

F32, F16, Q4_0, Q8_0, Q4_K = 0, 1, 2, 8, 12
CHATML = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _gstr(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _gstr(key) + struct.pack("<I", vtype) + payload


def _info(name: bytes | str, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return (_gstr(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", ggml_type, offset))


def _gguf(infos: list[bytes], data: int, kvs: list[bytes] = (), alignment: int = 32) -> bytes:
    """Header, ``kvs``, ``infos``, padding to ``alignment``, then ``data`` zero bytes."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + bytes((-len(head)) % alignment) + bytes(data)


def _refusal(report) -> str:
    messages = [f.message for f in report.findings if f.rule_id == "GGUF-02"]
    assert messages and not report.clean and report.exit_code == 2, report.findings
    assert "\n" not in messages[0]
    return messages[0]


# -- what llama.cpp accepts stays clean ------------------------------------------------------------
def test_hand_laid_tensors_of_several_types_are_clean(scan_bytes):
    infos = [_info("a.weight", (64, 2), Q4_0, 0),       # 2 rows x 2 blocks x 18 bytes = 72 -> padded 96
             _info("b.weight", (256,), Q4_K, 96),        # 144 bytes -> 160
             _info("c.bias", (3,), F16, 256),            # 6 bytes, the last one: its padding may be absent
             ]
    report = scan_bytes(_gguf(infos, 256 + 6), "m.gguf")
    assert report.clean and report.files[0].kind == "gguf", report.findings


def test_empty_tensor_and_a_larger_alignment_are_clean(scan_bytes):
    align = _kv("general.alignment", 4, struct.pack("<I", 64))
    infos = [_info("empty", (0, 4), F32, 0), _info("x", (5,), F32, 0), _info("y", (2,), F32, 64)]
    assert scan_bytes(_gguf(infos, 64 + 8, [align], alignment=64), "m.gguf").clean


def test_files_the_gguf_writer_writes_are_clean(tmp_path, scan_bytes):
    gguf = pytest.importorskip("gguf")
    q = gguf.GGMLQuantizationType
    for alignment in (None, 64):
        path = tmp_path / f"w{alignment}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        if alignment:
            w.add_custom_alignment(alignment)
        w.add_tensor("f32", np.ones((3, 5), np.float32))
        w.add_tensor("f16", np.ones((7,), np.float16))
        w.add_tensor("i8", np.ones((9,), np.int8))
        for name, kind in (("q4_0", q.Q4_0), ("q8_0", q.Q8_0), ("q6_k", q.Q6_K), ("iq4_xs", q.IQ4_XS),
                           ("mxfp4", q.MXFP4), ("bf16", q.BF16)):
            block, size = gguf.GGML_QUANT_SIZES[kind]
            w.add_tensor(name, np.zeros((2, 2 * size), np.uint8), raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        report = scan_bytes(path.read_bytes(), "w.gguf")
        assert report.clean, report.findings


def test_our_type_table_matches_the_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf")
    theirs = {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}
    ours = {t: (g.block_size, g.type_size) for t, g in GGML_TYPES.items()}
    assert ours == theirs
    assert all(GGML_TYPES[int(t)].name == t.name for t in gguf.GGMLQuantizationType)


# -- what llama.cpp refuses is GGUF-02, naming the tensor ------------------------------------------
REFUSED = {
    "data-truncated": ([_info("w", (8,), F32, 0), _info("last.weight", (16,), F32, 32)], 32 + 63, "last.weight"),
    "offset-past-end": ([_info("far", (4,), F32, 1 << 40)], 16, "far"),
    "overlap": ([_info("a", (8,), F32, 0), _info("b", (8,), F32, 0)], 64, "'b'"),
    "misaligned": ([_info("a", (4,), F32, 0), _info("odd", (4,), F32, 16)], 64, "odd"),
    "gap": ([_info("a", (4,), F32, 0), _info("gap", (4,), F32, 64)], 128, "gap"),
    "first-not-at-zero": ([_info("first", (4,), F32, 32)], 64, "first"),
    "unknown-type": ([_info("u", (4,), 42, 0)], 32, "ggml type 42"),
    "removed-q4_2": ([_info("q42", (32,), 4, 0)], 32, "ggml type 4"),
    "removed-q4_0_4_4": ([_info("r", (32,), 31, 0)], 32, "ggml type 31"),
    "row-not-whole-blocks": ([_info("q", (16, 2), Q4_0, 0)], 64, "block size 32"),
    "negative-dimension": ([_info("neg", (2**63, 1), F32, 0)], 32, "below 0"),
    "element-count-overflow": ([_info("big", (2**32, 2**32), F32, 0)], 32, "big"),
    "name-too-long": ([_info("n" * 64, (4,), F32, 0)], 32, "GGML_MAX_NAME"),
    "repeated-name": ([_info("t", (4,), F32, 0), _info("t", (4,), F32, 32)], 64, "repeats"),
    "repeated-name-after-nul": ([_info(b"t\0a", (4,), F32, 0), _info(b"t\0b", (4,), F32, 32)], 64, "repeats"),
}


@pytest.mark.parametrize("case", list(REFUSED.values()), ids=list(REFUSED))
def test_tensor_infos_llama_cpp_refuses_are_an_error(scan_bytes, case):
    infos, data, expected = case
    message = _refusal(scan_bytes(_gguf(infos, data), "m.gguf"))
    assert "refused by llama.cpp" in message and expected in message, message


def test_data_section_that_starts_past_the_end_is_an_error(scan_bytes):
    head = _gguf([_info("e", (0,), F32, 0)], 0)
    unpadded = head.rstrip(b"\0")
    assert len(unpadded) % 32 and head.startswith(unpadded)
    assert "'e'" in _refusal(scan_bytes(unpadded + b"\0" * ((-len(unpadded)) % 32 - 1), "m.gguf"))
    assert scan_bytes(head, "m.gguf").clean


def test_writer_file_with_its_last_tensor_cut_short_is_an_error(tmp_path, scan_bytes):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.ones((4, 4), np.float32))
    w.add_tensor("output.weight", np.ones((6,), np.float32))  # 24 bytes, then 8 of padding
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    assert scan_bytes(data[:-8], "cut.gguf").clean  # only the padding gone: the model loader reads it
    assert "'output.weight'" in _refusal(scan_bytes(data[:-9], "cut.gguf"))
    assert "'blk.0.attn_q.weight'" in _refusal(scan_bytes(data[:-40], "cut.gguf"))


@pytest.mark.parametrize("kvs, expected", [
    ([_kv("general.alignment", 10, struct.pack("<Q", 32))], "not u32"),
    ([_kv("k", 4, bytes(4)), _kv("k", 4, bytes(4))], "repeated"),
    ([_kv("", 4, bytes(4))], "empty"),
], ids=["alignment-u64", "repeated-key", "empty-key"])
def test_metadata_llama_cpp_refuses_is_an_error(scan_bytes, kvs, expected):
    assert expected in _refusal(scan_bytes(_gguf([_info("t", (4,), F32, 0)], 16, kvs), "m.gguf"))


def test_alignment_key_cut_at_a_nul_is_the_one_llama_cpp_uses(scan_bytes):
    align = _kv("general.alignment\0x", 4, struct.pack("<I", 64))
    infos = [_info("a", (4,), F32, 0), _info("b", (4,), F32, 64)]
    assert scan_bytes(_gguf(infos, 80, [align], alignment=64), "m.gguf").clean
    infos = [_info("a", (4,), F32, 0), _info("b", (4,), F32, 32)]
    assert "'b'" in _refusal(scan_bytes(_gguf(infos, 48, [align], alignment=64), "m.gguf"))


def test_template_in_a_refused_file_is_still_judged(scan_bytes):
    evil = _kv("tokenizer.chat_template", 8, _gstr("{{ cycler.__init__.__globals__.os.system('true') }}"))
    report = scan_bytes(_gguf([_info("t", (4,), 42, 0)], 16, [evil]), "m.gguf")
    assert {"GGUF-01", "GGUF-02"} <= rule_ids(report)
    benign = _kv("tokenizer.chat_template", 8, _gstr(CHATML))
    assert rule_ids(scan_bytes(_gguf([_info("t", (4,), 42, 0)], 16, [benign]), "m.gguf")) == {"GGUF-02"}
