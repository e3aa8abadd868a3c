"""Defects a fuzzing pass over the container paths found (mutated torch zips, tars, gzip/lzma
pickles, npz, joblib, GGUF, safetensors, .keras, .mar), each pinned with bytes built here."""
from __future__ import annotations

import io
import pickle
import struct
import tarfile

import pytest

from tensorsafe.engine.jinja_template import check_template
from tests.conftest import rule_ids

# A harmless stand-in for a hostile pickle: os.system("true"), protocol 2, built by hand (never loaded).
HOSTILE_PICKLE = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


BENIGN_TAR = _tar([("model/data.pkl", pickle.dumps({"a": [1, 2, 3]}, protocol=4))])
HOSTILE_TAR = _tar([("evil.pkl", HOSTILE_PICKLE)])
FIRST_MEMBER = BENIGN_TAR[:1024]  # header, data and padding of the one member, before the end blocks


@pytest.mark.parametrize("layout", ["after-a-bad-header", "after-the-end-blocks"])
def test_a_member_tarfile_never_lists_is_still_scanned(scan_bytes, layout):
    """GNU tar skips a block that is no header ("Skipping to next header") and extracts what follows;
    ``tar -i`` (``ignore_zeros``) reads on past the end blocks. ``tarfile`` stops at either, so the
    pickle after them used to go unscanned and the archive was called clean."""
    gap = b"\x01" * 512 if layout == "after-a-bad-header" else bytes(1024)
    data = FIRST_MEMBER + gap + HOSTILE_TAR
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(data))] == ["model/data.pkl"]
    assert "PK-I01" in rule_ids(scan_bytes(data, "model.tar"))


def test_a_hidden_member_cut_short_is_still_scanned(scan_bytes):
    data = FIRST_MEMBER + b"\x01" * 512 + HOSTILE_TAR[:512 + len(HOSTILE_PICKLE)]
    assert "PK-I01" in rule_ids(scan_bytes(data, "model.tar"))


@pytest.mark.parametrize("tail", [b"", bytes(8192), b"junk" * 25, b"\x01" * 4096])
def test_a_tar_with_nothing_hidden_after_it_stays_clean(scan_bytes, tail):
    assert scan_bytes(BENIGN_TAR + tail, "model.tar").clean


# -- GGUF chat templates: a long chain of filters or ``+`` folded in linear time -----------------------

def _gguf_with_template(template: bytes) -> bytes:
    def text(value: bytes) -> bytes:
        return struct.pack("<Q", len(value)) + value
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text(b"tokenizer.chat_template")
            + struct.pack("<I", 8) + text(template))


@pytest.mark.parametrize("template", [b"{{ x" + b"|e" * 20_000 + b" }}", b"{{ " + b"1+" * 20_000 + b"1 }}"])
def test_a_long_chain_in_a_chat_template_is_judged(scan_bytes, template):
    """Each node of the chain used to fold 50 levels down (5 s for 100 KB); a chain longer than the
    fold depth folds to nothing at once. benchmarks/ holds no timing for it: this pins the verdict."""
    assert scan_bytes(_gguf_with_template(template), "chat.gguf").clean


@pytest.mark.parametrize("depth, reason", [(40, "attribute '__class__'"),
                                           (60, "attribute name built in the template")])
def test_the_fold_depth_limit_is_where_it_was(depth, reason):
    """A key built 40 filters deep is still folded to its value; 60 deep is past the fold depth
    and is judged as a name built at render time, as before the shortcut."""
    template = "{{ x[('__cla' ~ 'ss__')" + "|lower" * depth + "] }}"
    assert any(reason in hit.reason for hit in check_template(template))
