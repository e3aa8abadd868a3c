"""Every limit in one place: the bounds of one scan (:class:`ScanLimits`) and the policy limits of
the safetensors header checks (:class:`HeaderLimits`, ST-P01 to ST-P07). Each default is a named
constant here, imported from here by the module that enforces it."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping

from tensorsafe.errors import PolicyFileError, UsageError

MAX_DECOMPRESSED_BYTES = 1 << 30
MAX_ZIP_MEMBERS = 1_000_000
MAX_OPCODES = 100_000_000
MAX_MEMO_ENTRIES = 20_000_000
MAX_VALUES = 10_000_000
"""Most values the walk may hold at once: on its stack, in its memo, and inside the containers it
built (items moved off the stack are counted, never uncounted). Each is a small object (about 100
bytes), so a walk's memory is bounded by this, plus the argument bytes it copies (at most the
stream's own size), whatever the stream's opcode count."""
MAX_ARCHIVE_DEPTH = 6
MAX_SCAN_SECONDS = 300.0
MAX_PICKLES_PER_STREAM = 10_000
DEFAULT_MAX_REMOTE_BYTES = 64 << 20
"""Most bytes one remote scan may fetch (``--deep`` downloads the file instead)."""
MAX_LOAD_ALLOCATION_BYTES = 1 << 30
"""PK-A01: most bytes the allowed calls of one pickle may make a loader allocate from nothing in
the file (``bytearray(n)``, ``set(range(n))``, a numpy shape with no data behind it), one call or
all of them together. No pickler writes such a call at any size; 1 GiB leaves room for odd writers.
A torch storage is bounded instead by the bytes the file holds for it."""
LOAD_ITEM_BYTES = 8
"""PK-A01: the least memory one container item costs a loader (a pointer): ``list(range(n))`` is
charged ``8 * n`` bytes against MAX_LOAD_ALLOCATION_BYTES (128 Mi items)."""


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


# -- the safetensors header checks' policy limits (ST-P01 to ST-P07) ---------------------------------
# Each can be set in a policy file's ``[limits]`` table (or ``[tool.tensorsafe.limits]`` in
# pyproject.toml) and with ``tensorsafe validate --limit NAME=VALUE``.
HEADER_WARN_BYTES = 25_000_000
"""ST-P01: huggingface_hub's ``SAFETENSORS_MAX_HEADER_LENGTH``; bigger headers get an advisory."""
MAX_TENSORS = 100_000
"""ST-P02: tensor entries per file."""
MAX_RANK = 16
"""ST-P03: dimensions per tensor (numpy's hard limit is 64; torch has none)."""
MAX_DIM = (1 << 48) - 1
"""ST-P04: largest dimension (the bound of the project's JSON schema)."""
MAX_ELEMENTS = (1 << 48) - 1
"""ST-P04: largest product of a tensor's non-zero dimensions."""
MAX_NAME_BYTES = 1024
"""ST-P05: longest tensor name, in UTF-8 bytes."""
MAX_METADATA_ENTRIES = 1024
"""ST-P06: entries in ``__metadata__``."""
MAX_METADATA_KEY_BYTES = 1024
"""ST-P06: longest metadata key, in UTF-8 bytes."""
MAX_METADATA_BYTES = 8 * 1024 * 1024
"""ST-P06: metadata keys plus values, in UTF-8 bytes."""
MAX_JSON_DEPTH = 3
"""ST-P07: root object, tensor entry or metadata object, shape and offset arrays."""


@dataclass(frozen=True)
class HeaderLimits:
    """Limits of the policy rules; the format rules' limits (ST-F02, ST-F06) are the reference's own.

    The field names are the names of ``tensorsafe validate --limit NAME=VALUE`` and of a policy
    file's ``[limits]`` table; each default is the module constant of the same name in capitals.
    """

    header_warn_bytes: int = HEADER_WARN_BYTES
    max_tensors: int = MAX_TENSORS
    max_rank: int = MAX_RANK
    max_dim: int = MAX_DIM
    max_elements: int = MAX_ELEMENTS
    max_name_bytes: int = MAX_NAME_BYTES
    max_metadata_entries: int = MAX_METADATA_ENTRIES
    max_metadata_key_bytes: int = MAX_METADATA_KEY_BYTES
    max_metadata_bytes: int = MAX_METADATA_BYTES
    max_json_depth: int = MAX_JSON_DEPTH

    def updated(self, values: Mapping[str, object], *, source: str | None = None) -> "HeaderLimits":
        """A copy with ``values`` applied; unknown names or non-integer values raise ``PolicyFileError``
        (``source`` given: a policy file) or ``UsageError`` (the command line)."""
        error = PolicyFileError if source is not None else UsageError
        where = " in [limits]" if source is not None else ""
        changes = {}
        for name, value in values.items():
            if name not in LIMIT_NAMES:
                raise error(f"unknown limit {name!r}{where}; known limits: {', '.join(LIMIT_NAMES)}", path=source)
            if type(value) is not int or value < 0:
                raise error(f"limit {name!r}{where} must be a non-negative integer, not {value!r}", path=source)
            changes[name] = value
        return replace(self, **changes)


DEFAULT_LIMITS = HeaderLimits()
LIMIT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(HeaderLimits))


def describe_limits() -> str:
    """One line per limit with its default, for ``--help``."""
    return "\n".join(f"  {f.name} = {f.default:_}" for f in fields(HeaderLimits))
