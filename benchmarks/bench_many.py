"""Files per second on a folder of many small mixed files: tensorsafe with one and N processes,
against picklescan's folder scan on the same folder.

    python benchmarks/bench_many.py                  # 1,000 files, 3 rounds, N = CPU count
    python benchmarks/bench_many.py --jobs 4 --rounds 5 --chunk-size 32

The folder (benchmarks/_data/many_files/, gitignored) is generated once: small torch zip
checkpoints, legacy torch files, raw pickles, numpy .npy, safetensors, text and JSON files, and a
few malicious pickles and checkpoints. Every tool runs in this one process, interleaved (the order
rotates each round) after the page cache was warmed, so they see the same cache. The ``--jobs N``
rows include starting the process pool, as a CLI run pays it. picklescan picks files by
extension and skips .npy, .safetensors, .txt and .json in a folder scan; the ``opened`` column
says how many files each tool judged. Nothing here unpickles a file under test.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import resource
import statistics
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "benchmarks" / "_data" / "many_files"
SYSTEM_PICKLE = b"\x80\x02cos\nsystem\n\x8c\x04true\x85R."
"""``os.system("true")``, written opcode by opcode (never built by pickling a live object)."""


# -- data ---------------------------------------------------------------------------------------
MIX = [  # (share of the folder, kind)
    (0.20, "torch-zip"), (0.10, "torch-legacy"), (0.20, "pickle"), (0.15, "npy"),
    (0.15, "safetensors"), (0.09, "text"), (0.10, "json"), (0.01, "malicious"),
]


def generate(folder: Path, count: int) -> None:
    """Write ``count`` mixed files into ``folder`` (deterministic; reused while the count matches)."""
    marker = folder.with_name(folder.name + ".json")
    if marker.exists() and json.loads(marker.read_text()).get("count") == count:
        return
    import numpy as np
    import torch  # only to write the data: the timed pool workers are forked without it
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.rglob("*"):
        if old.is_file():
            old.unlink()
    kinds = [kind for share, kind in MIX for _ in range(round(share * count))]
    kinds = (kinds + ["pickle"] * count)[:count]
    for i, kind in enumerate(kinds):
        sub = folder / f"repo{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        n = int(rng.integers(16, 4096))
        state = {f"layer{j}.weight": torch.from_numpy(rng.standard_normal(n).astype(np.float32))
                 for j in range(int(rng.integers(1, 8)))}
        if kind == "torch-zip":
            torch.save(state, sub / f"model{i}.pt")
        elif kind == "torch-legacy":
            torch.save(state, sub / f"model{i}.pth", _use_new_zipfile_serialization=False)
        elif kind == "pickle":
            data = {"step": i, "lr": 1e-4, "losses": rng.standard_normal(n // 16).tolist(), "name": f"run{i}"}
            (sub / f"state{i}.pkl").write_bytes(pickle.dumps(data, protocol=4))
        elif kind == "npy":
            np.save(sub / f"array{i}.npy", rng.standard_normal(n).astype(np.float32))
        elif kind == "safetensors":
            save_file({k: v.numpy() for k, v in state.items()}, str(sub / f"model{i}.safetensors"))
        elif kind == "text":
            (sub / f"README{i}.txt").write_text("A model card.\n" * int(rng.integers(1, 200)))
        elif kind == "json":
            (sub / f"config{i}.json").write_text(json.dumps({"hidden": n, "layers": list(range(n % 50))}))
        elif i % 2:
            (sub / f"evil{i}.pkl").write_bytes(SYSTEM_PICKLE)
        else:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("archive/data.pkl", SYSTEM_PICKLE)
                zf.writestr("archive/version", "3\n")
            (sub / f"evil{i}.pt").write_bytes(buf.getvalue())
    marker.write_text(json.dumps({"count": count}))


# -- tools (each returns (files judged, files failed)) -------------------------------------------
def tensorsafe_jobs(folder: Path, jobs: int, chunk_size: int) -> Callable[[], tuple[int, int]]:
    import tensorsafe
    from tensorsafe.batch import collect, scan_many

    def run() -> tuple[int, int]:
        if jobs == 1:
            report = tensorsafe.scan(folder)
        else:
            report = collect(scan_many(folder, jobs=jobs, chunk_size=chunk_size, ordered=True))
        return len(report.files), sum(fr.verdict != "clean" for fr in report.files)
    return run


def tensorsafe_files(paths: list[Path]) -> Callable[[], tuple[int, int]]:
    import tensorsafe

    def run() -> tuple[int, int]:
        report = tensorsafe.scan(paths)
        return len(report.files), sum(fr.verdict != "clean" for fr in report.files)
    return run


def picklescan_picks(files: list[Path]) -> list[Path]:
    """The files picklescan's folder scan opens (it picks by extension)."""
    from picklescan import scanner

    exts = scanner._zip_file_extensions | scanner._pickle_file_extensions | scanner._pytorch_file_extensions
    return sorted(p for p in files if p.suffix in exts)


