"""Positive identification: a file is a format read to its end, or it is unscanned (never clean)."""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tensorsafe
from tensorsafe.engine.identify import model_suffix
from tensorsafe.pickles.policy import DEFAULT_POLICY
from tests.conftest import rule_ids

PIL = pytest.importorskip("PIL.Image")

LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
               b"size 4265380512\n")


def _image(fmt: str) -> bytes:
    out = io.BytesIO()
    PIL.new("RGB", (24, 16), (200, 30, 90)).save(out, format=fmt)
    return out.getvalue()


def _scan(tmp_path, name: str, data: bytes, policy=None):
    path = tmp_path / name
    path.write_bytes(data)
    return tensorsafe.scan(path, policy=policy)


def _letting_unscanned_through():
    policy = DEFAULT_POLICY.extended()
    policy.allow_unscanned = True
    return policy


class _Harmless:
    def __reduce__(self):
        return (os.system, ("true",))


# -- plain formats, read to their end ------------------------------------------------------------
@pytest.mark.parametrize("name,data,kind", [
    ("README.md", "# Card\n\nA model.\n".encode(), "text"),
    ("config.json", b'{"hidden_size": 8, "act": "gelu"}', "text"),
    ("merges.txt", "#version: 0.2\n\u0120 t\n".encode(), "text"),
    ("bom.txt", b"\xef\xbb\xbfhello\r\n", "text"),
    ("wide.txt", "caf\u00e9\n".encode("utf-16"), "text"),
    ("log.txt", b"\x1b[32mok\x1b[0m\tdone\x0c\n", "text"),
    (".gitattributes", b"", "empty"),
])
def test_text_and_empty_files_are_identified(tmp_path, name, data, kind):
    report = _scan(tmp_path, name, data)
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert report.files[0].kind == kind


@pytest.mark.parametrize("fmt,kind,name", [("PNG", "png", "sample.png"), ("JPEG", "jpeg", "sample.jpg"),
                                           ("GIF", "gif", "sample.gif"), ("WEBP", "webp", "sample.webp")])
def test_images_are_identified_by_their_structure(tmp_path, fmt, kind, name):
    report = _scan(tmp_path, name, _image(fmt))
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert report.files[0].kind == kind


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_an_image_with_bytes_after_its_end_is_unscanned(tmp_path, fmt):
    report = _scan(tmp_path, "x.img", _image(fmt) + pickle.dumps({"a": 1}))
    assert report.exit_code == 2
    assert "SCAN-01" in rule_ids(report)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_a_truncated_image_is_unscanned(tmp_path, fmt):
    data = _image(fmt)
    report = _scan(tmp_path, "x.img", data[:len(data) - 3])
    assert report.exit_code == 2
    assert "SCAN-01" in rule_ids(report)


def test_a_png_chunk_with_a_wrong_crc_is_unscanned(tmp_path):
    data = bytearray(_image("PNG"))
    data[29] ^= 0xFF  # inside IHDR's CRC
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "x.png", bytes(data)))


def test_a_png_that_does_not_start_with_ihdr_is_unscanned(tmp_path):
    data = _image("PNG")
    chunk = b"tEXt" + b"k\x00v"
    extra = struct.pack(">I", 3) + chunk + struct.pack(">I", zlib.crc32(chunk))
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "x.png", data[:8] + extra + data[8:]))


def test_a_webp_whose_riff_length_lies_is_unscanned(tmp_path):
    data = bytearray(_image("WEBP"))
    data[4:8] = struct.pack("<I", len(data))  # 8 bytes too many
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "x.webp", bytes(data)))


@pytest.mark.parametrize("data", [
    b"hello\x00world\n",            # NUL
    b"plain text \x01 with a control byte\n",
    b"caf\xe9 in latin-1\n",        # not UTF-8
    b"\xff\xfe" + "abc".encode("utf-16-le") + b"\x00\x00",  # UTF-16 NUL character
])
def test_text_with_control_bytes_or_bad_encoding_is_unscanned(tmp_path, data):
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "notes", data))


