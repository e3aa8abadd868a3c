"""Reference pipeline vs diffusers: full-size SD1.5 shapes, random weights, one CPU, same threads.

    python benchmarks/bench_render.py                 # 256x256, 4 steps, 3 rounds (~10 min on 2 cores)
    python benchmarks/bench_render.py --quick         # tiny SD1-shaped model: a smoke run
    python benchmarks/bench_render.py --size 512 --steps 20 --device cuda --dtype fp16

Each run is its own child process, so its peak RSS (``wait4``'s ``ru_maxrss``) is its own; the
tools alternate, the order rotated each round. The child times, for both tools alike (after ``import torch``),
importing the tool, loading (folder -> modules) and rendering (prompt -> decoded image) apart and returns the image, so the parent also prints how far
the two pictures are from each other (same seed, Euler, guidance 7.5: they should agree).

The model folder is written once into ``benchmarks/_data/sd15_render_fp16/``: diffusers' and
transformers' own SD1.5-sized classes with their default random initialisation (finite
activations, unlike uniform noise weights), saved by diffusers in fp16 as SD1.5 is distributed,
with the tokenizer files ``tensorsafe convert`` writes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _targets import finish  # benchmarks/_targets.py (a script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
ROOT = HERE.parent
PROMPT = "a photo of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"

SD15 = dict(
    unet=dict(sample_size=64, cross_attention_dim=768),  # the rest are UNet2DConditionModel's defaults: SD1.x
    vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512),
    text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77, vocab_size=49408),
)
TINY = dict(
    unet=dict(sample_size=32, cross_attention_dim=64, block_out_channels=(32, 64, 64, 64), attention_head_dim=4,
              norm_num_groups=32),
    vae=dict(block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, sample_size=256),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, projection_dim=64,
              hidden_act="quick_gelu", max_position_embeddings=77, vocab_size=49408),
)


# ---- the model folder ----------------------------------------------------------------------------------

def make_folder(folder: Path, shapes: dict) -> Path:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(ROOT))
    from tensorsafe.converter.tokenizer import tokenizer_files

    if (folder / "model_index.json").is_file():
        return folder
    print(f"writing {folder} (once) ...", file=sys.stderr)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tokenizer_files("<|endoftext|>").items():
            (Path(tmp) / name).write_bytes(data)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**shapes["unet"]), vae=AutoencoderKL(**shapes["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**shapes["text"])), tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    staged = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(staged, safe_serialization=True)
    staged.rename(folder)
    return folder


# ---- one run, in a child process --------------------------------------------------------------------------

def child(tool: str, folder: str, size: int, steps: int, threads: int, device: str, dtype: str, out: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()  # both tools: their own imports, then loading, then rendering, timed apart
    if tool == "tensorsafe":
        from tensorsafe.pipeline.pipeline import Pipeline

        imported = time.perf_counter()
        pipe = Pipeline.from_folder(folder, device=device, dtype=dtype)
        loaded = time.perf_counter()
        result = pipe(PROMPT, NEGATIVE, steps=steps, height=size, width=size, seed=0, guidance=7.5, scheduler="euler")
        image = result.image[0].permute(1, 2, 0).numpy()
    else:
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
        from diffusers.utils import logging as dlogging

        imported = time.perf_counter()
        dlogging.set_verbosity_error()
        dlogging.disable_progress_bar()
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch_dtype, safety_checker=None,
                                                       local_files_only=True).to(device)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        loaded = time.perf_counter()
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
                     guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    done = time.perf_counter()
    np.save(out, np.asarray(image, dtype=np.float32))
    print(json.dumps({"import": imported - started, "load": loaded - imported, "render": done - loaded}))


def run_child(tool: str, args, folder: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", tool, "--folder", str(folder), "--size", str(args.size),
           "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
           "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{tool} run failed (status {status})")
    times = json.loads(stdout.decode().strip().splitlines()[-1])
    return {**times, "wall": wall, "rss_mb": usage.ru_maxrss / 1024}


# ---- the comparison -----------------------------------------------------------------------------------------

IMAGE_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "bf16": 1e-1}
"""Largest |pixel difference| in [0, 1] between our picture and diffusers' from the same weights and
seed: over it, one pipeline computes something else (a failure, quick run or not)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny SD1-shaped model (smoke run)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--child", choices=["tensorsafe", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.size, args.steps, args.threads, args.device, args.dtype, args.out)
        return 0

    import numpy as np

    DATA.mkdir(exist_ok=True)
    folder = make_folder(DATA / ("quick_render_fp16" if args.quick else "sd15_render_fp16"),
                         TINY if args.quick else SD15)
    tools = ["tensorsafe", "diffusers"]
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    images: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for tool in tools[r % 2:] + tools[:r % 2]:
                out = Path(tmp) / f"{tool}.npy"
                runs[tool].append(run_child(tool, args, folder, out))
                images[tool] = np.load(out)
                print(f"  round {r + 1} {tool:10s} " + "  ".join(f"{k} {v:.2f}" for k, v in runs[tool][-1].items()),
                      file=sys.stderr)
    diff = float(np.abs(images["tensorsafe"] - images["diffusers"]).max())
    targets = report(args, folder, runs, diff, float(images["tensorsafe"].std()))
    tolerance = IMAGE_TOLERANCE[args.dtype]
    failures = [] if diff <= tolerance else [f"the pictures differ by {diff:.2e} (max |difference|; allowed "
                                             f"{tolerance:g} at {args.dtype})"]
    return finish(targets, quick=args.quick, failures=failures)


def report(args, folder: Path, runs: dict[str, list[dict]], image_diff: float,
           image_std: float) -> list[tuple[str, bool]]:
    import torch

    med = {t: {k: statistics.median(r[k] for r in rs) for k in ("import", "load", "render", "wall")}
           for t, rs in runs.items()}
    rss = {t: max(r["rss_mb"] for r in rs) for t, rs in runs.items()}
    print(f"\n{folder.name}: {args.size}x{args.size}, {args.steps} Euler steps, guidance 7.5, {args.device} {args.dtype}, "
          f"{args.threads} threads, torch {torch.__version__}, {args.rounds} rounds (medians; peak RSS: largest)")
    print(f"{'tool':12s} {'import s':>9s} {'load s':>8s} {'render s':>9s} {'wall s':>8s} {'peak RSS MB':>12s}")
    for tool in runs:
        m = med[tool]
        print(f"{tool:12s} {m['import']:9.2f} {m['load']:8.2f} {m['render']:9.2f} {m['wall']:8.2f} {rss[tool]:12.0f}")
    ours, theirs = med["tensorsafe"], med["diffusers"]
    print(f"\nmax |image difference| in [0, 1]: {image_diff:.2e} (the picture's own spread: std {image_std:.3f})")
    print("diffusers / tensorsafe (above 1: we are faster or smaller):")
    targets = [(f"{key} time: diffusers / tensorsafe = {theirs[key] / ours[key]:.2f}x (target: no slower, >= 1)",
                theirs[key] >= ours[key]) for key in ("render", "wall")]
    ratio = rss["diffusers"] / rss["tensorsafe"]
    targets.append((f"peak RSS: diffusers / tensorsafe = {ratio:.2f}x (target: no more memory, >= 1)", ratio >= 1))
    return targets


if __name__ == "__main__":
    sys.exit(main())
