"""Cold start: whole ``tensorsafe scan`` processes against whole ``picklescan`` processes.

    python benchmarks/bench_cold.py              # small checkpoint, ~190 MB legacy file, folder of 400
    python benchmarks/bench_cold.py --reps 15 --only small

A pre-commit hook, a CI step or a hub worker pays a fresh interpreter per call, so this times what
they pay: each tool's console script (from this interpreter's bin folder) run as a subprocess,
interleaved with the order rotated each round, after the page cache was warmed; the target is judged
on wall-clock medians, and each row also shows the median CPU time (user + system), which a busy
machine disturbs less. Floor rows time
``python -c pass`` (interpreter and site start-up, which both tools pay) and ``import argparse`` (what
the command line's parser adds). Ratios are picklescan's median over ours (above 1: we are faster).
The import-time summary of ``import tensorsafe.cli.main, tensorsafe.cli.scan`` (``python -X
importtime``: what ``tensorsafe scan`` imports) is printed after the table. Exits 1 when a
target is missed. Data files are written once into benchmarks/_data/ (gitignored); nothing here
unpickles a file under test.
"""
from __future__ import annotations

import argparse
import compileall
import os
import pickle
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _targets import finish  # benchmarks/_targets.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "_data"
BIN = Path(sys.executable).parent
HEAVY = ("numpy", "huggingface_hub", "fickling", "torch", "jinja2", "h5py", "onnx", "tqdm")
FOLDER_FILES = 100
"""Files of each kind (.pt zip, legacy .bin, .pkl, .npy) in the folder case."""


# -- data ---------------------------------------------------------------------------------------
def make_small(path: Path) -> None:
    import torch

    torch.save({"linear.weight": torch.zeros(16, 8), "linear.bias": torch.zeros(16), "step": 3}, path)