def test_random_binary_is_unscanned_with_its_first_bytes_named(tmp_path):
    data = bytes(range(0xA0, 0x100)) * 4
    report = _scan(tmp_path, "blob.dat", data)
    assert report.exit_code == 2
    [finding] = report.findings
    assert finding.rule_id == "SCAN-01" and "a0 a1 a2" in finding.message


def test_unscanned_member_of_a_zip_is_located(tmp_path):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("notes.txt", "fine\n")
        zf.writestr("payload.so", bytes(range(0xC0, 0x100)) * 8)
    report = _scan(tmp_path, "bundle.zip", out.getvalue())
    [finding] = [f for f in report.findings if f.rule_id == "SCAN-01"]
    assert finding.location.members == ("payload.so",)


# -- names that promise a model ------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [("model.ckpt", ".ckpt"), ("W.PT", ".pt"), ("x.pkl.gz", ".pkl"),
                                           ("readme.md", None), ("model.safetensors", ".safetensors"),
                                           ("archive.tar.gz", None), ("weights.bin", ".bin")])
def test_model_suffix(name, expected):
    assert model_suffix(name) == expected


@pytest.mark.parametrize("name,data", [("model.pt", b"PNG"), ("weights.bin", b"hello\n"), ("k.ckpt", b"{}")])
def test_plain_bytes_under_a_model_name_are_reported(tmp_path, name, data):
    data = _image("PNG") if data == b"PNG" else data
    report = _scan(tmp_path, name, data)
    assert report.exit_code == 2
    assert rule_ids(report) == {"SCAN-02"}


def test_random_bytes_under_a_model_name_are_unscanned_and_say_so(tmp_path):
    report = _scan(tmp_path, "model.bin", bytes(range(0x90, 0x100)) * 3)
    [finding] = report.findings
    assert finding.rule_id == "SCAN-01" and ".bin" in finding.message


def test_an_empty_file_with_a_model_name_is_an_error(tmp_path):
    report = _scan(tmp_path, "model.ckpt", b"")
    assert report.exit_code == 2 and rule_ids(report) == {"SCAN-04"}
    assert _scan(tmp_path, "model.safetensors", b"").exit_code == 2  # the header checks: ST-F01


