"""Re-derive the CLIP tokenizer files in ``data/clip/`` from OpenAI's BPE merge list.

All Stable Diffusion tokenizers (SD1, SD2, SDXL, both SDXL towers) are the same OpenAI CLIP BPE with
49408 ids; they differ only in the pad token, which lives in the small JSON files written by
``tensorsafe.converter.tokenizer``. The merge list ``bpe_simple_vocab_16e6.txt.gz`` (MIT, OpenAI) ships
inside the ``open-clip-torch`` wheel, which needs no torch to download::

    pip download open-clip-torch --no-deps -d /tmp/oc
    python tensorsafe/data/derive_clip_vocab.py /tmp/oc/open_clip_torch-*.whl

Derivation (spec sd-single-file.md section 9): skip the header line, take the next
49152 - 256 - 2 = 48894 lines as merges; the vocabulary is the 256 byte-to-unicode characters
(GPT-2 table), the same with ``</w>`` appended, the concatenated merges in order, then
``<|startoftext|>`` and ``<|endoftext|>``; ``merges.txt`` is ``#version: 0.2`` plus the merge lines.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 49152 - 256 - 2
OUT = Path(__file__).resolve().parent / "clip"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as in CLIP's simple_tokenizer.py)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def derive(gz_bytes: bytes) -> tuple[bytes, bytes]:
    """(vocab.json, merges.txt) bytes from the gzipped BPE file."""
    digest = hashlib.sha256(gz_bytes).hexdigest()
    if digest != BPE_SHA256:
        raise SystemExit(f"unexpected BPE file (sha256 {digest}, expected {BPE_SHA256})")
    lines = gzip.decompress(gz_bytes).decode("utf-8").split("\n")[1:N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    vocab_json = json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return vocab_json.encode("utf-8"), merges_txt.encode("utf-8")


def read_bpe(path: Path) -> bytes:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            return zf.read(BPE_MEMBER)
    return path.read_bytes()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    vocab, merges = derive(read_bpe(Path(argv[0])))
    OUT.mkdir(exist_ok=True)
    (OUT / "vocab.json").write_bytes(vocab)
    (OUT / "merges.txt").write_bytes(merges)
    print(f"wrote {OUT / 'vocab.json'} ({len(vocab)} bytes) and {OUT / 'merges.txt'} ({len(merges)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
