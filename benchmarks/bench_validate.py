"""Header validation speed against safetensors' own reader, in one process.

    python benchmarks/bench_validate.py             # a ~2.6 GB file with 1,000 tensors, 1,000 small files
    python benchmarks/bench_validate.py --quick     # fewer rounds, for a smoke run
    python benchmarks/bench_validate.py --profile   # also cProfile tensorsafe on each case
    python benchmarks/bench_validate.py --deep      # also one --deep check of the big file (reads it all)

Data is generated once into benchmarks/_data/ (gitignored). The big file is written the way the
safetensors writer lays it out (metadata first, tensors sorted by dtype then name, compact JSON,
header padded with spaces to 8 bytes), then extended with truncate(): sparse zeros, written in
milliseconds. The small files are written by safetensors.numpy.save_file itself.

Per round, every case runs each tool once, the order rotating: `tensorsafe` is
`tensorsafe.validate_file` (every format, policy and polyglot rule; the text report is not
rendered), `safe_open` is `safetensors.safe_open(path, "np")` reading the keys and the metadata.
Ratios are each tool's median over
tensorsafe's: above 1 means tensorsafe is faster. Wall and CPU time (this
thread's user + system time) are both printed: on a shared machine the wall clock also counts the
time other processes held the CPU. `--clock cpu` makes the CPU medians decide the exit status.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Callable

from _targets import finish  # benchmarks/_targets.py (a script's folder is on sys.path)

DATA = Path(__file__).resolve().parent / "_data"
BIG = DATA / "st_1000_tensors.safetensors"
SMALL = DATA / "st_small_files"
SMALL_FILES = 1000
BIG_REPEATS = 25
"""The big file is validated this many times per round (one call is too short to time alone)."""
TARGET_RATIO = 1.0
"""The issue's target: at least as fast as safe_open per file."""
_ALIGN = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "U8": 1}


# -- data ------------------------------------------------------------------------------------------------
def big_tensors() -> list[tuple[str, str, tuple[int, ...]]]:
    """1,000 tensors shaped like a 1.3 B-parameter transformer in fp16 (~2.6 GB)."""
    out = [("model.embed_tokens.weight", "F16", (32000, 2048)), ("lm_head.weight", "F16", (32000, 2048)),
           ("model.norm.weight", "F16", (2048,))]
    for i in range(111):
        p = f"model.layers.{i}"
        out += [(f"{p}.self_attn.q_proj.weight", "F16", (2048, 512)), (f"{p}.self_attn.k_proj.weight", "F16", (512, 512)),
                (f"{p}.self_attn.v_proj.weight", "F16", (512, 512)), (f"{p}.self_attn.o_proj.weight", "F16", (512, 2048)),
                (f"{p}.mlp.gate_proj.weight", "F16", (1408, 2048)), (f"{p}.mlp.up_proj.weight", "F16", (1408, 2048)),
                (f"{p}.mlp.down_proj.weight", "F16", (2048, 1408)), (f"{p}.input_layernorm.weight", "F16", (2048,)),
                (f"{p}.rotary_emb.inv_freq", "F32", (32,))]
    return out[:1000]


def write_like_the_writer(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict) -> None:
    ordered = sorted(tensors, key=lambda t: (-_ALIGN[t[1]], t[0]))
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in ordered:
        n = _ALIGN[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)


def small_files() -> list[Path]:
    import numpy as np
    from safetensors.numpy import save_file

    SMALL.mkdir(parents=True, exist_ok=True)
    paths = sorted(SMALL.glob("*.safetensors"))
    if len(paths) == SMALL_FILES:
        return paths
    for i in range(SMALL_FILES):
        tensors = {f"lora_unet_down_blocks_{i % 4}_attentions_{j}.{part}": np.zeros(shape, np.float16)
                   for j in range(1 + i % 3) for part, shape in (("lora_down.weight", (4, 32)),
                                                                  ("lora_up.weight", (32, 4)), ("alpha", ()))}
        save_file(tensors, SMALL / f"lora_{i:04d}.safetensors", metadata={"ss_network_dim": "4", "format": "pt"})
    return sorted(SMALL.glob("*.safetensors"))


def ensure_data() -> tuple[Path, list[Path]]:
    DATA.mkdir(parents=True, exist_ok=True)
    if not BIG.exists():
        write_like_the_writer(BIG, big_tensors(), {"format": "pt"})
    return BIG, small_files()


