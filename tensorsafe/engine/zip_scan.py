"""Scan a zip: report its tricks, then every member that a loader could unpickle."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tensorsafe.readers.blob import Span
from tensorsafe.readers.decompress import NotOpened
from tensorsafe.engine.keras_model import scan_keras_archive
from tensorsafe.engine.model_archive import report_model_archive_code
from tensorsafe.readers.member_names import escapes_folder
from tensorsafe.readers.zip import Member, ZipView, member_span, open_zip
from tensorsafe.errors import LimitExceeded, ParseError
from tensorsafe.report import Location

if TYPE_CHECKING:
    from tensorsafe.engine.scanner import FileScan

TORCH_PICKLE = re.compile(r"^(?:(.*)/)?data\.pkl$")
TORCHSCRIPT_CODE = re.compile(r"(^|/)code/")


def scan_zip_view(fs: "FileScan", view: ZipView, location: Location, depth: int) -> None:
    prefix = _torch_prefix(view)
    fs.note_kind("pytorch-zip" if prefix is not None else "zip")
    scan_keras_archive(fs, view, location, rename=prefix is None)  # a Keras v3 .keras: judge config.json
    report_model_archive_code(fs, (m.name for m in view.members), location)  # a TorchServe .mar's code
    for a in view.anomalies:
        where = location.inside(a.member) if a.member else location
        fs.add(a.rule_id, a.message, where.at(a.offset))
    if view.front > 0:
        fs.scan_span(view.span.sub(0, view.front), location.inside("<data before zip>"), depth + 1)
    storage_keys: set[str] = set()
    claims: dict[str, int] = {}
    stored: set[str] = set()  # keys of the storage records met
    ordered = sorted(view.members, key=lambda m: (not m.name.endswith(".pkl"), m.header_offset))
    torchscript_reported = False
    storage_dir = f"{prefix}data/" if prefix is not None else None
    main_pickle = f"{prefix}data.pkl" if prefix is not None else None
    for m in ordered:
        if not fs.check_deadline(location):
            return
        if escapes_folder(m.name):
            fs.add("ARC-04", f"zip member {m.name!r} is an unsafe path", location.inside(m.name), m.name)
        if storage_dir is not None and m.name.startswith(storage_dir) and not m.name.lower().endswith(".pkl") \
                and m.name[len(storage_dir):] in storage_keys:  # a storage the pickle points at: never read
            # (a .pkl is scanned even so: a loader taking its folder from the first member reads data/data.pkl,
            # and torch's zip reader finds records case-insensitively, so data/DATA.PKL is that one too)
            stored.add(m.name[len(storage_dir):])
            _check_storage_claim(fs, claims, m, m.name[len(storage_dir):], location)
            continue
        if TORCHSCRIPT_CODE.search(m.name) and not torchscript_reported:
            torchscript_reported = True
            fs.add("ZIP-09", "the archive holds TorchScript code (torch.jit.load compiles and runs it)",
                   location.inside(m.name))
        if m.name == main_pickle:  # the storages it points at are never read
            # its own keys and claims (an earlier checkpoint in the same file may use the same keys)
            earlier, fs.storage_keys, fs.storage_claims = fs.storage_keys, set(), {}
            _scan_member(fs, view, m, location, depth)
            storage_keys, claims = fs.storage_keys, fs.storage_claims
            fs.storage_keys = earlier | storage_keys
        else:
            _scan_member(fs, view, m, location, depth)
    if storage_dir is not None and len(stored) < len(storage_keys):
        _check_missing_records(fs, claims, view, storage_dir, storage_keys - stored, location)


def _check_missing_records(fs: "FileScan", claims: dict[str, int], view: ZipView, storage_dir: str,
                           keys: set[str], location: Location) -> None:
    """PK-A01 for a storage the pickle claims bytes for and the archive has no record of (``keys``: not
    met under their exact name; torch finds records case-insensitively)."""
    names = {m.name.lower() for m in view.members}
    for key in sorted(keys):
        claim = claims.get(key)
        if claim is not None and claim > 0 and f"{storage_dir}{key}".lower() not in names:
            fs.add("PK-A01", f"a persistent id claims {claim:,} bytes for storage {key!r}, which has no record "
                   f"{storage_dir}{key}: torch allocates the claimed bytes before it reads the record",
                   location.inside(f"{storage_dir}{key}"), "storage numel")


def _check_storage_claim(fs: "FileScan", claims: dict[str, int], m: Member, key: str, location: Location) -> None:
    """PK-A01: torch allocates the bytes a persistent id claims for a storage before it reads its
    record (``get_storage_from_record``); torch.save claims exactly the record's size."""
    claim = claims.get(key)
    if claim is not None and claim > m.size:
        fs.add("PK-A01", f"a persistent id claims {claim:,} bytes for storage {key!r}, whose record holds "
               f"{m.size:,}: torch allocates the claimed bytes before it reads the record",
               location.inside(m.name), "storage numel")


def _scan_member(fs: "FileScan", view: ZipView, m: Member, location: Location, depth: int) -> None:
    where = location.inside(m.name)
    try:
        span, crc_ok = member_span(view, m, fs.limits.max_decompressed_bytes, fs.deadline)
    except LimitExceeded as exc:
        if exc.limit != "MAX_SCAN_SECONDS" or fs.check_deadline(where):
            fs.add_error(exc, "ARC-03", where)
        return
    except NotOpened as exc:
        fs.add("ARC-06", exc.message, where, f"zip method {m.method}")
        return
    except ParseError as exc:
        fs.add("ZIP-07", f"member {m.name!r}: {exc.message}", where)
        return
    if not crc_ok:
        fs.add("ZIP-02", f"member {m.name!r} does not match its CRC-32 (torch reads it anyway)", where)
    fs.scan_span(span, where, depth + 1, pickle_expected=m.name.endswith((".pkl", ".pickle")))


def _torch_prefix(view: ZipView) -> str | None:
    for m in view.members:
        match = TORCH_PICKLE.match(m.name)
        if match:
            return f"{match.group(1)}/" if match.group(1) is not None else ""
    return None


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
