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
MAX_VOCAB = 1_000_000                  # tokens, and merges (CLIP: 49408 and 48894)
MAX_TOKENIZER_FILE_BYTES = 64 << 20    # CLIP's tokenizer.json is 2 MiB
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

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special: SpecialTokens = SpecialTokens(),
                 source: str | Path | None = None, merges_source: str | Path | None = None):
        check_tables(vocab, merges, special, source, merges_source or source)
        self.special = special
        self.vocab_size = len(vocab)
        try:
            model = BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token=special.unk)
        except Exception as exc:  # noqa: BLE001  (tokenizers raises a bare Exception; check_tables says why first)
            raise ParseError(f"the BPE tables are inconsistent: {exc}", path=merges_source or source) from None
        self._tok = _clip_pipeline(Tokenizer(model))
        self._tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                      for t in dict.fromkeys((special.bos, special.eos, special.unk, special.pad))])
        self.bos_id, self.eos_id, self.pad_id = (self._id(t) for t in (special.bos, special.eos, special.pad))
        self.expansions: dict[str, str] = {}
        """Multi-vector textual-inversion tokens: ``token`` -> ``token token_1 ...`` (diffusers' maybe_convert_prompt)."""

    @classmethod
    def from_folder(cls, folder: str | Path | None) -> CLIPTokenizer:
        """A diffusers ``tokenizer/`` folder; missing vocabulary files fall back to the bundled ones."""
        folder = Path(folder) if folder is not None else None
        special = _special_tokens(folder) if folder is not None and folder.is_dir() else SpecialTokens()
        if folder is not None and (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab, merges = _read_vocab(folder / "vocab.json"), _read_merges(folder / "merges.txt")
            source, merges_source = folder / "vocab.json", folder / "merges.txt"
        elif folder is not None and (folder / "tokenizer.json").is_file():
            vocab, merges = _read_tokenizer_json(folder / "tokenizer.json")
            source = merges_source = folder / "tokenizer.json"
        else:
            vocab, merges = bundled_vocab()
            source = merges_source = None
        return cls(vocab, merges, special, source, merges_source)

    def _id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ParseError(f"the tokenizer's vocabulary has no {token!r}")
        return i

    def tokens(self, text: str) -> list[int]:
        """BPE ids of ``text`` with no special tokens added and no truncation."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        for token, replacement in self.expansions.items():
            if self._tok.token_to_id(token) in ids:
                text = text.replace(token, replacement)
        return self._tok.encode(text, add_special_tokens=False).ids if self.expansions else ids

    def add_embedding_tokens(self, token: str, count: int, path=None) -> int:
        """A textual-inversion token as ``load_textual_inversion`` adds it (``token``, then ``token_1`` ...
        for more vectors, each an added token as transformers' ``add_tokens`` makes it); returns the first
        new id."""
        names = [token] + [f"{token}_{i}" for i in range(1, count)]
        taken = next((n for n in names if self._tok.token_to_id(n) is not None), None)
        if taken is not None:
            raise ParseError(f"the token {taken!r} is already in the tokenizer's vocabulary", path=path)
        first = self._tok.get_vocab_size(with_added_tokens=True)
        self._tok.add_tokens([AddedToken(n, normalized=True, special=False) for n in names])
        if count > 1:
            self.expansions[token] = " ".join(names)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        return first

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


def _read_text(path: Path) -> str:
    """The file's text, refused unread past ``MAX_TOKENIZER_FILE_BYTES``."""
    size = path.stat().st_size
    if size > MAX_TOKENIZER_FILE_BYTES:
        raise ParseError(f"{size:,} bytes is over the {MAX_TOKENIZER_FILE_BYTES:,}-byte limit for a tokenizer file",
                         path=path)
    return path.read_text(encoding="utf-8")


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(_read_text(path))
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read the vocabulary: {exc}", path=path) from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ParseError("vocab.json must map tokens to integer ids", path=path)
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        text = _read_text(path)
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read the merges: {exc}", path=path) from None
    return _parse_merges(text, path)


def _parse_merges(text: str, path: Path | None = None) -> list[tuple[str, str]]:
    merges = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(pair):
            raise ParseError(f"line {number}: a merge is two tokens separated by one space, not {line[:60]!r}",
                             path=path)
        merges.append((pair[0], pair[1]))
    return merges


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE tables of a transformers 5 ``tokenizer.json`` (its pipeline settings are replaced by CLIP's)."""
    try:
        model = json.loads(_read_text(path))["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        vocab = dict(model["vocab"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ParseError(f"cannot read the BPE tables: {exc}", path=path) from None
    for i, m in enumerate(merges):
        if len(m) != 2 or not all(isinstance(t, str) and t for t in m):
            raise ParseError(f"model.merges[{i}] is not a pair of tokens: {str(m)[:60]}", path=path)
    return vocab, merges  # type: ignore[return-value]


def check_tables(vocab: dict[str, int], merges: list[tuple[str, str]], special: SpecialTokens,
                 source: str | Path | None, merges_source: str | Path | None = None) -> None:
    """Refuse (``ParseError`` naming ``source``) BPE tables that ``tokenizers`` would reject with a bare
    exception or silently misread: ids that are not ``0..len(vocab)-1`` once each, merges of tokens
    (or into tokens) the vocabulary lacks, special tokens it lacks, more entries than ``MAX_VOCAB``."""
    if not isinstance(vocab, dict) or not vocab:
        raise ParseError("the vocabulary is empty or not a token -> id mapping", path=source)
    if len(vocab) > MAX_VOCAB or len(merges) > MAX_VOCAB:
        raise ParseError(f"{len(vocab):,} tokens and {len(merges):,} merges: the limit is {MAX_VOCAB:,} each",
                         path=source)
    seen: dict[int, str] = {}
    for token, i in vocab.items():
        if not isinstance(token, str) or isinstance(i, bool) or not isinstance(i, int):
            raise ParseError(f"vocabulary entry {str(token)[:40]!r}: {str(i)[:20]} is not an integer id", path=source)
        if not 0 <= i < len(vocab):
            raise ParseError(f"token {token[:40]!r} has id {i}, outside 0..{len(vocab) - 1} (the vocabulary's size)",
                             path=source)
        if i in seen:
            raise ParseError(f"id {i} is given to both {seen[i][:40]!r} and {token[:40]!r}", path=source)
        seen[i] = token
    for number, (a, b) in enumerate(merges, 1):
        for token in (a, b, a + b):
            if token not in vocab:
                raise ParseError(f"merge {number} ({a[:40]} {b[:40]}) names {token[:40]!r}, which is not in the "
                                 "vocabulary", path=merges_source or source)
    for name in ("bos", "eos", "pad", "unk"):
        token = getattr(special, name)
        if token not in vocab:
            raise ParseError(f"the {name} token {token[:40]!r} is not in the vocabulary", path=source)


def _token(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _json_or_empty(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(_read_text(path))
    except (OSError, ValueError) as exc:
        raise ParseError(f"cannot read: {exc}", path=path) from None
    return data if isinstance(data, dict) else {}


def _special_tokens(folder: Path) -> SpecialTokens:
    """Special tokens as transformers resolves them: ``special_tokens_map.json`` wins only when
    ``tokenizer_config.json`` has no ``added_tokens_decoder`` (docs/single-file.md §9)."""
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
