"""Scan speed against picklescan and modelscan, with the disk floor beside them.

    python benchmarks/bench_scan.py            # ~2 GB zip, ~560 MB training zip, ~190 MB legacy
    python benchmarks/bench_scan.py --quick    # small files, for a smoke run (seconds)
    python benchmarks/bench_scan.py --profile  # also cProfile tensorsafe on each file

Data files are generated once into benchmarks/_data/ (gitignored) with torch.save and reused.
Every tool is timed in this one process, interleaved (the order rotates each round), after the
page cache has been warmed by reading each file once, so all tools see the same cache state.
Ratios are the peer's median over ours (above 1 means we are faster). The disk floor rows read
the pickle bytes alone and the whole file once: a scanner that never reads tensor data costs
about the pickle, not the file. Nothing here unpickles a file under test.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import os
import pickletools
import pstats
import resource
import statistics
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from _targets import finish  # benchmarks/_targets.py (a script's folder is on sys.path)

DATA = Path(__file__).resolve().parent / "_data"
TARGET_RATIO = 3.0
"""The issue's target: at least this many times faster than picklescan on the same files."""
PAGE = resource.getpagesize()


# -- data: an SD v1-shaped state dict, a training checkpoint and a legacy checkpoint ----------------
def sd_like_shapes(div: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Key names and shapes of an SD v1 checkpoint (UNet, VAE, CLIP text encoder, schedule buffers).

    ``div`` shrinks every channel count (the key set stays the same): 1 gives ~1.07 G parameters.
    """
    out: list[tuple[str, tuple[int, ...]]] = []

    def c(n: int) -> int:
        return max(1, n // div)

    def add(name: str, *shape: int) -> None:
        out.append((name, shape))

    def norm(p: str, ch: int) -> None:
        add(f"{p}.weight", c(ch))
        add(f"{p}.bias", c(ch))

    def conv(p: str, o: int, i: int, k: int = 3) -> None:
        add(f"{p}.weight", c(o), c(i), k, k)
        add(f"{p}.bias", c(o))

    def linear(p: str, o: int, i: int, bias: bool = True) -> None:
        add(f"{p}.weight", c(o), c(i))
        if bias:
            add(f"{p}.bias", c(o))

    u = "model.diffusion_model"

    def res(p: str, i: int, o: int) -> None:
        norm(f"{p}.in_layers.0", i)
        conv(f"{p}.in_layers.2", o, i)
        linear(f"{p}.emb_layers.1", o, 1280)
        norm(f"{p}.out_layers.0", o)
        conv(f"{p}.out_layers.3", o, o)
        if i != o:
            conv(f"{p}.skip_connection", o, i, 1)

    def attn(p: str, ch: int) -> None:
        norm(f"{p}.norm", ch)
        conv(f"{p}.proj_in", ch, ch, 1)
        b = f"{p}.transformer_blocks.0"
        for a in ("attn1", "attn2"):
            linear(f"{b}.{a}.to_q", ch, ch, bias=False)
            linear(f"{b}.{a}.to_k", ch, ch if a == "attn1" else 768, bias=False)
            linear(f"{b}.{a}.to_v", ch, ch if a == "attn1" else 768, bias=False)
            linear(f"{b}.{a}.to_out.0", ch, ch)
        linear(f"{b}.ff.net.0.proj", ch * 8, ch)
        linear(f"{b}.ff.net.2", ch, ch * 4)
        for n in ("norm1", "norm2", "norm3"):
            norm(f"{b}.{n}", ch)
        conv(f"{p}.proj_out", ch, ch, 1)

    linear(f"{u}.time_embed.0", 1280, 320)
    linear(f"{u}.time_embed.2", 1280, 1280)
    conv(f"{u}.input_blocks.0.0", 320, 4)
    chans = [(320, 320, True), (320, 320, True), None, (320, 640, True), (640, 640, True), None,
             (640, 1280, True), (1280, 1280, True), None, (1280, 1280, False), (1280, 1280, False)]
    for n, spec in enumerate(chans, start=1):
        if spec is None:
            ch = chans[n - 2][1]
            conv(f"{u}.input_blocks.{n}.0.op", ch, ch)
            continue
        i, o, with_attn = spec
        res(f"{u}.input_blocks.{n}.0", i, o)
        if with_attn:
            attn(f"{u}.input_blocks.{n}.1", o)
    res(f"{u}.middle_block.0", 1280, 1280)
    attn(f"{u}.middle_block.1", 1280)
    res(f"{u}.middle_block.2", 1280, 1280)
    outs = [(2560, 1280, False), (2560, 1280, False), (2560, 1280, False), (2560, 1280, True), (2560, 1280, True),
            (1920, 1280, True), (1920, 640, True), (1280, 640, True), (960, 640, True), (960, 320, True),
            (640, 320, True), (640, 320, True)]
    for n, (i, o, with_attn) in enumerate(outs):
        res(f"{u}.output_blocks.{n}.0", i, o)
        if with_attn:
            attn(f"{u}.output_blocks.{n}.1", o)
        if n in (2, 5, 8):
            conv(f"{u}.output_blocks.{n}.{2 if with_attn else 1}.conv", o, o)
    norm(f"{u}.out.0", 320)
    conv(f"{u}.out.2", 4, 320)

    v = "first_stage_model"

    def vres(p: str, i: int, o: int) -> None:
        norm(f"{p}.norm1", i)
        conv(f"{p}.conv1", o, i)
        norm(f"{p}.norm2", o)
        conv(f"{p}.conv2", o, o)
        if i != o:
            conv(f"{p}.nin_shortcut", o, i, 1)

    def vattn(p: str, ch: int) -> None:
        norm(f"{p}.norm", ch)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}.{n}", ch, ch, 1)

    levels = (128, 256, 512, 512)
    conv(f"{v}.encoder.conv_in", 128, 3)
    prev = 128
    for lvl, ch in enumerate(levels):
        for blk in range(2):
            vres(f"{v}.encoder.down.{lvl}.block.{blk}", prev, ch)
            prev = ch
        if lvl < 3:
            conv(f"{v}.encoder.down.{lvl}.downsample.conv", ch, ch)
    for side in ("encoder", "decoder"):
        vres(f"{v}.{side}.mid.block_1", 512, 512)
        vattn(f"{v}.{side}.mid.attn_1", 512)
        vres(f"{v}.{side}.mid.block_2", 512, 512)
    norm(f"{v}.encoder.norm_out", 512)
    conv(f"{v}.encoder.conv_out", 8, 512)
    conv(f"{v}.decoder.conv_in", 512, 4)
    prev = 512
    for lvl in reversed(range(4)):
        ch = levels[lvl]
        for blk in range(3):
            vres(f"{v}.decoder.up.{lvl}.block.{blk}", prev, ch)
            prev = ch
        if lvl > 0:
            conv(f"{v}.decoder.up.{lvl}.upsample.conv", ch, ch)
    norm(f"{v}.decoder.norm_out", 128)
    conv(f"{v}.decoder.conv_out", 3, 128)
    conv(f"{v}.quant_conv", 8, 8, 1)
    conv(f"{v}.post_quant_conv", 4, 4, 1)

    t = "cond_stage_model.transformer.text_model"
    add(f"{t}.embeddings.token_embedding.weight", 49408, c(768))
    add(f"{t}.embeddings.position_embedding.weight", 77, c(768))
    for layer in range(12):
        p = f"{t}.encoder.layers.{layer}"
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{p}.self_attn.{n}", 768, 768)
        norm(f"{p}.layer_norm1", 768)
        linear(f"{p}.mlp.fc1", 3072, 768)
        linear(f"{p}.mlp.fc2", 768, 3072)
        norm(f"{p}.layer_norm2", 768)
    norm(f"{t}.final_layer_norm", 768)
    for n in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
              "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
              "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
              "posterior_mean_coef1", "posterior_mean_coef2"):
        add(n, 1000)
    return out


def layer_shapes(layers: int, width: int) -> list[tuple[str, tuple[int, ...]]]:
    """A plain transformer stack: 12 tensors per layer."""
    out = []
    for n in range(layers):
        p = f"layers.{n}"
        for proj in ("q", "k", "v", "o"):
            out.append((f"{p}.attn.{proj}.weight", (width, width)))
        out += [(f"{p}.mlp.fc1.weight", (4 * width, width)), (f"{p}.mlp.fc1.bias", (4 * width,)),
                (f"{p}.mlp.fc2.weight", (width, 4 * width)), (f"{p}.mlp.fc2.bias", (width,))]
        for ln in ("ln1", "ln2"):
            out += [(f"{p}.{ln}.weight", (width,)), (f"{p}.{ln}.bias", (width,))]
    return out


def make_sd_zip(path: Path, div: int) -> None:
    import torch

    sd = {}
    for name, shape in sd_like_shapes(div):
        dtype = torch.float32 if len(shape) == 1 and shape[0] == 1000 else torch.float16
        sd[name] = torch.zeros(shape, dtype=dtype)
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    torch.save({"epoch": 6, "global_step": 470000, "state_dict": sd}, path)


def make_training_zip(path: Path, layers: int, width: int) -> None:
    """Weights plus AdamW state: three tensors per parameter, nested dicts (a pickle-heavy zip)."""
    import torch

    shapes = layer_shapes(layers, width)
    model = {name: torch.zeros(shape) for name, shape in shapes}
    state = {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros(shape), "exp_avg_sq": torch.zeros(shape)}
             for i, (_, shape) in enumerate(shapes)}
    groups = [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
               "foreach": None, "maximize": False, "capturable": False, "differentiable": False,
               "fused": None, "params": list(range(len(shapes)))}]
    torch.save({"model": model, "optimizer": {"state": state, "param_groups": groups}, "epoch": 3,
                "step": 120000}, path)


def make_legacy(path: Path, layers: int, width: int) -> None:
    import torch

    sd = {name: torch.zeros(shape) for name, shape in layer_shapes(layers, width)}
    torch.save(sd, path, _use_new_zipfile_serialization=False)


@dataclass
class Case:
    name: str
    filename: str
    what: str
    build: Callable[[Path], None]

    @property
    def path(self) -> Path:
        return DATA / self.filename


FULL_CASES = [
    Case("sd-zip-2GB", "sd_like_fp16.ckpt", "SD v1-shaped state dict, fp16, 1,149 tensors (torch.save zip)",
         lambda p: make_sd_zip(p, 1)),
    Case("train-zip-560MB", "train_adamw.pt", "training checkpoint: 5,040 weights + AdamW state, ~20k tensors (zip)",
         lambda p: make_training_zip(p, 420, 96)),
    Case("legacy-190MB", "legacy_5040.pt", "legacy torch.save (no zip), 5,040 tensors",
         lambda p: make_legacy(p, 420, 96)),
]
QUICK_CASES = [
    Case("sd-zip-quick", "quick_sd_like.ckpt", "SD v1-shaped key set, channels / 32 (zip)",
         lambda p: make_sd_zip(p, 32)),
    Case("train-zip-quick", "quick_train_adamw.pt", "training checkpoint, 60 layers + AdamW state (zip)",
         lambda p: make_training_zip(p, 60, 16)),
    Case("legacy-quick", "quick_legacy.pt", "legacy torch.save, 720 tensors",
         lambda p: make_legacy(p, 60, 16)),
]


def ensure(case: Case) -> None:
    if case.path.exists():
        return
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = case.path.with_name(case.path.name + ".tmp")
    started = time.perf_counter()
    print(f"  generating {case.path.name} ...", end="", flush=True)
    case.build(tmp)
    tmp.rename(case.path)
    print(f" {case.path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - started:.0f} s", flush=True)


# -- the pickle's extent, found by walking opcodes (never unpickling) -----------------------------
def pickle_extent(path: Path) -> tuple[str, int]:
    """(what, bytes): the zip's data.pkl member size, or the legacy file's leading pickles."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            return name, zf.getinfo(name).file_size
    with open(path, "rb") as fh:
        for _ in range(5):  # magic number, protocol, sys info, main object, storage keys
            for _op in pickletools.genops(fh):
                pass
        return "5 leading pickles", fh.tell()


def read_pickle_bytes(path: Path, size: int | None = None) -> bytes:
    """The pickle bytes alone: the zip's data.pkl, or the first ``size`` bytes of a legacy file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    if size is None:
        size = pickle_extent(path)[1]
    with open(path, "rb") as fh:
        return fh.read(size)


# -- the tools -------------------------------------------------------------------------------------
def tensorsafe_tool():
    import tensorsafe

    def run(path: Path) -> str:
        report = tensorsafe.scan(path)
        rules = sorted({f.rule_id for f in report.findings})
        return report.verdict + (f" ({', '.join(rules)})" if rules else "")
    return run


def tensorsafe_walk_tool(pickle_bytes: bytes):
    """Our opcode walker alone over the pickle bytes, already in memory: the pickle's cost."""
    from tensorsafe.pickles.walker import walk

    def run(path: Path) -> str:
        pos, n = 0, 0
        while pos < len(pickle_bytes):
            trace = walk(pickle_bytes, pos)
            n += trace.opcodes
            if not trace.stopped:
                return f"walk error: {trace.error}"
            pos = trace.end
        return f"{n:,} opcodes"
    return run


def picklescan_tool():
    from picklescan.scanner import scan_file_path

    logging.getLogger("picklescan").setLevel(logging.CRITICAL)

    def run(path: Path) -> str:
        r = scan_file_path(str(path))
        if r.scan_err:
            return f"error ({r.issues_count} issues)"
        if r.issues_count or r.infected_files:
            bad = sorted({f"{g.module}.{g.name}" for g in r.globals if g.safety.value != "innocuous"})
            return f"fail: {', '.join(bad)}"
        return "clean"
    return run


def modelscan_tool():
    from modelscan.modelscan import ModelScan

    logging.getLogger("modelscan").setLevel(logging.CRITICAL)

    def run(path: Path) -> str:
        out = ModelScan().scan(path)
        s = out["summary"]
        issues, errors = s["total_issues"], out["errors"]
        scanned = s["scanned"]["total_scanned"]
        if errors:
            return f"error: {errors[0].get('description', errors[0])} ({scanned} scanned)"
        if issues:
            ops = sorted({f"{i.get('module')}.{i.get('operator')}" for i in out["issues"]})
            return f"fail: {', '.join(ops)}"
        return f"clean ({scanned} scanned, {s['skipped']['total_skipped']} skipped)"
    return run


def genops_tool(pickle_bytes: bytes):
    """The stdlib disassembler picklescan and modelscan build on, over the same bytes (parse only)."""
    def run(path: Path) -> str:
        fh = io.BytesIO(pickle_bytes)
        n = 0
        while fh.tell() < len(pickle_bytes):
            for _op in pickletools.genops(fh):
                n += 1
        return f"{n:,} opcodes"
    return run


def read_pickle_tool(size: int):
    def run(path: Path) -> str:
        return f"{len(read_pickle_bytes(path, size)):,} bytes"
    return run


def read_file_tool():
    buf = bytearray(16 << 20)
    view = memoryview(buf)

    def run(path: Path) -> str:
        total = 0
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
        return f"{total:,} bytes"
    return run


# -- measuring -------------------------------------------------------------------------------------
def io_counters() -> tuple[int, int]:
    """(bytes read through read() syscalls, page faults): what a run touched of the file."""
    rchar = 0
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                rchar = int(line.split()[1])
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return rchar, ru.ru_minflt + ru.ru_majflt


def _io_overhead() -> int:
    """What reading /proc/self/io itself adds to rchar."""
    first = io_counters()
    return io_counters()[0] - first[0]


@dataclass
class Row:
    label: str
    kind: str  # "ours", "peer", "ref"
    run: Callable[[Path], str]
    times: list[float]
    verdict: str = ""
    read_bytes: int = 0
    faults: int = 0
    first_run: float = 0.0


SLOW_SECONDS = 5.0
SLOW_RUNS = 3
"""A tool whose first run takes longer than SLOW_SECONDS is timed only SLOW_RUNS times."""


def time_case(case: Case, reps: int) -> list[Row]:
    path = case.path
    read_file_tool()(path)  # warm the page cache: every tool sees the whole file cached
    _, pickle_size = pickle_extent(path)
    pickle_bytes = read_pickle_bytes(path, pickle_size)
    rows = [
        Row("tensorsafe.scan", "ours", tensorsafe_tool(), []),
        Row("picklescan.scan_file_path", "peer", picklescan_tool(), []),
        Row("modelscan ModelScan().scan", "peer", modelscan_tool(), []),
        Row("  ref: tensorsafe walk(pickle bytes)", "ref", tensorsafe_walk_tool(pickle_bytes), []),
        Row("  ref: pickletools.genops(pickle)", "ref", genops_tool(pickle_bytes), []),
        Row("  floor: read pickle bytes", "ref", read_pickle_tool(pickle_size), []),
        Row("  floor: read whole file once", "ref", read_file_tool(), []),
    ]
    overhead = _io_overhead()
    for row in rows:  # untimed: a first run (imports, verdict), then a second for the I/O columns
        before = io_counters()
        started = time.perf_counter()
        row.verdict = row.run(path)
        row.first_run = time.perf_counter() - started
        after = io_counters()
        if row.first_run <= SLOW_SECONDS:  # a slow tool keeps the first run's counts
            before = io_counters()
            row.run(path)
            after = io_counters()
        row.read_bytes, row.faults = max(0, after[0] - before[0] - overhead), after[1] - before[1]
        if row.kind == "peer" and row.read_bytes < pickle_size and row.faults * PAGE < pickle_size:
            row.verdict += f" -- NOTE: read {fmt_bytes(row.read_bytes)} of a {fmt_bytes(pickle_size)} pickle"
    for rep in range(reps):
        k = rep % len(rows)
        for row in rows[k:] + rows[:k]:
            if row.first_run > SLOW_SECONDS and len(row.times) >= SLOW_RUNS:
                continue
            gc.collect()
            started = time.perf_counter()
            row.run(path)
            row.times.append(time.perf_counter() - started)
    return rows


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:9.1f} ms" if seconds < 10 else f"{seconds:9.2f} s "


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def print_case(case: Case, rows: list[Row], reps: int) -> None:
    size = case.path.stat().st_size
    what, pkl = pickle_extent(case.path)
    print(f"\n== {case.name}: {case.path.name}, {fmt_bytes(size)} on disk; pickle ({what}) {fmt_bytes(pkl)}")
    print(f"   {case.what}; {reps} interleaved runs, page cache warm")
    ours, ours_min = statistics.median(rows[0].times), min(rows[0].times)
    print(f"   {'tool':<38}{'median':>12}{'min':>12}{'x ours':>9}{'min x':>8}  {'read()':>9}{'faults':>8}  verdict")
    for row in rows:
        med = statistics.median(row.times)
        runs = f" ({len(row.times)} runs)" if len(row.times) != reps else ""
        print(f"   {row.label:<38}{fmt_s(med):>12}{fmt_s(min(row.times)):>12}{med / ours:8.2f}x"
              f"{min(row.times) / ours_min:7.2f}x  {fmt_bytes(row.read_bytes):>9}{row.faults:>8,}  "
              f"{row.verdict}{runs}")


