"""The bundled CLIP tokenizer: transformers loads it offline and tokenizes like the real one."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tensorsafe.converter.tokenizer import FILES, tokenizer_files

ROOT = Path(__file__).resolve().parents[2]


def test_files_and_special_tokens():
    for pad in ("<|endoftext|>", "!"):
        files = tokenizer_files(pad)
        assert sorted(files) == sorted(FILES)
        config = json.loads(files["tokenizer_config.json"])
        special = json.loads(files["special_tokens_map.json"])
        assert config["pad_token"] == special["pad_token"] == pad  # the same in both files (docs/single-file.md §9)
        assert (config["model_max_length"], config["do_lower_case"]) == (77, True)
        assert (special["bos_token"], special["eos_token"], special["unk_token"]) == \
            ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    with pytest.raises(ValueError):
        tokenizer_files("<pad>")


def test_vocab_is_the_derivation_of_the_merges():
    """vocab = 256 byte characters, the same with </w>, the merges in order, then the two specials."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive_clip_vocab", ROOT / "tensorsafe" / "data" / "derive_clip_vocab.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    N_MERGES, bytes_to_unicode = derive.N_MERGES, derive.bytes_to_unicode

    files = tokenizer_files("!")
    vocab = json.loads(files["vocab.json"])
    lines = files["merges.txt"].decode("utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) - 1 == N_MERGES == 48894
    chars = list(bytes_to_unicode().values())
    expected = chars + [c + "</w>" for c in chars] + [line.replace(" ", "") for line in lines[1:]] + \
        ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and sorted(vocab, key=vocab.get) == expected


def test_shipped_as_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/clip/*" in data["tool"]["setuptools"]["package-data"]["tensorsafe"]
    assert (ROOT / "tensorsafe" / "data" / "clip" / "LICENSE").read_text().count("MIT") >= 1


@pytest.mark.parametrize("pad,pad_id", [("<|endoftext|>", 49407), ("!", 0)])
def test_transformers_loads_it_offline(tmp_path, monkeypatch, pad, pad_id):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, data in tokenizer_files(pad).items():
        (tmp_path / name).write_bytes(data)
    tok = transformers.CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A Photo").input_ids == [49406, 320, 1125, 49407]  # lower-cased
    assert (tok.pad_token, tok.pad_token_id, tok.model_max_length) == (pad, pad_id, 77)
    padded = tok("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, pad_id, pad_id]
