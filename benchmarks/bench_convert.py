"""Conversion speed and peak memory next to a plain copy (the disk floor) and to diffusers.

    python benchmarks/bench_convert.py                     # SD1.5 (~2.1 GB) and SDXL (~6.9 GB), fp16
    python benchmarks/bench_convert.py --models sd15       # one model
    python benchmarks/bench_convert.py --quick             # tiny models: a smoke run in seconds
    python benchmarks/bench_convert.py --to-safetensors --size-mb 4096   # .ckpt -> .safetensors vs the Hub bot

Inputs are single-file checkpoints with the real SD1.5 / SDXL-base key sets and shapes and random
fp16 weights, written once into benchmarks/_data/ (gitignored) and reused: the diffusers key sets
come from models built on torch's ``meta`` device (no weights in memory), tensorsafe's own
reverse key map turns them into the single-file layout, and the streaming writer writes random
bytes a piece at a time; the same weights are also written by torch (a Lightning-style ``torch.save``
``.ckpt``) and by ``safetensors.torch.save_file`` (as diffusers' own conversion script and the UIs write
single files), so tensorsafe is also timed on files it did not write. A diffusers folder made from each file by ``tensorsafe convert`` is kept
beside it: the input of the reverse conversion, and the ``config=`` folder diffusers needs offline.

Every measured command is its own subprocess under ``/usr/bin/time -v``, so the peak RSS is that
command's own. The commands are run interleaved, the order rotated each round; before each run
its inputs are read once (a warm page cache, never dropped) and its outputs from the run before
are deleted, then ``sync`` (untimed) so that no write-back of an earlier run lands in a later one.
The SD runs unpickle nothing: every file is safetensors. ``--to-safetensors`` times the Hub bot's
method, whose ``torch.load(weights_only=True)`` reads only the checkpoint this script wrote.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _targets import finish  # benchmarks/_targets.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "_data"
WORK = DATA / "_convert_work"
TIME = "/usr/bin/time"
MB = 1 << 20

COPY_TARGET = 1.5        # ours within this many times the plain copy's wall time
DIFFUSERS_TARGET = 5.0   # ours at least this many times faster than diffusers
RSS_TARGET_MB = 256      # ours under this peak RSS whatever the model size

# -- the models: real SD1.5 and SDXL-base configs (docs/single-file.md §8), and tiny ones for --quick -------
CROSS, CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
SD_BLOCKS = dict(down_block_types=(CROSS, CROSS, CROSS, "DownBlock2D"), up_block_types=("UpBlock2D", CROSS_UP,
                                                                                         CROSS_UP, CROSS_UP))
XL_BLOCKS = dict(down_block_types=("DownBlock2D", CROSS, CROSS), up_block_types=(CROSS_UP, CROSS_UP, "UpBlock2D"),
                 use_linear_projection=True, addition_embed_type="text_time")
VIT_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             hidden_act="quick_gelu", projection_dim=768)
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
             projection_dim=1280)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)


@dataclass(frozen=True)
class Model:
    name: str
    pipeline: str
    unet: dict
    vae: dict
    text_encoders: dict  # component -> CLIPTextConfig kwargs


MODELS = {
    "sd15": Model("sd15", "StableDiffusionPipeline",
                  dict(SD_BLOCKS, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                       attention_head_dim=8), VAE, {"text_encoder": VIT_L}),
    "sdxl": Model("sdxl", "StableDiffusionXLPipeline",
                  dict(XL_BLOCKS, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                       cross_attention_dim=2048, attention_head_dim=(5, 10, 20), addition_time_embed_dim=256,
                       projection_class_embeddings_input_dim=2816, sample_size=128),
                  dict(VAE, scaling_factor=0.13025, sample_size=1024),
                  {"text_encoder": VIT_L, "text_encoder_2": BIG_G}),
}
TINY_TE = dict(intermediate_size=67, num_hidden_layers=2, num_attention_heads=4)
TINY_VAE = dict(VAE, block_out_channels=(32, 32, 64, 64))
QUICK = {
    "sd15": Model("sd15", "StableDiffusionPipeline",
                  dict(SD_BLOCKS, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=8,
                       sample_size=8), TINY_VAE, {"text_encoder": dict(TINY_TE, hidden_size=32, hidden_act="quick_gelu",
                                                                         projection_dim=32)}),
    "sdxl": Model("sdxl", "StableDiffusionXLPipeline",
                  dict(XL_BLOCKS, block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 2, 3),
                       cross_attention_dim=72, attention_head_dim=(1, 2, 2), addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=6 * 8 + 16, sample_size=8),
                  TINY_VAE, {"text_encoder": dict(TINY_TE, hidden_size=32, hidden_act="quick_gelu", projection_dim=32),
                             "text_encoder_2": dict(TINY_TE, hidden_size=40, hidden_act="gelu", projection_dim=16)}),
}


# -- inputs: a single file with random fp16 weights, written a piece at a time --------------------
def orig_layout(model: Model) -> tuple[dict[str, tuple[int, ...]], object]:
    """The single-file key -> shape set of ``model`` (no weights are allocated: meta device)."""
    import logging
    import warnings

    import diffusers
    import torch
    import transformers

    from tensorsafe.converter import families, keymaps

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**model.unet)
        mods = {"unet": unet, "vae": diffusers.AutoencoderKL(**model.vae)}
        for component, kw in model.text_encoders.items():
            cls = transformers.CLIPTextModelWithProjection if component == "text_encoder_2" else \
                transformers.CLIPTextModel
            mods[component] = cls(transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                                              bos_token_id=0, eos_token_id=2, pad_token_id=1, **kw))
    sbc = {}
    for component, module in mods.items():
        shapes = {}
        for key, value in module.state_dict().items():
            if component.startswith("text_encoder") and not key.startswith(("text_model.", "text_projection")):
                key = "text_model." + key  # transformers 5 drops the prefix; the folder layout has it
            shapes[key] = tuple(value.shape)
        sbc[component] = shapes
    detection = families.detect_folder({}, {"unet": dict(unet.config)}, sbc)
    plan = keymaps.plan_to_single_file(sbc, detection)
    assert not plan.unmapped, plan.unmapped[:5]
    return {t.key: t.shape for t in plan.targets}, detection


def random_fp16(nbytes: int, seed: int):
    """Pieces of random, finite fp16 values (|x| < 2: the top exponent bit cleared), 16 MiB at a time."""
    import numpy as np

    def pieces():
        rng = np.random.default_rng(seed)
        left = nbytes
        while left:
            n = min(left, 16 * MB)
            yield memoryview(np.frombuffer(rng.bytes(n), dtype="<u2") & np.uint16(0xBFFF)).cast("B")
            left -= n
    return pieces


def ensure_single_file(model: Model, tag: str) -> Path:
    from tensorsafe.converter.writer import OutTensor, write_safetensors
    from tensorsafe.tensors import DTYPES

    path = DATA / f"{tag}_random_fp16.safetensors"
    if path.is_file():
        return path
    started = time.perf_counter()
    shapes, _ = orig_layout(model)
    tensors = [OutTensor(key, DTYPES["F16"], shape, random_fp16(2 * _numel(shape), seed))
               for seed, (key, shape) in enumerate(sorted(shapes.items()))]
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    write_safetensors(tmp, tensors, {"format": "pt"})
    os.replace(tmp, path)
    print(f"  wrote {path.name}: {len(tensors):,} tensors, {path.stat().st_size / 1e9:.2f} GB "
          f"in {time.perf_counter() - started:.0f} s")
    return path


def ensure_third_party(single: Path) -> dict[str, Path]:
    """The same weights as other tools write them, so that tensorsafe is timed on files it did not write:
    a Lightning-style ``.ckpt`` (``torch.save`` of ``{"state_dict": ..., "global_step": ...}``, a zip
    pickle: what civitai-style sites serve) and a ``.safetensors`` file from ``safetensors.torch.save_file``
    of a torch state dict (how diffusers' ``convert_diffusers_to_original_stable_diffusion.py`` and the UIs
    write single files). Written once from the benchmark's own safetensors file (no pickle is read)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = {"torch.save .ckpt": single.with_name(single.stem + "_torch_save.ckpt"),
           "save_file .safetensors": single.with_name(single.stem + "_save_file.safetensors")}
    if all(p.is_file() for p in out.values()):
        return out
    started = time.perf_counter()
    state = load_file(single)
    for label, path in out.items():
        if path.is_file():
            continue
        tmp = path.with_name(path.name + ".partial")
        if path.suffix == ".ckpt":
            torch.save({"state_dict": state, "global_step": 470000, "epoch": 6}, tmp)
        else:
            save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    del state
    print(f"  wrote {', '.join(p.name for p in out.values())} with torch and safetensors "
          f"in {time.perf_counter() - started:.0f} s")
    return out