def make_legacy(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_scan import make_legacy as build

    build(path, 420, 96)


def make_folder(folder: Path) -> None:
    import numpy as np
    import torch

    folder.mkdir()
    for i in range(FOLDER_FILES):
        sd = {f"layer{i}.weight": torch.zeros(8, 4), f"layer{i}.bias": torch.zeros(8)}
        torch.save(sd, folder / f"model_{i:03d}.pt")
        torch.save(sd, folder / f"pytorch_model_{i:03d}.bin", _use_new_zipfile_serialization=False)
        (folder / f"state_{i:03d}.pkl").write_bytes(pickle.dumps({"epoch": i, "lr": 1e-4, "names": ["a", "b"]}))
        np.save(folder / f"array_{i:03d}.npy", np.zeros((4, 4), dtype=np.float32), allow_pickle=False)


@dataclass
class Case:
    name: str
    path: Path
    what: str
    target: float
    build: object

    def ensure(self) -> None:
        if self.path.exists():
            return
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        print(f"  generating {self.path.name} ...", flush=True)
        self.build(tmp)
        tmp.rename(self.path)


CASES = [
    Case("small", DATA / "cold_small.pt", "torch.save of a small state dict (zip)", 3.0, make_small),
    Case("legacy", DATA / "legacy_5040.pt", "legacy torch.save, 5,040 tensors, ~190 MB", 3.0, make_legacy),
    Case("folder", DATA / "cold_folder", f"{4 * FOLDER_FILES} small files: .pt, legacy .bin, .pkl, .npy", 2.0,
         make_folder),
]


def warm(path: Path) -> None:
    for p in ([path] if path.is_file() else sorted(path.iterdir())):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


# -- timing -------------------------------------------------------------------------------------
def commands(case: Case) -> dict[str, list[str]]:
    return {"tensorsafe scan": [str(BIN / "tensorsafe"), "scan", str(case.path)],
            "picklescan -p": [str(BIN / "picklescan"), "-p", str(case.path)]}


FLOORS = {"python -c pass": [sys.executable, "-c", "pass"],
          "python -c 'import argparse'": [sys.executable, "-c", "import argparse"]}


def run_once(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and exit code of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=DATA)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.returncode


def time_all(cmds: dict[str, list[str]], reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each command, ``reps`` runs each, interleaved (order rotated each round)."""
    names = list(cmds)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        _, _, rc = run_once(cmds[n])  # untimed: fills the OS caches
        if rc != 0 and n.startswith("tensorsafe"):
            FAILURES.append(f"{' '.join(cmds[n])} exited {rc} on a benign input")
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            wall, used, _ = run_once(cmds[n])
            times[n].append(wall)
            cpu[n].append(used)
    return times, cpu


FAILURES: list[str] = []


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


# -- import graph ---------------------------------------------------------------------------------
def import_summary(top: int = 15) -> str:
    """``python -X importtime -c 'import tensorsafe.cli.main, tensorsafe.cli.scan'`` (the top level and the
    scan command's module, what ``tensorsafe scan`` imports): total, heavy packages, slowest modules."""
    code = f"import sys, tensorsafe.cli.main, tensorsafe.cli.scan; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                         capture_output=True, text=True, check=True)
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    total = sum(cum for _, cum, depth, name in rows if name in ("tensorsafe.cli.main", "tensorsafe.cli.scan"))
    ours = [r for r in rows if r[3].startswith("tensorsafe")]
    lines = [f"import tensorsafe.cli.main, tensorsafe.cli.scan: {total / 1000:.1f} ms cumulative, {len(rows)} "
             f"modules ({len(ours)} tensorsafe); heavy packages loaded: {out.stdout.strip()}",
             "  slowest modules by own time (us):"]
    lines += [f"    {own:7d} {cum:8d}  {name}" for own, cum, _, name in sorted(rows, reverse=True)[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=11, help="timed runs per tool and case (default 11)")
    ap.add_argument("--only", choices=[c.name for c in CASES], action="append", help="run only these cases")
    args = ap.parse_args(argv)
    for tool in ("tensorsafe", "picklescan"):
        if not (BIN / tool).exists():
            raise SystemExit(f"{BIN / tool} not found: pip install -e '.[bench]'")
    cases = [c for c in CASES if not args.only or c.name in args.only]
    # Bytecode as an install leaves it (pip compiles on install); without it, with
    # PYTHONDONTWRITEBYTECODE set, every run would compile each edited module from source.
    compileall.compile_dir(ROOT / "tensorsafe", quiet=1)
    for c in cases:
        c.ensure()
        warm(c.path)
    print(f"whole processes, {args.reps} runs each, median and min; {os.cpu_count()} CPUs\n")
    floors, floor_cpu = time_all(FLOORS, args.reps)
    for name, ts in floors.items():
        print(f"  floor  {name:26s} {ms(statistics.median(ts))}  min {ms(min(ts))}   "
              f"CPU {ms(statistics.median(floor_cpu[name]))}")
    targets = []
    for c in cases:
        times, cpu = time_all(commands(c), args.reps)
        ours, theirs = statistics.median(times["tensorsafe scan"]), statistics.median(times["picklescan -p"])
        ratio = theirs / ours
        ok = ratio >= c.target
        print(f"\n{c.name}: {c.what}")
        for name, ts in times.items():
            print(f"  {name:33s} {ms(statistics.median(ts))}  min {ms(min(ts))}   CPU {ms(statistics.median(cpu[name]))}")
        print(f"  picklescan / tensorsafe (median)  {ratio:8.2f}x   target >= {c.target:.0f}x  "
              f"{'met' if ok else 'MISSED'}   (min: {min(times['picklescan -p']) / min(times['tensorsafe scan']):.2f}x, "
              f"CPU: {statistics.median(cpu['picklescan -p']) / statistics.median(cpu['tensorsafe scan']):.2f}x)")
        targets.append((f"{c.name}: tensorsafe scan >= {c.target:.0f}x picklescan (wall median: {ratio:.2f}x)", ok))
    print()
    print(import_summary())
    return finish(targets, quick=False, failures=FAILURES)


if __name__ == "__main__":
    sys.exit(main())
