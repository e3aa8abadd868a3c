"""Name what a file that fails as safetensors holds instead, with the scanner's own sniffers.

``validate`` and ``inspect`` read any file they are given as safetensors; when its first bytes are
a PyTorch zip, a GGUF model or a JSON file, "declared header length 14,064,895,815 is over the
limit" is true but useless. This module turns the scanner's identification (:func:`sniff`, the
plain formats, Git LFS pointers) into the words for "not a safetensors file (looks like ...)".
"""
from __future__ import annotations

from tensorsafe.readers.blob import Span
from tensorsafe.readers.plain_formats import PLAIN_KIND_NAMES, identify_plain, lfs_pointer
from tensorsafe.readers.safetensors.layout import LENGTH_BYTES
from tensorsafe.readers.sniff import TORCH_LEGACY_MAGIC_NUMBER, Kind, sniff, unopened_format

KIND_NAMES = {
    Kind.ZIP: "a zip archive", Kind.TAR: "a tar archive", Kind.GZIP: "gzip-compressed data",
    Kind.BZ2: "bz2-compressed data", Kind.XZ: "xz-compressed data", Kind.LZMA: "lzma-compressed data",
    Kind.ZLIB: "zlib-compressed data", Kind.LZ4: "lz4-compressed data", Kind.ZSTD: "zstd-compressed data",
    Kind.JOBLIB_ZFILE: "a joblib compressed file", Kind.NPY: "a NumPy .npy array", Kind.GGUF: "a GGUF model",
    Kind.HDF5: "an HDF5 file (Keras .h5?)", Kind.PICKLE: "a pickle",
}
TORCH_ZIP_RECORD = b"/data.pkl"
"""``torch.save`` writes ``ARCHIVE/data.pkl`` as the first zip member: its name is in the first bytes."""
LEGACY_MAGIC_PICKLE = b"\x8a\x0a" + TORCH_LEGACY_MAGIC_NUMBER.to_bytes(10, "little")
"""A legacy ``torch.save`` file starts with PROTO then this LONG1 (its magic number)."""


def starts_like_safetensors(head: bytes) -> bool:
    """A non-zero 8-byte length, then ``{`` after JSON whitespace: the file means to be safetensors."""
    return len(head) > LENGTH_BYTES and head[:LENGTH_BYTES] != bytes(LENGTH_BYTES) \
        and head[LENGTH_BYTES:].lstrip(b" \t\r\n")[:1] == b"{"


def looks_like(span: Span) -> str | None:
    """What ``span`` holds, in words ("a PyTorch zip checkpoint", "JSON text", ...); None when unknown."""
    head = span.head(512)
    kind = sniff(span)
    if kind is Kind.ZIP and TORCH_ZIP_RECORD in head:
        return "a PyTorch zip checkpoint"
    if kind is Kind.PICKLE and head[2:2 + len(LEGACY_MAGIC_PICKLE)] == LEGACY_MAGIC_PICKLE:
        return "a legacy torch.save checkpoint"
    if kind is Kind.UNOPENED:
        return f"a {unopened_format(head)}"
    if kind in KIND_NAMES:
        return KIND_NAMES[kind]
    pointer = lfs_pointer(span)
    if pointer is not None:
        return f"a Git LFS pointer (to a {pointer[1]:,}-byte file; git lfs pull fetches it)"
    plain = identify_plain(span)
    if plain == "text" and head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "JSON text"
    return PLAIN_KIND_NAMES[plain] if plain is not None else None


def explain_format_error(span: Span, message: str, *, named_safetensors: bool) -> str:
    """The message of a failed format rule (ST-Fxx), said so that a user can act on it.

    A file whose first bytes are safetensors' own keeps ``message``; any other file is "not a
    safetensors file (looks like X)", except that a file *named* ``.safetensors`` keeps the format
    error and gets the hint (it was meant to be one: truncated, overwritten or mislabelled)."""
    if starts_like_safetensors(span.head(LENGTH_BYTES + 64)):
        return message
    looks = looks_like(span)
    if named_safetensors:
        return message if looks is None else f"{message}; the bytes look like {looks}, not safetensors"
    if looks is None:
        return f"not a safetensors file (its bytes, starting {span.head(8).hex(' ')}, match no format tensorsafe knows)"
    return f"not a safetensors file (looks like {looks})"