def ensure_folder(single: Path) -> Path:
    """The diffusers folder of ``single``, made by tensorsafe (reverse input, diffusers' config=)."""
    from tensorsafe.converter.run import convert

    folder = single.with_name(single.name.replace(".safetensors", "_diffusers"))
    if (folder / "model_index.json").is_file():
        return folder
    result = convert(single, folder, overwrite=True)
    print(f"  made {folder.name}/ with tensorsafe convert ({result.family}, {result.seconds:.0f} s)")
    return folder


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- measuring one command -------------------------------------------------------------------------
DIFFUSERS_CHILD = r"""
import sys
if sys.argv[1] == "off":
    sys.modules["accelerate"] = None  # importlib.util.find_spec("accelerate") is now None: both libraries see none
import torch, diffusers, transformers
from diffusers.utils import is_accelerate_available
print("ACCELERATE", is_accelerate_available(), transformers.utils.is_accelerate_available(), flush=True)
pipe = getattr(diffusers, sys.argv[2]).from_single_file(sys.argv[3], config=sys.argv[4], local_files_only=True,
                                                        torch_dtype=torch.float16)
pipe.save_pretrained(sys.argv[5], safe_serialization=True)
if sys.argv[6:] == ["sync"]:  # durable, as our output is: write-back of what it wrote, counted
    import os
    os.sync()
"""