def tensorsafe_cli(folder: Path, jobs: int) -> Callable[[], tuple[int, int]]:
    import contextlib
    import io

    from tensorsafe.cli.main import main

    def run() -> tuple[int, int]:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
            main(["scan", "--json", "--jobs", str(jobs), str(folder)])
        doc = json.loads(output.getvalue())
        return len(doc["files"]), sum(f["verdict"] != "clean" for f in doc["files"])
    return run


def picklescan_folder(folder: Path) -> Callable[[], tuple[int, int]]:
    from picklescan.scanner import scan_directory_path

    logging.getLogger("picklescan").setLevel(logging.CRITICAL)

    def run() -> tuple[int, int]:
        result = scan_directory_path(str(folder))
        return result.scanned_files, result.infected_files
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="N for the parallel rows")
    ap.add_argument("--chunk-size", type=int, default=16)
    args = ap.parse_args()

    started = time.perf_counter()
    generate(DATA, args.files)
    files = [p for p in DATA.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    for p in files:  # warm the page cache for every tool alike
        p.read_bytes()
    print(f"folder: {DATA} ({len(files):,} files, {total / 1e6:.1f} MB; "
          f"ready in {time.perf_counter() - started:.1f} s)")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
          f"(a shared machine: absolute figures vary, the ratios are what to read)")

    tools = [
        ("tensorsafe scan (library, jobs 1)", tensorsafe_jobs(DATA, 1, args.chunk_size)),
        (f"tensorsafe scan_many (library, jobs {args.jobs})", tensorsafe_jobs(DATA, args.jobs, args.chunk_size)),
        (f"tensorsafe scan --jobs {args.jobs} (CLI, --json)", tensorsafe_cli(DATA, args.jobs)),
        ("picklescan scan_directory_path", picklescan_folder(DATA)),
        ("tensorsafe scan, jobs 1, picklescan's files", tensorsafe_files(picklescan_picks(files))),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    cpu: dict[str, list[float]] = {name: [] for name, _ in tools}
    counts: dict[str, tuple[int, int]] = {}
    for r in range(args.rounds):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for name, run in order:
            c0, t0 = cpu_seconds(), time.perf_counter()
            counts[name] = run()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds() - c0)

    base = statistics.median(times[tools[0][0]])
    print(f"\n{'tool':<46}{'median s':>10}{'min s':>8}{'files/s':>10}{'CPU s':>8}{'opened':>8}{'flagged':>9}"
          f"{'vs jobs 1':>11}")
    for name, _ in tools:
        med = statistics.median(times[name])
        opened, flagged = counts[name]
        print(f"{name:<46}{med:>10.3f}{min(times[name]):>8.3f}{opened / med:>10.0f}"
              f"{statistics.median(cpu[name]):>8.2f}{opened:>8}{flagged:>9}{base / med:>10.2f}x")
    ps = statistics.median(times[tools[3][0]])
    for name, _ in tools[:3]:
        print(f"{name} vs picklescan, time for the whole folder: {ps / statistics.median(times[name]):.2f}x")
    print(f"on the {counts[tools[4][0]][0]} files picklescan opens, tensorsafe jobs 1 vs picklescan: "
          f"{ps / statistics.median(times[tools[4][0]]):.2f}x (above 1: tensorsafe faster)")
    print("files/s is files judged per second; 'CPU s' is user+system time of this process and its "
          "workers (what the run would cost on idle cores); 'opened' is how many files each tool judged; "
          "'flagged' is files not clean (tensorsafe: fail or error; picklescan: infected)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def cpu_seconds() -> float:
    """User + system time of this process and of its reaped children (the pool's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
