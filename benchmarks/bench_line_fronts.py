"""The pickle-front walk of safetensors files whose header length starts a protocol-0 line opcode.

    python benchmarks/bench_line_fronts.py           # 4 GiB of sparse zeros after each header
    python benchmarks/bench_line_fronts.py --quick   # 256 MiB, a smoke run

A header length of 0x??50 starts with PERSID (``P``), 0x??28 with MARK then the next byte: both are
lengths the safetensors writer makes (it pads headers to 8 bytes). The opcode's argument line runs
to the first newline: through all-zero tensor data that is the whole file. ``pickle_front`` finds
the newline with one memchr and copies only what the opcode parses (a C string up to its NUL, a
long persistent id left in the buffer), so the walk costs a scan of the mapped bytes, not a copy
and a decode of gigabytes. The files are extended with truncate() (sparse, written in milliseconds).
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

from _targets import finish  # benchmarks/_targets.py (a script's folder is on sys.path)

from tensorsafe.readers.blob import MappedFile
from tensorsafe.safetensors.polyglot import pickle_front

DATA = Path(__file__).resolve().parent / "_data"
CASES = {"P (PERSID)": b"P", "( p (PUT)": b"(p", "( I (INT)": b"(I", "( L (LONG)": b"(L", "( F (FLOAT)": b"(F"}
TARGET_SECONDS_PER_GIB = 0.5
"""Measured before the fix: PERSID 4 s per GiB (a copy and an ASCII decode of the line), the
others about 2 s per GiB and the line's size in memory; after it, 0.15 to 0.35 s per GiB."""


def build(path: Path, lead: bytes, size: int) -> None:
    length = int.from_bytes(lead + bytes(2 - len(lead)), "little")
    text = json.dumps({"t": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    text += b" " * (length - len(text))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", length) + text)
        f.truncate(8 + length + size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = (256 if args.quick else 4096) << 20
    DATA.mkdir(exist_ok=True)
    targets = []
    for label, lead in CASES.items():
        path = DATA / f"line_front_{lead.hex()}.safetensors"
        build(path, lead, size)
        try:
            seconds = float("inf")
            for _ in range(2):  # the best of two: a first walk also pays the first touch of every page
                with MappedFile(path) as mf:
                    started = time.perf_counter()
                    front = pickle_front(mf.span)
                    seconds = min(seconds, time.perf_counter() - started)
        finally:
            path.unlink()
        per_gib = seconds / (size / (1 << 30))
        print(f"{label:12} {seconds:6.2f} s ({per_gib:.2f} s per GiB), verdict {front and front.issue}")
        targets.append((f"{label}: {per_gib:.2f} s per GiB <= {TARGET_SECONDS_PER_GIB}",
                        per_gib <= TARGET_SECONDS_PER_GIB))
    return finish(targets, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
