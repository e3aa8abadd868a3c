"""The CLIP tokenizer files of a diffusers folder (``tokenizer/``, ``tokenizer_2/``).

No single-file checkpoint carries a tokenizer. Every Stable Diffusion tokenizer is the same OpenAI
CLIP BPE (49408 ids, bundled in ``tensorsafe/data/clip``); they differ only in the pad token:
``<|endoftext|>`` for SD1 and SDXL's ``tokenizer``, ``!`` (id 0, what open_clip pads with) for SD2
and SDXL's ``tokenizer_2``. Both JSON files name the same pad token, because transformers lets
``special_tokens_map.json`` win only in some cases (docs/single-file.md §9).
"""
from __future__ import annotations

import json
import os
from importlib import resources

from tensorsafe.errors import ParseError
from tensorsafe.paths import Contained

PAD_EOS = "<|endoftext|>"
PAD_BANG = "!"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
REQUIRED = ("vocab.json", "merges.txt")
FAST_FILE = "tokenizer.json"
"""A CLIP BPE tokenizer is loaded from these two files, or from this one (transformers' fast form)."""
MAX_FILE_BYTES = 64 << 20
"""A tokenizer file bigger than this is refused (CLIP's vocab.json is 1.5 MB, a fast tokenizer.json 3.6 MB)."""
MAX_FILES = 64


def _bundled(name: str) -> bytes:
    return resources.files("tensorsafe").joinpath("data", "clip", name).read_bytes()


def _json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def tokenizer_files(pad: str) -> dict[str, bytes]:
    """File name -> bytes for one tokenizer folder; ``pad`` is ``"<|endoftext|>"`` or ``"!"``."""
    if pad not in (PAD_EOS, PAD_BANG):
        raise ValueError(f"pad token must be {PAD_EOS!r} or {PAD_BANG!r}, not {pad!r}")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad, "unk_token": EOS}
    config = {
        "add_prefix_space": False,
        **special,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
    }
    return {
        "vocab.json": _bundled("vocab.json"),
        "merges.txt": _bundled("merges.txt"),
        "tokenizer_config.json": _json(dict(sorted(config.items()))),
        "special_tokens_map.json": _json(special),
    }


def tokenizer_files_from(box: Contained, folder: str) -> dict[str, bytes] | None:
    """File name -> bytes of the tokenizer folder ``folder`` of ``box`` (a diffusers folder), or None
    when it has no such folder. Only regular files directly in it are taken, each resolved inside
    ``box``; a folder without ``vocab.json`` and ``merges.txt`` is a :class:`ParseError`."""
    where = box.resolve(folder)
    if not where.is_dir():
        return None
    with os.scandir(where) as entries:
        names = sorted(e.name for e in entries)
    if len(names) > MAX_FILES:
        raise ParseError(f"{len(names):,} entries in a tokenizer folder, more than the {MAX_FILES} allowed",
                         path=box.given / folder)
    out: dict[str, bytes] = {}
    for name in names:
        path = box.resolve(name, under=folder)
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            box.check_opened(fh.fileno(), path)
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ParseError(f"more than the {MAX_FILE_BYTES:,} bytes a tokenizer file may have",
                             path=box.given / folder / name)
        out[name] = data
    if not all(n in out for n in REQUIRED) and FAST_FILE not in out:
        raise ParseError(f"a CLIP tokenizer needs {' and '.join(REQUIRED)} (or {FAST_FILE}); this folder has "
                         f"{', '.join(out) or 'no files'}", path=box.given / folder)
    return out
