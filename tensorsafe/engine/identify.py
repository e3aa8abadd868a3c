"""Positive identification: a span that is no pickle is a known plain format, or it is unscanned.

"Clean" means every byte a loader could execute from was read and judged. A span whose bytes
match no format tensorsafe reads completely was not judged, so it gets SCAN-01 (an error: exit
2), never silence. Repositories may let unknown *non-model* files through with the policy switch
``allow_unscanned``; a file named like a model never passes that way.
"""
from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.engine.chat_templates import scan_text_templates
from tensorsafe.readers.plain_formats import PLAIN_KIND_NAMES, identify_plain, lfs_pointer
from tensorsafe.report import Finding, Location
from tensorsafe.rules import Outcome

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

MODEL_EXTENSIONS = frozenset({
    ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".joblib", ".dill", ".npy", ".npz", ".h5", ".hdf5",
    ".keras", ".onnx", ".gguf", ".ggml", ".safetensors", ".msgpack", ".zst", ".lz4", ".pb", ".tflite", ".mar",
    ".sav",
})
"""Names that promise a model format (the last two suffixes are looked at: ``x.pkl.gz``)."""

MODEL_SHAPED_PLAIN_KINDS = {"msgpack": frozenset({".msgpack"})}
"""Plain kinds that are model formats themselves, with the names they go by."""

def model_suffix(path: str) -> str | None:
    """The model extension ``path`` carries (``.ckpt``), or None."""
    suffixes = [s.lower() for s in PurePath(path).suffixes[-2:]]
    return next((s for s in reversed(suffixes) if s in MODEL_EXTENSIONS), None)


def report_lfs_pointer(fs: "FileScan", span: Span, location: Location) -> bool:
    pointer = lfs_pointer(span)
    if pointer is None:
        return False
    oid, size = pointer
    fs.note_kind("git-lfs-pointer")
    fs.add("SCAN-03", f"this is a Git LFS pointer to a {size:,}-byte file (sha256 {oid[:12]}…), not the model: "
           "fetch it (git lfs pull) and scan again", location)
    return True


def identify_unknown(fs: "FileScan", span: Span, location: Location) -> None:
    """Name the plain format ``span`` holds, or report it unscanned; a model name on plain data is SCAN-02."""
    kind = identify_plain(span, lambda: fs.check_deadline(location))
    top_level = not location.members
    suffix = model_suffix(fs.path) if top_level else None
    if kind is not None:
        fs.note_kind(kind)
        if kind == "text":
            scan_text_templates(fs, span, location)
        if suffix is None or suffix in MODEL_SHAPED_PLAIN_KINDS.get(kind, ()):
            return
        if kind == "empty":
            fs.add("SCAN-04", f"the file is empty, but its name promises a model ({suffix})", location)
        else:
            fs.add("SCAN-02", f"named {suffix} (a model format), but its bytes are {PLAIN_KIND_NAMES[kind]}",
                   location)
        return
    fs.note_kind("unknown")
    head = span.head(8).hex(" ")
    named = f"; its name promises a model ({suffix})" if suffix else ""
    message = (f"{span.size:,} bytes (starting {head}) match no format tensorsafe reads, so they were not "
               f"judged{named}")
    let_through = fs.policy.allow_unscanned and model_suffix(fs.path) is None
    if let_through:
        fs.result.findings.append(Finding(fs.path, "SCAN-01", message + " (let through: allow_unscanned)",
                                          location, None, Outcome.WARN))
    else:
        fs.add("SCAN-01", message, location)