# -- timing ----------------------------------------------------------------------------------------------
def tools():
    from safetensors import safe_open

    import tensorsafe
    from tensorsafe.safetensors import HeaderLimits

    limits = HeaderLimits()

    def ours(path: Path) -> str:
        return tensorsafe.validate_file(path, limits).verdict

    def reference(path: Path) -> str:
        with safe_open(str(path), "np") as f:
            f.keys()
            f.metadata()
        return "read"

    return {"tensorsafe": ours, "safe_open": reference}


def run_case(paths: list[Path], fn: Callable[[Path], str]) -> tuple[float, float]:
    """(wall, CPU) seconds per file. CPU time is this thread's (user + system): on a shared machine
    it leaves out the time other processes held the CPU, which the wall clock counts."""
    started, cpu = time.perf_counter(), time.thread_time()
    for p in paths:
        fn(p)
    return (time.perf_counter() - started) / len(paths), (time.thread_time() - cpu) / len(paths)


def measure(cases: dict[str, list[Path]], reps: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    named = tools()
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for case, paths in cases.items():  # warm-up: imports, page cache, verdicts
        for tool, fn in named.items():
            verdicts = {fn(p) for p in dict.fromkeys(paths)}
            print(f"  warm-up {case:<22} {tool:<11} verdicts: {sorted(verdicts)}")
    order = list(named)
    for r in range(reps):
        order = order[1:] + order[:1]
        for case, paths in cases.items():
            for tool in order:
                times.setdefault((case, tool), []).append(run_case(paths, named[tool]))
    return times


def report(times: dict[tuple[str, str], list[tuple[float, float]]], cases: dict[str, list[Path]],
           clock: str = "wall") -> bool:
    ok = {"wall": True, "cpu": True}
    for index, name in enumerate(("wall", "cpu")):
        print(f"\n{name + ' time':<24}{'tool':<12}{'median/file':>14}{'min/file':>12}{'x ours':>9}{'min x':>8}")
        for case in cases:
            ours = [t[index] for t in times[(case, "tensorsafe")]]
            base_med, base_min = statistics.median(ours), min(ours)
            for tool in ("tensorsafe", "safe_open"):
                if (case, tool) not in times:
                    continue
                t = [x[index] for x in times[(case, tool)]]
                med, low = statistics.median(t), min(t)
                ratio = "" if tool == "tensorsafe" else f"{med / base_med:>8.2f}x"
                min_ratio = "" if tool == "tensorsafe" else f"{low / base_min:>7.2f}x"
                print(f"{case:<24}{tool:<12}{_us(med):>14}{_us(low):>12}{ratio:>9}{min_ratio:>8}")
            ok[name] &= statistics.median([x[index] for x in times[(case, "safe_open")]]) / base_med >= TARGET_RATIO
    for name in ("wall", "cpu"):
        print(f"target ({name} time): tensorsafe at least as fast as safe_open per file (x ours >= "
              f"{TARGET_RATIO:g}): {'met' if ok[name] else 'NOT met'}")
    return ok[clock]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def deep(path: Path) -> None:
    """One deep check (reads every byte in 8 MiB chunks): throughput and peak memory growth."""
    import resource

    import tensorsafe

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = tensorsafe.validate_file(path, deep=True)
    seconds = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    size = path.stat().st_size
    print(f"\ndeep check of {path.name}: {seconds:.2f} s, {size / seconds / 1e9:.2f} GB/s, "
          f"peak RSS grew {grown / 1024:.1f} MiB; {[f.rule_id for f in result.findings]}")


def profile(cases: dict[str, list[Path]]) -> None:
    fn = tools()["tensorsafe"]
    for case, paths in cases.items():
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(max(1, 2000 // len(paths))):
            for p in paths:
                fn(p)
        prof.disable()
        print(f"\n--- {case} ---")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--deep", action="store_true", help="also time one --deep check of the big file")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="which medians decide the exit status (both are printed)")
    args = parser.parse_args(argv)
    big, small = ensure_data()
    size = big.stat().st_size
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"big file: {big.name}, {size / 1e9:.2f} GB, {len(big_tensors())} tensors, "
          f"header {struct.unpack('<Q', big.open('rb').read(8))[0]:,} bytes")
    print(f"small files: {len(small)} LoRA-like files in {SMALL.name}/, {sum(p.stat().st_size for p in small):,} bytes")
    cases = {f"1 file, {len(big_tensors())} tensors": [big] * BIG_REPEATS, f"{len(small)} small files": small}
    times = measure(cases, args.reps or (3 if args.quick else 9))
    ok = report(times, cases, args.clock)
    if args.deep:
        deep(big)
    if args.profile:
        profile(cases)
    clock = f"{args.clock} time, every case: tensorsafe at least as fast as safe_open per file (x ours >= {TARGET_RATIO:g})"
    return finish([(clock, ok)], quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
