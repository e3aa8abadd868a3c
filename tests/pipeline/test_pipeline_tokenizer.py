"""The reference pipeline's CLIP tokenizer gives transformers' CLIPTokenizer ids (what diffusers feeds its encoders)."""
from __future__ import annotations

import json

import pytest

from tensorsafe.converter.tokenizer import tokenizer_files
from tensorsafe.pipeline.tokenizer import CLIPTokenizer

PROMPTS = [
    "a photo of a cat",
    "",
    "   ",
    "A Photo Of A CAT, highly detailed!!! 8k, (masterpiece:1.2), [sharp] {focus} <lora:x:0.5>",
    "hello!! world! ?!? ... --- ___ ~~ @#$%^&*()+=|\\/<>",
    "it's don't we'll I'd they've you're she'd 'quoted' \"double\"",
    "Ünïcödé café naïve résumé Straße ØÆÅ",
    "日本語のテキスト 中文 한국어 русский текст ελληνικά עברית العربية",
    "emoji 😀🐱‍👤 👍🏽 and symbols ★ ♥ → ∞ ©",
    "ＦＵＬＬ－ＷＩＤＴＨ ｔｅｘｔ and e\u0301 combining vs é composed",
    "tab\tnew\nline\r\nand  many    spaces",
    "numbers 123 4.56 7,890 1e-9 0x1F 3/4 50%",
    "<|startoftext|> inside <|endoftext|> the text",
    "word " * 100,
    "supercalifragilisticexpialidocious " * 20,
    "x" * 500,
]


def _folder(tmp_path, pad: str):
    folder = tmp_path / ("pad-bang" if pad == "!" else "pad-eos")
    folder.mkdir(exist_ok=True)
    for name, data in tokenizer_files(pad).items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["pad-eos", "pad-bang"])
def pair(request, tmp_path_factory):
    from transformers import CLIPTokenizer as Reference

    folder = _folder(tmp_path_factory.mktemp("tok"), request.param)
    return CLIPTokenizer.from_folder(folder), Reference.from_pretrained(folder)


def _reference_ids(ref, text: str) -> list[int]:
    return ref(text, padding="max_length", max_length=ref.model_max_length, truncation=True).input_ids


@pytest.mark.parametrize("text", PROMPTS, ids=range(len(PROMPTS)))
def test_ids_match_transformers(pair, text):
    ours, ref = pair
    ids = ours(text)
    assert ids == _reference_ids(ref, text)
    assert len(ids) == 77 and ids[0] == 49406 and 49407 in ids


def test_long_prompts_are_truncated_to_77(pair):
    ours, _ = pair
    ids = ours("word " * 100)
    assert len(ids) == 77 and ids[-1] == 49407 and ids.count(49407) == 1


def test_pad_token_comes_from_the_folder(tmp_path):
    eos, bang = (CLIPTokenizer.from_folder(_folder(tmp_path, p)) for p in ("<|endoftext|>", "!"))
    assert eos("a cat")[:5] == [49406, 320, 2368, 49407, 49407]
    assert bang("a cat")[:5] == [49406, 320, 2368, 49407, 0]


def test_known_ids_with_the_bundled_vocabulary():
    """The check in docs/single-file.md §9: "a photo of a cat" -> 49406 320 1125 539 320 2368 49407."""
    ours = CLIPTokenizer.from_folder(None)
    assert ours("a photo of a cat")[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ours.vocab_size == 49408


def test_folder_without_vocabulary_falls_back_to_the_bundled_files(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!", "model_max_length": 77}))
    ours = CLIPTokenizer.from_folder(tmp_path)
    assert ours("a photo of a cat")[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0]


def test_transformers_saved_folder_with_only_tokenizer_json(tmp_path):
    """transformers 5 ``save_pretrained`` writes tokenizer.json + tokenizer_config.json, no vocab.json."""
    from transformers import CLIPTokenizer as Reference

    ref = Reference.from_pretrained(_folder(tmp_path, "!"))
    saved = tmp_path / "saved"
    ref.save_pretrained(saved)
    assert (saved / "tokenizer.json").is_file() and not (saved / "vocab.json").exists()
    ours = CLIPTokenizer.from_folder(saved)
    again = Reference.from_pretrained(saved)
    for text in PROMPTS:
        assert ours(text) == _reference_ids(again, text), text


def test_special_tokens_map_precedence_matches_transformers(tmp_path):
    """special_tokens_map.json names the pad token only when tokenizer_config.json has no added_tokens_decoder."""
    from transformers import CLIPTokenizer as Reference

    folder = _folder(tmp_path, "<|endoftext|>")
    special = json.loads((folder / "special_tokens_map.json").read_text())
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "!"}))
    ours, ref = CLIPTokenizer.from_folder(folder), Reference.from_pretrained(folder)
    assert ours("a cat!") == _reference_ids(ref, "a cat!")
