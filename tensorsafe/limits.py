"""The bounds of one scan. Each default is a named constant in the module that enforces it."""
from __future__ import annotations

from dataclasses import dataclass

from tensorsafe.containers.decompress import MAX_DECOMPRESSED_BYTES
from tensorsafe.containers.zip import MAX_ZIP_MEMBERS
from tensorsafe.pickles.walker import MAX_MEMO_ENTRIES, MAX_OPCODES, MAX_VALUES

MAX_ARCHIVE_DEPTH = 6
MAX_SCAN_SECONDS = 300.0
MAX_PICKLES_PER_STREAM = 10_000
DEFAULT_MAX_REMOTE_BYTES = 64 << 20
"""Most bytes one remote scan may fetch (``--deep`` downloads the file instead)."""


@dataclass(frozen=True)
class ScanLimits:
    """The bounds of one scan; hitting one is an ``error`` finding (exit 2), never a pass.

    Attributes:
        max_depth: Deepest archive nesting to follow (``--max-depth``).
        max_decompressed_bytes: Most bytes one compressed stream may inflate to (``--max-decompressed``).
        max_members: Most members in one zip or tar archive.
        max_opcodes: Most opcodes in one pickle stream.
        max_memo_entries: Most memo entries in one pickle stream.
        max_values: Most values one pickle walk holds at once (stack, memo, containers): its memory bound.
        max_pickles_per_stream: Most concatenated pickles in one stream.
        timeout_seconds: Seconds allowed per file (``--timeout``).
    """

    max_depth: int = MAX_ARCHIVE_DEPTH
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES
    max_members: int = MAX_ZIP_MEMBERS
    max_opcodes: int = MAX_OPCODES
    max_memo_entries: int = MAX_MEMO_ENTRIES
    max_values: int = MAX_VALUES
    max_pickles_per_stream: int = MAX_PICKLES_PER_STREAM
    timeout_seconds: float = MAX_SCAN_SECONDS