def summary(results: list[tuple[Case, list[Row]]]) -> list[tuple[str, bool]]:
    print("\n== summary (peer median / tensorsafe median; target: picklescan >= "
          f"{TARGET_RATIO:g}x; tensorsafe / pickle walk ~ 1 means tensor data costs nothing)")
    print(f"   {'file':<18}{'size':>10}{'tensorsafe':>13}{'picklescan':>12}{'(min)':>8}{'modelscan':>11}"
          f"{'scan/walk':>11}{'scan/read file':>16}")
    targets = []
    for case, rows in results:
        ours = statistics.median(rows[0].times)
        ps, ms, walk, whole = (statistics.median(r.times) for r in (rows[1], rows[2], rows[3], rows[6]))
        ps_min = min(rows[1].times) / min(rows[0].times)
        targets.append((f"{case.name}: picklescan / tensorsafe = {ps / ours:.2f}x (target >= {TARGET_RATIO:g}x)",
                        ps / ours >= TARGET_RATIO))
        print(f"   {case.name:<18}{fmt_bytes(case.path.stat().st_size):>10}{fmt_s(ours):>13}{ps / ours:>11.2f}x"
              f"{ps_min:>7.2f}x{ms / ours:>10.2f}x{ours / walk:>10.2f}x{ours / whole:>15.3f}x")
    return targets


