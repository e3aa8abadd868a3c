"""The CLIP tokenizer files of a diffusers folder (``tokenizer/``, ``tokenizer_2/``).

No single-file checkpoint carries a tokenizer. Every Stable Diffusion tokenizer is the same OpenAI
CLIP BPE (49408 ids, bundled in ``tensorsafe/data/clip``); they differ only in the pad token:
``<|endoftext|>`` for SD1 and SDXL's ``tokenizer``, ``!`` (id 0, what open_clip pads with) for SD2
and SDXL's ``tokenizer_2``. Both JSON files name the same pad token, because transformers lets
``special_tokens_map.json`` win only in some cases (spec section 9).
"""
from __future__ import annotations

import json
from importlib import resources

PAD_EOS = "<|endoftext|>"
PAD_BANG = "!"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


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