@dataclass
class Command:
    label: str
    argv: list[str]
    inputs: list[Path]
    outputs: list[Path]
    reps: int
    expect: str | None = None   # a line the command must print (the accelerate check)
    kind: str = "other"         # copy, copy+sync, ours, reverse, diffusers
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)     # user + system seconds
    rounds: list[int] = field(default_factory=list)
    failed: str | None = None

    def done(self) -> bool:
        return self.failed is not None or len(self.walls) >= self.reps

    def per_round(self, other: "Command") -> float:
        """Median over the rounds both ran of this wall time over the other's (robust to drift)."""
        theirs = dict(zip(other.rounds, other.walls))
        return med([w / theirs[r] for r, w in zip(self.rounds, self.walls) if r in theirs])


def warm(paths: list[Path]) -> None:
    """Read every input once so the timed run finds it in the page cache."""
    for p in paths:
        for f in ([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())):
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 * MB):
                    pass


def clean(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    subprocess.run(["sync"], check=True)
    settle()


def settle(quiet_s: float = 1.0, limit_s: float = 60.0) -> None:
    """Wait until the data disk has been idle for ``quiet_s`` (write-back and, on a ``discard``
    mount, the TRIM of deleted outputs otherwise land in the next timed run)."""
    dev = os.stat(DATA).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    if not stat.exists():
        time.sleep(quiet_s)
        return
    def sample() -> tuple[int, ...]:
        f = [int(x) for x in stat.read_text().split()]
        return f[8], f[6], *(f[13:14] or [0])  # in flight, sectors written, sectors discarded
    deadline, last, quiet = time.monotonic() + limit_s, sample(), 0.0
    while quiet < quiet_s and time.monotonic() < deadline:
        time.sleep(0.25)
        now = sample()
        quiet = quiet + 0.25 if now[0] == 0 and now[1:] == last[1:] else 0.0
        last = now


def run_once(cmd: Command, rnd: int, env: dict[str, str]) -> None:
    clean(cmd.outputs)
    warm(cmd.inputs)
    started = time.perf_counter()
    proc = subprocess.run([TIME, "-v", *cmd.argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    clean(cmd.outputs)
    if proc.returncode != 0 or (cmd.expect is not None and cmd.expect not in proc.stdout):
        why = f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode in (137, -9) else "")
        if proc.returncode == 0:
            why = f"expected {cmd.expect!r} in its output, got {proc.stdout[:200]!r}"
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        print(f"    {cmd.label:<34} FAILED: {why}", flush=True)
        cmd.failed = why
        return

    def field_of(name: str) -> float:
        m = re.search(rf"{re.escape(name)}: ([\d.]+)", proc.stderr)
        return float(m.group(1)) if m else float("nan")

    cmd.rounds.append(rnd)
    cmd.walls.append(wall)
    cmd.rss_mb.append(field_of("Maximum resident set size (kbytes)") / 1024)
    cmd.cpu.append(field_of("User time (seconds)") + field_of("System time (seconds)"))
    print(f"    {cmd.label:<34} {wall:8.2f} s  {cmd.rss_mb[-1]:9.0f} MB  cpu {cmd.cpu[-1]:7.2f} s", flush=True)


def commands(model: Model, src: Path, folder: Path, diffusers_reps: int, reps: int,
             baseline: Path | None = None, third_party: dict[str, Path] | None = None) -> list[Command]:
    py = sys.executable
    cli = Path(py).with_name("tensorsafe")
    ts = [str(cli)] if cli.exists() else [py, "-m", "tensorsafe"]
    copy, out, back, dfo = WORK / "copy.safetensors", WORK / "out", WORK / "back.safetensors", WORK / "diffusers_out"
    extra = []
    if baseline is not None:  # another checkout of the package (e.g. before a change), same commands
        old = [py, "-c", f"import runpy, sys; sys.path.insert(0, {str(baseline)!r}); "
                         "runpy.run_module('tensorsafe', run_name='__main__', alter_sys=True)"]
        extra = [Command("baseline tree file->folder", [*old, "convert", str(src), str(out), "--overwrite", "-q"],
                         [src], [out], reps, kind="baseline"),
                 Command("baseline tree folder->file", [*old, "convert", str(folder), str(back), "--overwrite", "-q"],
                         [folder], [back], reps, kind="baseline-reverse")]
    cmds = [
        Command("cp (plain copy)", ["cp", str(src), str(copy)], [src], [copy], reps, kind="copy"),
        Command("cp + sync (durable copy)", ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(src), str(copy)],
                [src], [copy], reps, kind="copy+sync"),
        Command("tensorsafe convert file->folder", [*ts, "convert", str(src), str(out), "--overwrite", "-q"],
                [src], [out], reps, kind="ours"),
        Command("tensorsafe convert folder->file", [*ts, "convert", str(folder), str(back), "--overwrite", "-q"],
                [folder], [back], reps, kind="reverse"),
        *extra,
        *(Command(f"tensorsafe convert {label}->folder", [*ts, "convert", str(path), str(out), "--overwrite", "-q"],
                  [path], [out], reps, kind="third-party") for label, path in (third_party or {}).items()),
    ]
    for accel, sync in (("on", False), ("on", True), ("off", False)):
        cmds.append(Command(f"diffusers, accelerate {accel}" + (" + sync" if sync else ""),
                            [py, "-c", DIFFUSERS_CHILD, accel, model.pipeline, str(src), str(folder), str(dfo),
                             *(["sync"] if sync else [])],
                            [src, folder], [dfo], diffusers_reps,
                            expect=f"ACCELERATE {accel == 'on'} {accel == 'on'}",
                            kind="diffusers+sync" if sync else "diffusers"))
    return cmds


BREAKDOWN_CHILD = r"""
import os, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime
t0, c0 = time.perf_counter(), cpu()
from tensorsafe.converter import chunks, execute, run, verify, writer
phases = {"imports": [time.perf_counter() - t0, *(b - a for a, b in zip(c0, cpu()))]}
overlapped = {}
def on_thread(name, fn):  # runs on the checker's thread, beside the write: its own clock and CPU
    def wrap(*a, **k):
        w, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD)
        try:
            return fn(*a, **k)
        finally:
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            p = overlapped.setdefault(name, [0.0, 0.0, 0.0])
            p[0] += time.perf_counter() - w
            p[1] += r1.ru_utime - r0.ru_utime
            p[2] += r1.ru_stime - r0.ru_stime
    return wrap
def timed(name, fn):
    def wrap(*a, **k):
        w, c = time.perf_counter(), cpu()
        try:
            return fn(*a, **k)
        finally:
            p = phases.setdefault(name, [0.0, 0.0, 0.0])
            p[0] += time.perf_counter() - w
            for i, (x, y) in enumerate(zip(c, cpu())):
                p[1 + i] += y - x
    return wrap
os.fsync = timed("fsync", os.fsync)
verify.check_header = timed("verify header", verify.check_header)
verify.check_tensor = on_thread("verify tensors (2nd thread)", verify.check_tensor)
writer.write_safetensors = execute.write_safetensors = timed("write + verify", writer.write_safetensors)
if sys.argv[3] == "keep-mapped":
    chunks._release = lambda *a: None
if sys.argv[3] == "no-kernel-copy":  # the user-space path: as where copy_file_range is refused
    del os.copy_file_range
run.convert(sys.argv[1], sys.argv[2], overwrite=True)
total = [time.perf_counter() - t0, *cpu()]
phases["write + verify"] = [a - b - c for a, b, c in zip(phases["write + verify"], phases["fsync"],
                                                          phases.get("verify header", [0.0] * 3))]
phases["scan, plan, configs, rename"] = [t - sum(p[i] for p in phases.values()) for i, t in enumerate(total)]
phases["total"] = total
for name, (w, u, s) in phases.items():
    print(f"{name:<30} {w:7.2f} {u:7.2f} {s:7.2f}")
for name, (w, u, s) in overlapped.items():
    print(f"  within write: {name:<30} {w:7.2f} {u:7.2f} {s:7.2f}")
"""


def breakdown(src: Path, folder: Path, env: dict[str, str], variant: str = "default") -> None:
    """Where our time goes, per phase (one in-process run each way, wall / user / system seconds)."""
    for label, a, out in (("file->folder", src, WORK / "out"), ("folder->file", folder, WORK / "back.safetensors")):
        clean([out])
        warm([a])
        proc = subprocess.run([sys.executable, "-c", BREAKDOWN_CHILD, str(a), str(out), variant],
                              capture_output=True, text=True, env=env)
        clean([out])
        print(f"  breakdown, tensorsafe convert {label} ({variant}):  {'wall':>7} {'user':>7} {'system':>7}")
        print("\n".join("    " + line for line in (proc.stdout + proc.stderr[-2000:]).strip().splitlines()))


# -- report -------------------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(tag: str, nbytes: int, cmds: list[Command]) -> tuple[list[tuple[str, bool]], list[str]]:
    by = {c.kind: c for c in cmds if not c.kind.startswith("diffusers")}
    cp, sync, ours = by["copy"], by["copy+sync"], by["ours"]
    print(f"\n{tag}: {nbytes / 1e9:.2f} GB")
    head = (f"  {'command':<50} {'runs':>4} {'wall s':>7} {'min s':>7} {'cpu s':>7} {'GB/s':>5} {'peak RSS MB':>11} "
            f"{'x cp':>6} {'x cp+sync':>9} {'x cp/rnd':>8} {'x ours':>7}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for c in cmds:
        if not c.walls:
            print(f"  {c.label:<50} failed: {c.failed}")
            continue
        w = med(c.walls)
        mine = by["reverse"] if c.kind == "baseline-reverse" else ours
        vs = f"{w / med(mine.walls):7.1f}" if c.kind in ("diffusers", "diffusers+sync", "baseline",
                                                         "baseline-reverse") else ""
        print(f"  {c.label:<50} {len(c.walls):>4} {w:7.2f} {min(c.walls):7.2f} {med(c.cpu):7.2f} "
              f"{nbytes / w / 1e9:5.2f} {max(c.rss_mb):11.0f} {w / med(cp.walls):6.2f} {w / med(sync.walls):9.2f} "
              f"{c.per_round(cp):8.2f} {vs:>7}" + (f"  (then failed: {c.failed})" if c.failed else ""))
    print("  wall, cpu: medians; peak RSS: the largest of the runs; x cp, x cp+sync: median over median; x cp/rnd: "
          "median of the per-round ratios to cp; x ours: diffusers' (baseline's) median over our file->folder "
          "(same direction) median; '+ sync': the command then syncs, so its output is durable as ours is "
          "(shown, not a target)")
    checks: list[tuple[str, bool]] = []
    failures: list[str] = []
    for c in (ours, by["reverse"], *(c for c in cmds if c.kind == "third-party")):
        if not c.walls:
            failures.append(f"{tag} {c.label}: failed ({c.failed})")
            continue
        r = med(c.walls) / med(cp.walls)
        checks.append((f"{tag} {c.label}: wall / cp = {r:.2f} (per round {c.per_round(cp):.2f}; target <= "
                       f"{COPY_TARGET}); / cp+sync = {med(c.walls) / med(sync.walls):.2f}", r <= COPY_TARGET))
        checks.append((f"{tag} {c.label}: peak RSS {max(c.rss_mb):.0f} MB (target < {RSS_TARGET_MB})",
                       max(c.rss_mb) < RSS_TARGET_MB))
        if c.failed:
            failures.append(f"{tag} {c.label}: failed after {len(c.walls)} run(s) ({c.failed})")
    for c in cmds:
        if c.kind == "diffusers":
            if not c.walls or not ours.walls:
                failures.append(f"{tag} {c.label}: failed ({c.failed}), no ratio")
                continue
            r = med(c.walls) / med(ours.walls)
            checks.append((f"{tag} {c.label}: {r:.1f}x our file->folder time (target >= {DIFFUSERS_TARGET}); "
                           f"peak RSS {max(c.rss_mb):.0f} MB", r >= DIFFUSERS_TARGET))
    return checks, failures


# -- pickle checkpoint -> one .safetensors file, next to the Hub conversion bot's method -------------------
HUB_BOT_CHILD = r"""
import os, sys, torch
from safetensors.torch import _remove_duplicate_names, save_file
# the Hub's conversion bot (safetensors' convert.py, convert_file): load, unwrap, drop aliases, save
loaded = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
if "state_dict" in loaded:
    loaded = loaded["state_dict"]
metadata = {"format": "pt"}
for kept, removed in _remove_duplicate_names(loaded).items():
    for name in removed:
        metadata.setdefault(name, kept)
        del loaded[name]
loaded = {k: v.contiguous() for k, v in loaded.items()}
save_file(loaded, sys.argv[2], metadata=metadata)
if sys.argv[3:] == ["sync"]:  # durable, as our output is
    os.sync()
"""
TENSOR_MB = 8   # the benchmark checkpoint's tensors: fp16 blocks of this size (a few small ones and a tied pair too)


def ensure_checkpoint(size_mb: int, fmt: str) -> Path:
    """A ``torch.save`` checkpoint of about ``size_mb`` MB of random fp16 weights under ``state_dict`` (``zip``, or
    ``legacy``: the pre-1.6 format), written once into benchmarks/_data/. Writing it holds it in memory once."""
    import torch

    path = DATA / f"ckpt_{size_mb}mb_{fmt}.ckpt"
    if path.exists():
        return path
    g = torch.Generator().manual_seed(size_mb)
    state: dict = {}
    per = TENSOR_MB * MB // 2
    for i in range(max(1, size_mb // TENSOR_MB)):
        state[f"blocks.{i}.weight"] = (torch.rand(per // 1024, 1024, generator=g) * 2 - 1).half()
        state[f"blocks.{i}.bias"] = torch.zeros(1024, dtype=torch.float16)
    state["head.weight"] = state["blocks.0.weight"]  # tied: written once by both methods
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "global_step": 1000}, tmp, _use_new_zipfile_serialization=fmt == "zip")
    os.replace(tmp, path)
    return path


def to_safetensors_commands(src: Path, reps: int) -> list[Command]:
    py = sys.executable
    cli = Path(py).with_name("tensorsafe")
    ts = [str(cli)] if cli.exists() else [py, "-m", "tensorsafe"]
    copy, ours, bot = WORK / "copy.bin", WORK / "ours.safetensors", WORK / "bot.safetensors"
    return [
        Command("cp (plain copy)", ["cp", str(src), str(copy)], [src], [copy], reps, kind="copy"),
        Command("cp + sync (durable copy)", ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(src), str(copy)],
                [src], [copy], reps, kind="copy+sync"),
        Command("tensorsafe convert -> .safetensors", [*ts, "convert", str(src), str(ours), "--overwrite", "-q"],
                [src], [ours], reps, kind="ours"),
        Command("hub bot: torch.load + save_file", [py, "-c", HUB_BOT_CHILD, str(src), str(bot)], [src], [bot], reps,
                kind="bot"),
        Command("hub bot + sync", [py, "-c", HUB_BOT_CHILD, str(src), str(bot), "sync"], [src], [bot], reps,
                kind="bot+sync"),
    ]


def report_to_safetensors(tag: str, nbytes: int, cmds: list[Command]) -> tuple[list[tuple[str, bool]], list[str]]:
    by = {c.kind: c for c in cmds}
    print(f"\n{tag}: {nbytes / 1e9:.2f} GB")
    print(f"  {'command':<36} {'runs':>4} {'wall s':>7} {'cpu s':>7} {'GB/s':>5} {'peak RSS MB':>11} {'x cp':>6} "
          f"{'x cp+sync':>9} {'x ours':>7}")
    for c in cmds:
        if not c.walls:
            print(f"  {c.label:<36} failed: {c.failed}")
            continue
        w = med(c.walls)
        vs = f"{w / med(by['ours'].walls):7.2f}" if by["ours"].walls else ""
        print(f"  {c.label:<36} {len(c.walls):>4} {w:7.2f} {med(c.cpu):7.2f} {nbytes / w / 1e9:5.2f} "
              f"{max(c.rss_mb):11.0f} {w / med(by['copy'].walls):6.2f} {w / med(by['copy+sync'].walls):9.2f} {vs:>7}")
    print("  medians; peak RSS: the largest run; x ours: this command's wall over ours (the bot's 'x ours' is how "
          "many times slower it is)")
    ours = by["ours"]
    if not ours.walls:
        return [], [f"{tag} {ours.label}: failed ({ours.failed})"]
    ratio = med(ours.walls) / med(by["copy+sync"].walls)
    checks = [(f"{tag} ours: wall / (cp + sync) = {ratio:.2f} (target <= {COPY_TARGET})", ratio <= COPY_TARGET),
              (f"{tag} ours: peak RSS {max(ours.rss_mb):.0f} MB (target < {RSS_TARGET_MB})",
               max(ours.rss_mb) < RSS_TARGET_MB)]
    bot = by["bot+sync"]
    if bot.walls:
        checks.append((f"{tag} hub bot + sync: {med(bot.walls) / med(ours.walls):.2f}x our wall time, peak RSS "
                       f"{max(bot.rss_mb):.0f} MB (shown, not a target)", True))
    return checks, []


def bench_to_safetensors(args, env: dict[str, str]) -> int:
    """``--to-safetensors``: legacy and zip checkpoints of ``--size-mb`` MB, ours next to the Hub bot's method."""
    checks: list[tuple[str, bool]] = []
    failures: list[str] = []
    for fmt in args.formats.split(","):
        src = ensure_checkpoint(args.size_mb, fmt.strip())
        cmds = to_safetensors_commands(src, args.reps)
        tag = f"{fmt} checkpoint {args.size_mb} MB"
        print(f"\n== {tag}: {src.name}; {args.reps} rounds")
        for r in range(args.reps):
            shift = r % len(cmds)
            print(f"  round {r + 1}")
            for c in cmds[shift:] + cmds[:shift]:
                if not c.done():
                    run_once(c, r, env)
        new_checks, new_failures = report_to_safetensors(tag, size_of(src), cmds)
        checks += new_checks
        failures += new_failures
    shutil.rmtree(WORK, ignore_errors=True)
    return finish(checks, quick=args.quick, failures=failures)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models (a smoke run in seconds)")
    ap.add_argument("--models", default=None, help="comma-separated: sd15, sdxl (default both; --quick: sd15)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs of each command (default 3; --quick: 1)")
    ap.add_argument("--diffusers-reps", type=int, default=None,
                    help="timed runs of each diffusers command (default: --reps; 2 for SDXL, which is slow)")
    ap.add_argument("--no-diffusers", action="store_true", help="only the copies and tensorsafe (before/after checks)")
    ap.add_argument("--no-third-party", action="store_true",
                    help="leave out the inputs other tools wrote (a torch.save .ckpt, a save_file .safetensors)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time our phases in-process (imports, write, fsync, verify), after the table")
    ap.add_argument("--breakdown-only", action="store_true", help="only the phase breakdown (no timed table)")
    ap.add_argument("--breakdown-variant", default="default", choices=["default", "no-kernel-copy", "keep-mapped"],
                    help="no-kernel-copy: without copy_file_range (the user-space path); keep-mapped: source pages "
                         "of the user-space path not released")
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="a folder holding another copy of the tensorsafe package (e.g. before a change): its "
                         "convert runs too, interleaved, for a before/after in one run")
    ap.add_argument("--to-safetensors", action="store_true",
                    help="instead: pickle checkpoint -> one .safetensors file, ours next to the Hub bot's method "
                         "(torch.load + save_file), on a legacy and a zip checkpoint")
    ap.add_argument("--size-mb", type=int, default=None,
                    help="--to-safetensors: checkpoint size in MB (default 256; --quick: 32); e.g. 4096 for 4 GB")
    ap.add_argument("--formats", default="legacy,zip", help="--to-safetensors: legacy, zip or both")
    args = ap.parse_args(argv)
    args.models = args.models or ("sd15" if args.quick else "sd15,sdxl")
    args.reps = args.reps or (1 if args.quick else 3)
    if not os.access(TIME, os.X_OK):
        raise SystemExit(f"{TIME} is missing: apt-get update && apt-get install -y time")
    if args.to_safetensors:
        args.size_mb = args.size_mb or (32 if args.quick else 256)
        DATA.mkdir(parents=True, exist_ok=True)
        WORK.mkdir(parents=True, exist_ok=True)
        return bench_to_safetensors(args, dict(os.environ, PYTHONWARNINGS="ignore"))
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    table = QUICK if args.quick else MODELS
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(table)}")
    DATA.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")

    import diffusers
    import torch
    import transformers
    print(f"machine: {os.cpu_count()} CPUs, {_mem_gb():.0f} GB RAM, {platform.system()} {platform.release()}; "
          f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}")
    print("diffusers loads with torch_dtype=float16 (the file's dtype) and saves safetensors; every input is read "
          "once before each run (warm page cache, nothing dropped); outputs are deleted and `sync` run between "
          "runs (untimed).")
    checks: list[tuple[str, bool]] = []
    failures: list[str] = []
    for name in names:
        model = table[name]
        tag = f"{name}{' (quick)' if args.quick else ''}"
        print(f"\n== {tag}: inputs")
        src = ensure_single_file(model, f"quick_{name}" if args.quick else name)
        folder = ensure_folder(src)
        dreps = args.diffusers_reps or (min(args.reps, 2) if name == "sdxl" and not args.quick else args.reps)
        if args.breakdown_only:
            breakdown(src, folder, env, args.breakdown_variant)
            continue
        third_party = None if args.no_third_party else ensure_third_party(src)
        cmds = commands(model, src, folder, dreps, args.reps, args.baseline_tree, third_party)
        if args.no_diffusers:
            cmds = [c for c in cmds if not c.kind.startswith("diffusers")]
        print(f"== {tag}: {src.name} ({size_of(src) / 1e9:.2f} GB), reverse from {folder.name}/ "
              f"({size_of(folder) / 1e9:.2f} GB); {args.reps} rounds, diffusers {dreps}")
        for r in range(max(c.reps for c in cmds)):
            todo = [c for c in cmds if not c.done()]
            if not todo:
                break
            shift = r % len(todo)
            print(f"  round {r + 1}")
            for c in todo[shift:] + todo[:shift]:
                run_once(c, r, env)
        new_checks, new_failures = report(tag, size_of(src), cmds)
        checks += new_checks
        failures += new_failures
        if args.breakdown:
            breakdown(src, folder, env, args.breakdown_variant)
    shutil.rmtree(WORK, ignore_errors=True)
    return finish(checks, quick=args.quick, failures=failures)


def _mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
