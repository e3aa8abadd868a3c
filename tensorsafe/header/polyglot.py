"""ST-P08: files that are also a zip archive or a pickle stream (polyglots).

Both checks read at most 64 KiB beyond the header: the end of the file for a zip end record, the
front of the file (header included) for a pickle walk. The walk is the scanner's own opcode
walker, so nothing is imported or executed.
"""
from __future__ import annotations

import pickletools
import struct

from tensorsafe.header.layout import ByteSource
from tensorsafe.header.model import Issue
from tensorsafe.pickles.walker import walk

EOCD_MAGIC = b"PK\x05\x06"
CENTRAL_MAGIC = b"PK\x01\x02"
EOCD_SIZE = 22
EOCD_SEARCH = EOCD_SIZE + 0xFFFF
"""The end record plus the longest comment: where every zip reader looks for it."""
PICKLE_WINDOW = 64 * 1024
"""Bytes past the header a pickle walk of the front may read."""
PICKLE_MAX_OPCODES = 100_000
FIRST_WINDOW = 4096
_FAILS_FIRST = frozenset(b".012abedlostuR\x81\x85\x86\x87\x90\x91\x92\x93\x94\x98Qqrpghj")
"""Opcodes that pop the stack, need a MARK or read the memo (PUT stores the stack top, GET reads
the memo): as a stream's first opcode they fail whatever follows."""
CANNOT_START = frozenset(range(256)) - {ord(op.code) for op in pickletools.opcodes} | _FAILS_FIRST
"""First bytes with which no pickle stream can reach STOP (most header lengths start that way)."""
PROTO = 0x80


def zip_at_end(src: ByteSource) -> Issue | None:
    """A zip end record whose comment ends exactly at EOF and whose central directory starts right."""
    size = src.size
    tail_start = max(0, size - EOCD_SEARCH)
    tail = src.read(tail_start, size - tail_start)
    i = tail.rfind(EOCD_MAGIC)
    while i >= 0:
        if i + EOCD_SIZE <= len(tail):
            cd_size, = struct.unpack_from("<I", tail, i + 12)
            comment, = struct.unpack_from("<H", tail, i + 20)
            cd_start = tail_start + i - cd_size
            if i + EOCD_SIZE + comment == len(tail) and cd_start >= 0 and src.read(cd_start, 4) == CENTRAL_MAGIC:
                return Issue("ST-P08", f"a zip archive ends the file (central directory at byte {cd_start:,}): zip "
                             "readers open this file as an archive", tail_start + i, "zip")
        i = tail.rfind(EOCD_MAGIC, 0, i)
    return None


def pickle_at_front(src: ByteSource, header_length: int) -> Issue | None:
    """The file's first bytes, walked as pickle opcodes, reach STOP: ``pickle.load`` accepts the file.

    Real headers stop the walk within a few bytes (a NUL of the length field is no opcode), so the
    window starts small and grows only while the walk runs off its end."""
    limit = min(src.size, pickle_window_end(header_length))
    window = FIRST_WINDOW
    if cannot_be_pickle(src.read(0, 3)):
        return None
    while True:
        front = src.read(0, min(limit, window))
        trace = walk(front, 0, len(front), max_opcodes=PICKLE_MAX_OPCODES)
        if trace.stopped:
            return Issue("ST-P08", f"the first {trace.end:,} bytes are also a complete pickle stream "
                         f"({trace.opcodes} opcodes): pickle loaders read something else from this file", 0, "pickle")
        if not trace.truncated or len(front) >= limit:
            return None
        window *= 16


def cannot_be_pickle(front: bytes) -> bool:
    """The file's first bytes (3 are enough) already fail as a pickle stream: no walk is needed.

    Its first opcode cannot start a stream, or it is PROTO (which changes nothing the next opcode
    depends on) followed by one that cannot."""
    if not front:
        return False
    if front[0] in CANNOT_START:
        return True
    return front[0] == PROTO and len(front) > 2 and front[2] in CANNOT_START


def pickle_window_end(header_length: int) -> int:
    """How far into the file the pickle walk may read."""
    return 8 + header_length + PICKLE_WINDOW