PHASES = [
    ("zip: open_zip (central directory + local headers)", "zip.py", "open_zip"),
    ("  central directory (zip_directory)", "zip_directory.py", "read_directory"),
    ("  local header checks, one per member", "zip.py", "_local_member"),
    ("zip: member_span (CRC of the members read)", "zip.py", "member_span"),
    ("opcode walker", "walker.py", "walk"),
    ("judge_trace (policy on imports and calls)", "judge.py", "judge_trace"),
    ("legacy: storage headers after the pickles (own time)", "pickle_stream.py", "scan_legacy_rest"),
]
"""Where a scan's time goes, read from cProfile's cumulative times (own time where the label says
so; names that are absent are skipped)."""


def profile_case(case: Case, top: int) -> None:
    import tensorsafe

    tensorsafe.scan(case.path)  # imports and page cache
    prof = cProfile.Profile()
    prof.enable()
    tensorsafe.scan(case.path)
    prof.disable()
    stats = pstats.Stats(prof)
    total = max(v[3] for v in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\n== cProfile: tensorsafe.scan({case.path.name}): {total * 1e3:.0f} ms under the profiler "
          "(which inflates call-heavy code such as the walker)")
    for label, filename, func in PHASES:
        field = 2 if "own time" in label else 3
        cum = sum(v[field] for (f, _, name), v in stats.stats.items()  # type: ignore[attr-defined]
                  if name == func and f.endswith(filename))
        if cum:
            print(f"   {label:<52}{cum * 1e3:9.1f} ms {cum / total * 100:5.1f}%")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"   top {top} by own time:")
    print("\n".join("   " + line for line in out.getvalue().splitlines()[6:] if line.strip()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small files (a smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per tool (default 7, quick 3)")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--profile", action="store_true", help="also cProfile tensorsafe on each file")
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    cases = [c for c in (QUICK_CASES if args.quick else FULL_CASES) if not args.only or args.only in c.name]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; data in {DATA}")
    for case in cases:
        ensure(case)
    results = []
    for case in cases:
        rows = time_case(case, reps)
        print_case(case, rows, reps)
        results.append((case, rows))
    targets = summary(results)
    if args.profile:
        for case in cases:
            profile_case(case, 12)
    return finish(targets, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