def test_a_truncated_checkpoint_is_not_clean(tmp_path):
    data = pickle.dumps({"w": list(range(100))}, protocol=2)
    assert _scan(tmp_path, "model.ckpt", data[:len(data) // 2]).exit_code == 2


# -- the allow_unscanned switch --------------------------------------------------------------------
def test_allow_unscanned_lets_unknown_non_model_files_through_with_a_warning(tmp_path):
    report = _scan(tmp_path, "font.ttf", bytes(range(0xA0, 0x100)) * 4, policy=_letting_unscanned_through())
    assert report.exit_code == 0
    [finding] = report.findings
    assert finding.rule_id == "SCAN-01" and finding.outcome.value == "warn"


@pytest.mark.parametrize("name", ["model.ckpt", "weights.bin", "w.npy", "m.gguf", "x.pkl.gz", "m.onnx"])
def test_allow_unscanned_never_lets_a_model_name_through(tmp_path, name):
    report = _scan(tmp_path, name, bytes(range(0xA0, 0x100)) * 4, policy=_letting_unscanned_through())
    assert report.exit_code == 2


def test_allow_unscanned_does_not_loosen_pickle_judgement(tmp_path):
    report = _scan(tmp_path, "data", pickle.dumps(_Harmless()), policy=_letting_unscanned_through())
    assert report.exit_code == 1


# -- Git LFS pointers --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "v1-5-pruned.ckpt", "weights", "tokenizer.json"])
def test_git_lfs_pointers_are_reported_whatever_their_name(tmp_path, name):
    report = _scan(tmp_path, name, LFS_POINTER)
    assert report.exit_code == 2
    [finding] = report.findings
    assert finding.rule_id == "SCAN-03"
    assert "git lfs pull" in finding.message and "4,265,380,512" in finding.message


def test_the_old_hawser_lfs_spec_is_a_pointer_too(tmp_path):
    data = LFS_POINTER.replace(b"git-lfs.github.com", b"hawser.github.com")
    assert rule_ids(_scan(tmp_path, "m.bin", data)) == {"SCAN-03"}


def test_text_that_only_starts_like_a_pointer_is_not_one(tmp_path):
    report = _scan(tmp_path, "notes.txt", b"version https://git-lfs.github.com/spec/v1\nno oid here\n")
    assert report.exit_code == 0 and report.files[0].kind == "text"


# -- folders -------------------------------------------------------------------------------------------
def test_an_empty_folder_is_an_error_unless_allowed(tmp_path):
    (tmp_path / "models").mkdir()
    report = tensorsafe.scan(tmp_path / "models")
    assert report.exit_code == 2 and rule_ids(report) == {"SCAN-04"}
    assert tensorsafe.scan(tmp_path / "models", allow_empty=True).exit_code == 0


def test_a_folder_with_only_vcs_files_holds_nothing_to_scan(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert rule_ids(tensorsafe.scan(tmp_path)) == {"SCAN-04"}


def test_a_folder_that_cannot_be_listed_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.txt").write_text("a\n")
    (tmp_path / "locked").mkdir()
    real_scandir, real_listdir = os.scandir, os.listdir
    locked = str(tmp_path / "locked")

    def refuse(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    def refuse_list(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(os, "listdir", refuse_list)
    report = tensorsafe.scan(tmp_path)
    [finding] = report.findings
    assert finding.rule_id == "SCAN-04" and "cannot be listed" in finding.message
    assert finding.path == locked
    assert report.exit_code == 2


def test_a_symlink_to_a_folder_is_reported_not_skipped(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "m.pkl").write_bytes(pickle.dumps(_Harmless()))
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "README.md").write_text("# a model\n")
    (tmp_path / "repo" / "weights").symlink_to(tmp_path / "elsewhere")
    report = tensorsafe.scan(tmp_path / "repo")
    assert rule_ids(report) == {"SCAN-04"} and report.exit_code == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX feature")
def test_a_fifo_is_reported_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    report = tensorsafe.scan(tmp_path)
    assert rule_ids(report) == {"SCAN-01"} and report.exit_code == 2


# -- property: random bytes are never "clean" unless they are what we say they are ----------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300))
def test_random_bytes_are_clean_only_when_identified(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rand") / "blob"
    path.write_bytes(data)
    report = tensorsafe.scan(path)
    result = report.files[0]
    if report.exit_code == 0:
        assert result.kind in {"text", "png", "jpeg", "gif", "webp", "msgpack", "sentencepiece", "pickle", "zip",
                               "safetensors"} \
            or ":" in result.kind, result.kind
        if result.kind == "text":
            text = data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8-sig")
            assert not any(ord(c) < 9 or 13 < ord(c) < 32 and ord(c) != 27 for c in text)


IMAGES = {fmt: _image(fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP")}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(IMAGES)), cut=st.integers(0, 400), flips=st.lists(
    st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4))
@example(fmt="PNG", cut=66, flips=[(1, 1)])
def test_damaged_images_never_crash_the_readers(tmp_path_factory, fmt, cut, flips):
    data = bytearray(IMAGES[fmt])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    data = bytes(data[:max(1, len(data) - cut % len(data))])
    path = tmp_path_factory.mktemp("img") / "picture"
    path.write_bytes(data)
    report = tensorsafe.scan(path)
    assert "ARC-05" not in rule_ids(report), [str(f) for f in report.findings]
    if data != IMAGES[fmt] and report.exit_code == 0:
        # a PNG whose "PNG" was hit and then cut to 19 bytes is a valid msgpack map (0x89: nine pairs of
        # small ints): plain data, judged as what its bytes are
        assert report.files[0].kind in {"png", "jpeg", "gif", "webp", "text", "msgpack"}


# -- data-only serialisations ----------------------------------------------------------------------
def _flax_msgpack() -> bytes:
    msgpack = pytest.importorskip("msgpack")
    array = msgpack.packb(((4, 3), "float32", bytes(48)))
    state = {"params": {"dense": {"kernel": msgpack.ExtType(1, array), "bias": msgpack.ExtType(1, array)},
                        "scale": 0.5, "name": "x", "steps": [1, 2, 3], "flag": True, "none": None}}
    return msgpack.packb(state)


def _sentencepiece() -> bytes:
    sp = pytest.importorskip("transformers.utils.sentencepiece_model_pb2_new")
    model = sp.ModelProto()
    for i, piece in enumerate(["<unk>", "<s>", "</s>", "\u2581the", "\u2581a", "ing"]):
        entry = model.pieces.add()
        entry.piece, entry.score = piece, -float(i)
    model.trainer_spec.model_type = 1
    model.normalizer_spec.name = "nmt_nfkc"
    return model.SerializeToString()


def test_flax_msgpack_weights_are_identified(tmp_path):
    report = _scan(tmp_path, "flax_model.msgpack", _flax_msgpack())
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert report.files[0].kind == "msgpack"


def test_a_sentencepiece_model_is_identified(tmp_path):
    report = _scan(tmp_path, "tokenizer.model", _sentencepiece())
    assert report.exit_code == 0, [str(f) for f in report.findings]
    assert report.files[0].kind == "sentencepiece"


@pytest.mark.parametrize("make", [_flax_msgpack, _sentencepiece])
def test_serialisations_with_bytes_after_their_end_or_cut_short_are_unscanned(tmp_path, make):
    data = make()
    assert _scan(tmp_path, "a", data + b"\x00\x01").exit_code == 2
    assert _scan(tmp_path, "b", data[:-1]).exit_code == 2


def test_msgpack_that_is_not_a_map_at_the_top_is_unscanned(tmp_path):
    msgpack = pytest.importorskip("msgpack")
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "a", msgpack.packb([1, 2, 3, b"\x00" * 20])))


def test_msgpack_counts_larger_than_the_file_are_refused(tmp_path):
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "a", b"\xdf\xff\xff\xff\xff" + b"\xc0" * 8))


def test_msgpack_nesting_past_the_depth_limit_is_unscanned(tmp_path):
    data = b"\x81\xa1k" * 100 + b"\xc0"
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "a", data))


def test_msgpack_under_a_pickle_name_is_reported(tmp_path):
    assert rule_ids(_scan(tmp_path, "model.ckpt", _flax_msgpack())) == {"SCAN-02"}


def test_protobuf_that_is_not_a_sentencepiece_model_is_unscanned(tmp_path):
    # field 2 (not pieces) first; then a field whose piece is not UTF-8
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "a", b"\x12\x03abc"))
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "c", b"\x12\x04\x0a\x02hi"))  # pieces would parse inside
    assert "SCAN-01" in rule_ids(_scan(tmp_path, "b", b"\x0a\x04\x0a\x02\xff\xfe"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["msgpack", "sentencepiece"]), cut=st.integers(0, 200),
       flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4))
def test_damaged_serialisations_never_crash_the_walkers(tmp_path_factory, which, cut, flips):
    data = bytearray(_flax_msgpack() if which == "msgpack" else _sentencepiece())
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    data = bytes(data[:max(1, len(data) - cut % len(data))])
    path = tmp_path_factory.mktemp("ser") / "blob"
    path.write_bytes(data)
    assert "ARC-05" not in rule_ids(tensorsafe.scan(path))
