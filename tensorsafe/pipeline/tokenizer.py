"""The CLIP tokenizer of a diffusers folder (``tokenizer/``, ``tokenizer_2/``), built on HF ``tokenizers``.

Every Stable Diffusion tokenizer is the OpenAI CLIP byte-level BPE with ``</w>`` word ends. The
BPE itself comes from the well-kept ``tokenizers`` library (no network, no transformers); this
module only sets it up the way transformers' ``CLIPTokenizer`` does (NFC, whitespace runs to one
space, lower case, CLIP's split regex, byte-level alphabet), so ids match what diffusers feeds its
text encoders. Files come from the folder (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``),
falling back to the copy bundled in ``tensorsafe/data/clip``.

Special tokens (bos, eos, unk, pad) are matched in the raw text before BPE, as transformers does:
with SD2's pad token ``!`` that means every ``!`` in a prompt is id 0 on its own (what diffusers
renders with), not the BPE pieces open_clip would give.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from tensorsafe.errors import ParseError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# transformers' CLIPTokenizer split: special tokens, English contractions, letter runs, single digits, other runs
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class SpecialTokens:
    bos: str = BOS
    eos: str = EOS
    pad: str = EOS
    unk: str = EOS
    max_length: int = MODEL_MAX_LENGTH


class CLIPTokenizer:
    """Text -> ``max_length`` ids: ``[bos] + BPE ids (truncated) + [eos] + [pad]...``."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special: SpecialTokens = SpecialTokens()):
        self.special = special
        self.vocab_size = len(vocab)
        model = BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                    fuse_unk=False, unk_token=special.unk)
        self._tok = _clip_pipeline(Tokenizer(model))
        self._tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                      for t in dict.fromkeys((special.bos, special.eos, special.unk, special.pad))])
        self.bos_id, self.eos_id, self.pad_id = (self._id(t) for t in (special.bos, special.eos, special.pad))

    @classmethod
    def from_folder(cls, folder: str | Path | None) -> "CLIPTokenizer":
        """A diffusers ``tokenizer/`` folder; missing vocabulary files fall back to the bundled ones."""
        folder = Path(folder) if folder is not None else None
        special = _special_tokens(folder) if folder is not None and folder.is_dir() else SpecialTokens()
        if folder is not None and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab, merges = _read_vocab(folder / "vocab.json"), _read_merges(folder / "merges.txt")
        elif folder is not None and (folder / "tokenizer.json").is_file():
            vocab, merges = _read_tokenizer_json(folder / "tokenizer.json")
        else:
            vocab, merges = bundled_vocab()
        return cls(vocab, merges, special)

    def _id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ParseError(f"the tokenizer's vocabulary has no {token!r}")
        return i

    def tokens(self, text: str) -> list[int]:
        """BPE ids of ``text`` with no special tokens added and no truncation."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str) -> list[int]:
        n = self.special.max_length
        body = self.tokens(text)[: n - 2]
        ids = [self.bos_id, *body, self.eos_id]
        return ids + [self.pad_id] * (n - len(ids))


def _clip_pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return tok


# ---- files ------------------------------------------------------------------------------------------------

def bundled_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    clip = resources.files("tensorsafe").joinpath("data", "clip")
    vocab = json.loads(clip.joinpath("vocab.json").read_text(encoding="utf-8"))
    return vocab, _parse_merges(clip.joinpath("merges.txt").read_text(encoding="utf-8"))


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read the vocabulary: {exc}", path=path) from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ParseError("vocab.json must map tokens to integer ids", path=path)
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        return _parse_merges(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read the merges: {exc}", path=path) from None


def _parse_merges(text: str) -> list[tuple[str, str]]:
    merges = []
    for line in text.split("\n"):
        if not line or line.startswith("#version"):
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    return merges


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE tables of a transformers 5 ``tokenizer.json`` (its pipeline settings are replaced by CLIP's)."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return dict(model["vocab"]), merges
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ParseError(f"cannot read the BPE tables: {exc}", path=path) from None


def _token(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _json_or_empty(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read: {exc}", path=path) from None
    return data if isinstance(data, dict) else {}


def _special_tokens(folder: Path) -> SpecialTokens:
    """Special tokens as transformers resolves them: ``special_tokens_map.json`` wins only when
    ``tokenizer_config.json`` has no ``added_tokens_decoder`` (spec section 9)."""
    config = _json_or_empty(folder / "tokenizer_config.json")
    mapping = _json_or_empty(folder / "special_tokens_map.json")
    first, second = (config, mapping) if "added_tokens_decoder" in config else (mapping, config)
    defaults = SpecialTokens()

    def pick(name: str, default: str) -> str:
        return _token(first.get(name)) or _token(second.get(name)) or default

    max_length = config.get("model_max_length")
    if not isinstance(max_length, int) or not 2 < max_length <= 10_000:
        max_length = MODEL_MAX_LENGTH   # some configs say 1e30 ("no limit"); CLIP's positions end at 77
    return SpecialTokens(pick("bos_token", defaults.bos), pick("eos_token", defaults.eos),
                         pick("pad_token", defaults.pad), pick("unk_token", defaults.unk), max_length)
