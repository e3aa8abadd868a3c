"""Route a span to the reader for its kind.

A reader that only some kinds need is imported in its branch: a process scanning one checkpoint
does not load the numpy, archive, decompression and file-identification readers it never uses
(start-up time is what a pre-commit hook or a Hub worker pays per call)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.engine.pickle_stream import scan_pickle_stream
from tensorsafe.engine.zip_scan import scan_zip
from tensorsafe.errors import LimitExceeded, ParseError
from tensorsafe.pickles.front import cannot_be_pickle, front_effects
from tensorsafe.report import Location
from tensorsafe.readers.sniff import (TAR_BLOCK, ZIP_LOCAL_MAGIC, Kind, joblib_zfile_data_offset, starts_tar_header,
                                      unopened_format)

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

COMPRESSED = {Kind.GZIP: "gzip", Kind.BZ2: "bz2", Kind.XZ: "xz", Kind.LZMA: "lzma", Kind.ZLIB: "zlib",
              Kind.LZ4: "lz4", Kind.ZSTD: "zstd", Kind.JOBLIB_ZFILE: "zlib"}
SINGLE_STREAM = frozenset({Kind.ZLIB, Kind.JOBLIB_ZFILE})
"""joblib reads one zlib stream (a Z-file with ``zlib.decompress``, which ignores what follows)."""
WEAK_MAGIC = frozenset({Kind.LZMA, Kind.ZLIB, Kind.JOBLIB_ZFILE})
"""Magic bytes that ordinary data can start with: a failed decompression means "not this kind"."""


def scan_kind(fs: "FileScan", kind: Kind, span: Span, location: Location, depth: int,
              pickle_expected: bool) -> None:
    head = span.head(TAR_BLOCK)
    read_as_tar = False
    if kind is not Kind.TAR and not head.startswith(ZIP_LOCAL_MAGIC) and starts_tar_header(head):
        # torch.load reads a file that does not start a zip member with tarfile first (its pre-1.0
        # layout), whatever else the bytes are (a pickle, a .npy, safetensors...): both ways, then
        from tensorsafe.engine.tar_scan import scan_tar  # tarfile loads only for a tar

        read_as_tar = scan_tar(fs, span, location, depth)
    if kind is Kind.ZIP:
        scan_zip(fs, span, location, depth)
    elif kind in COMPRESSED:
        scan_compressed(fs, kind, span, location, depth, pickle_expected)
    elif kind is Kind.UNOPENED:
        name = unopened_format(span.head(16)) or "archive"
        fs.note_kind(name)
        fs.add("ARC-06", f"{name}: tensorsafe does not open it; unpack it and scan the files", location, name)
    elif kind is Kind.NPY:
        scan_npy(fs, span, location, depth)
    elif kind is Kind.TAR:
        from tensorsafe.engine.tar_scan import scan_tar  # tarfile loads only for a tar

        scan_tar(fs, span, location, depth)
    elif kind is Kind.SAFETENSORS:
        from tensorsafe.engine.safetensors_span import scan_safetensors  # the header checks (ST-*) and polyglot fronts

        scan_safetensors(fs, span, location, depth)
    elif kind is Kind.GGUF:
        from tensorsafe.engine.gguf import scan_gguf

        scan_gguf(fs, span, location)
    elif kind is Kind.HDF5:
        from tensorsafe.engine.hdf5 import scan_hdf5

        scan_hdf5(fs, span, location, depth)
    elif not scan_pickle_stream(fs, span, location, depth, expected=pickle_expected or kind is Kind.PICKLE):
        scan_not_pickle(fs, span, location, depth, read_as_tar=read_as_tar)


def scan_not_pickle(fs: "FileScan", span: Span, location: Location, depth: int, *, read_as_tar: bool = False) -> None:
    """Bytes that are no pickle: a Git LFS pointer, safetensors with a lying header, a plain format, or unscanned.
    ``read_as_tar``: ``tarfile`` read them (an old-style tar has no ``ustar`` magic to sniff), so they
    are a tar, scanned as one, not unknown bytes; the other readings are still checked."""
    from tensorsafe.engine.identify import identify_unknown, report_lfs_pointer

    if report_lfs_pointer(fs, span, location):
        return
    if _broken_safetensors(fs, span, location):
        from tensorsafe.engine.safetensors_span import scan_safetensors

        scan_safetensors(fs, span, location, depth)
        return
    from tensorsafe.engine.onnx_model import scan_onnx_candidate

    if scan_onnx_candidate(fs, span, location):  # ONNX has no magic bytes: a protobuf ModelProto that parses
        return
    if not read_as_tar:
        identify_unknown(fs, span, location)


def _broken_safetensors(fs: "FileScan", span: Span, location: Location) -> bool:
    """Not a pickle, and shaped like safetensors whose header length lies (or named like one):
    the header checks say what is wrong instead of calling the file "other"."""
    head = span.head(64)
    named = not location.members and fs.path.endswith(".safetensors")
    text_length = head[:8].isascii() and head[:8].decode("ascii").isprintable()  # '{"name": {}}' is JSON text
    return named or (len(head) > 8 and not text_length and head[8:].lstrip(b" \t\r\n")[:1] == b"{")


def scan_pickle_front(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    """The bytes ``pickle.load`` would read first, whatever else the span is: judged when they
    reach an import or a call before the unpickler would stop (parse errors are expected)."""
    if cannot_be_pickle(span.head(3)):
        return
    trace = fs.walk(span.buf, span.start, span.end)
    if isinstance(trace.error, LimitExceeded):
        fs.add_error(trace.error, "PK-L01", location.inside("<pickle at start>"))
    if front_effects(trace):
        fs.judge(trace, span, location.inside("<pickle at start>"), depth, structure=False)


def scan_compressed(fs: "FileScan", kind: Kind, span: Span, location: Location, depth: int,
                    pickle_expected: bool, *, also_read_as_safetensors: bool = False) -> None:
    """``also_read_as_safetensors``: the span is valid safetensors too (scanned as that), so a stream
    that yields nothing at all only means "not this kind": its loaders get nothing from it."""
    from tensorsafe.readers.decompress import DecompressError, NotOpened, decompress

    method, name = COMPRESSED[kind], kind.value
    body = span
    if kind is Kind.JOBLIB_ZFILE:
        body = span.sub(joblib_zfile_data_offset(span.head(64)) or 0, span.size)
    try:
        data = decompress(body, method, fs.limits.max_decompressed_bytes, multi_stream=kind not in SINGLE_STREAM,
                          allow_trailing=kind is Kind.JOBLIB_ZFILE, deadline=fs.deadline)
    except NotOpened as exc:
        fs.note_kind(name)
        fs.add("ARC-06", exc.message, location, name)
        return
    except LimitExceeded as exc:
        fs.note_kind(name)
        if exc.limit != "MAX_SCAN_SECONDS" or fs.check_deadline(location):
            fs.add_error(exc, "ARC-03", location)
        return
    except DecompressError as exc:
        if also_read_as_safetensors and not exc.partial:
            return
        if kind in WEAK_MAGIC and not exc.partial:
            if not scan_pickle_stream(fs, span, location, depth, expected=pickle_expected):
                scan_not_pickle(fs, span, location, depth)
            return
        fs.note_kind(name)
        fs.add("ARC-02", f"{name} stream cannot be decompressed: {exc.message}", location)
        if exc.partial:
            fs.scan_span(Span.of_bytes(exc.partial), location.inside(f"<{name}, partial>"), depth + 1,
                         pickle_expected=True)
        return
    fs.note_kind(name)
    fs.scan_span(Span.of_bytes(data), location.inside(f"<{name}>"), depth + 1, pickle_expected=pickle_expected)


def scan_safetensors_lookalike(fs: "FileScan", kind: Kind, span: Span, location: Location, depth: int,
                               pickle_expected: bool) -> None:
    """Valid safetensors whose header length starts with ``kind``'s magic (35,615 is gzip's ``1F 8B``):
    loaders decide by their own API, so both readings are scanned. The safetensors checks walk the
    pickle front and open a zip at the end the way ``zipfile`` does (a ``PK\\3\\4`` length is that
    zip reading); a decompressor's reading that yields nothing gives its loaders nothing."""
    from tensorsafe.engine.safetensors_span import scan_safetensors  # the header checks (ST-*) and polyglot fronts

    scan_safetensors(fs, span, location, depth)
    if kind in COMPRESSED:
        scan_compressed(fs, kind, span, location, depth, pickle_expected, also_read_as_safetensors=True)
    elif kind is not Kind.ZIP:
        scan_kind(fs, kind, span, location, depth, pickle_expected)


def scan_npy(fs: "FileScan", span: Span, location: Location, depth: int) -> None:
    from tensorsafe.readers.numpy_files import read_npy_header

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
