"""Route a span to the reader for its kind."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.blob import Span
from tensorsafe.containers.decompress import DecompressError, decompress
from tensorsafe.containers.numpy_files import read_npy_header
from tensorsafe.containers.pickle_stream import scan_pickle_stream
from tensorsafe.containers.tar_scan import scan_tar
from tensorsafe.containers.zip import open_zip
from tensorsafe.containers.zip_scan import scan_zip_view
from tensorsafe.errors import LimitExceeded, ParseError
from tensorsafe.report import Location
from tensorsafe.sniff import Kind

if TYPE_CHECKING:
    from tensorsafe.scanner import FileScan

COMPRESSED = {Kind.GZIP: "gzip", Kind.BZ2: "bz2", Kind.XZ: "xz", Kind.LZMA: "lzma", Kind.ZLIB: "zlib"}
WEAK_MAGIC = frozenset({Kind.LZMA, Kind.ZLIB})
"""Magic bytes that ordinary data can start with: a failed decompression means "not this kind"."""


def scan_kind(fs: "FileScan", kind: Kind, span: Span, location: Location, depth: int,
              pickle_expected: bool) -> None:
    if kind is Kind.ZIP:
        scan_zip(fs, span, location, depth)
    elif kind in COMPRESSED:
        scan_compressed(fs, kind, span, location, depth, pickle_expected)
    elif kind is Kind.NPY:
        scan_npy(fs, span, location, depth)
    elif kind is Kind.TAR:
        scan_tar(fs, span, location, depth)
    elif kind is Kind.SAFETENSORS:
        from tensorsafe.header.scan_hook import scan_safetensors  # the header checks (ST-*) and polyglot fronts

        scan_safetensors(fs, span, location, depth)
    else:
        scan_pickle_stream(fs, span, location, depth, expected=pickle_expected or kind is Kind.PICKLE)
        if fs.kinds and fs.kinds[-1] == "other" and _broken_safetensors(fs, span, location):
            from tensorsafe.header.scan_hook import scan_safetensors

            fs.kinds.pop()
            scan_safetensors(fs, span, location, depth)


def _broken_safetensors(fs: "FileScan", span: Span, location: Location) -> bool:
    """Not a pickle, and shaped like safetensors whose header length lies (or named like one):
    the header checks say what is wrong instead of calling the file "other"."""
    head = span.head(64)
    named = not location.members and fs.path.endswith(".safetensors")
    return named or (len(head) > 8 and head[8:].lstrip(b" \t\r\n")[:1] == b"{")


def scan_zip(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    try:
        view = open_zip(span, fs.limits.max_members)
    except (ParseError, LimitExceeded) as exc:
        fs.note_kind("zip")
        fs.add_error(exc, "ZIP-07", location)
        return
    scan_zip_view(fs, view, location, depth)


def scan_trailing_zip(fs: "FileScan", span: Span, location: Location, depth: int) -> bool:
    """A zip found by its end record in a file that does not start like one (a polyglot)."""
    try:
        view = open_zip(span, fs.limits.max_members)
    except (ParseError, LimitExceeded):
        return False
    if not view.members:
        return False
    scan_zip_view(fs, view, location, depth)
    return True


def scan_compressed(fs: "FileScan", kind: Kind, span: Span, location: Location, depth: int,
                    pickle_expected: bool) -> None:
    method = COMPRESSED[kind]
    try:
        data = decompress(span, method, fs.limits.max_decompressed_bytes, multi_stream=kind is not Kind.ZLIB)
    except LimitExceeded as exc:
        fs.note_kind(method)
        fs.add_error(exc, "ARC-03", location)
        return
    except DecompressError as exc:
        if kind in WEAK_MAGIC and not exc.partial:
            scan_pickle_stream(fs, span, location, depth, expected=pickle_expected)
            return
        fs.note_kind(method)
        fs.add("ARC-02", f"{method} stream cannot be decompressed: {exc.message}", location)
        if exc.partial:
            fs.scan_span(Span.of_bytes(exc.partial), location.inside(f"<{method}, partial>"), depth + 1,
                         pickle_expected=True)
        return
    fs.note_kind(method)
    fs.scan_span(Span.of_bytes(data), location.inside(f"<{method}>"), depth + 1, pickle_expected=pickle_expected)


def scan_npy(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    fs.note_kind("numpy")
    try:
        header = read_npy_header(span)
    except ParseError as exc:
        fs.add("NPY-02", exc.message, location)
        return
    if header.has_object:
        fs.add("NPY-01", f"array of dtype {header.descr!r} holds Python objects; its pickle was scanned",
               location.at(header.data_offset))
        scan_pickle_stream(fs, span.sub(header.data_offset, span.size), location.inside("<object array>"),
                           depth + 1, expected=True)
