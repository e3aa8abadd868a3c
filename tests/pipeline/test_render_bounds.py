"""``render`` refuses what it cannot do before allocating: config ranges, options, memory, tokenizer tables."""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorsafe.errors import (
    LimitExceeded,
    ParseError,
    RenderError,
    TensorsafeError,
    UsageError,
)
from tensorsafe.pipeline import budget, render
from tensorsafe.pipeline.configs import unet_config, vae_config
from tensorsafe.pipeline.tokenizer import CLIPTokenizer
from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)

MiB = 1 << 20
# peak and current RSS of this process from /proc (ru_maxrss survives exec: it would be the parent's)
HWM = ("def status(key):\n"
       "    for line in open('/proc/self/status'):\n"
       "        if line.startswith(key + ':'):\n"
       "            return int(line.split()[1]) * 1024\n")


def _copy(tmp_path: Path, case: str = "sd1") -> Path:
    folder = tmp_path / "model"
    shutil.copytree(pt.saved_folder(case), folder)
    return folder


def _edit(folder: Path, rel: str, **changes) -> Path:
    path = folder / rel
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return path


def _cli(args: list[str], cap_bytes: int = 2 << 30, timeout: float = 120) -> tuple[int, str, int, bool]:
    """(exit code, stderr, peak RSS in bytes, torch imported) of ``tensorsafe ARGS`` under an address-space cap."""
    code = (f"{HWM}import sys\nfrom tensorsafe.cli.main import main\nrc = 0\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
            "print(status('VmHWM'), 'torch' in sys.modules)\n"
            "sys.exit(rc)\n")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          preexec_fn=cap)
    rss, torch_loaded = proc.stdout.strip().splitlines()[-1].split()
    return proc.returncode, proc.stderr, int(rss), torch_loaded == "True"


def _one_line_exit_2(rc: int, stderr: str, *fragments: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tensorsafe: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


# ---- sizes and memory ------------------------------------------------------------------------------------------

def test_tiny_model_at_64_is_accepted():
    assert render(pt.saved_folder("sd1"), "a cat", steps=1, size=64).size == (64, 64)


@pytest.mark.parametrize(("size", "fragment"), [
    (100000, "size 100000 is outside 1..16384"),
    (8192, "attend over 1,048,576 positions"),
    ((64, 100000), "height 100000 is outside"),
])
def test_absurd_sizes_are_refused_instantly_without_allocating(size, fragment):
    folder = pt.saved_folder("sd1")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises((UsageError, LimitExceeded), match=fragment):
            render(folder, "a cat", steps=1, size=size)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 8 * MiB


def test_memory_limit_refuses_with_the_estimate_and_the_limit():
    folder = pt.saved_folder("sd1")
    with pytest.raises(LimitExceeded, match=r"size 2048x2048 needs about .* over the limit of 1\.0 GiB") as info:
        render(folder, "a cat", steps=1, size=2048, max_memory_bytes=1 << 30)
    assert info.value.limit == "max_memory_bytes" and info.value.value == 1 << 30
    with pytest.raises(LimitExceeded, match="max_memory_bytes"):
        render(folder, "a cat", steps=1, size=64, max_memory_bytes=MiB)


def test_default_limit_is_half_the_ram():
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert budget.default_memory_limit() == int(ram * budget.MEMORY_FRACTION)
    assert budget.MEMORY_FRACTION == 0.5


def test_default_limit_applies_without_an_option(monkeypatch):
    monkeypatch.setattr(budget, "default_memory_limit", lambda device="cpu": 64 * MiB)
    with pytest.raises(LimitExceeded, match=r"64\.0 MiB \(default"):
        render(pt.saved_folder("sd1"), "a cat", steps=1, size=64)


def test_loaded_pipeline_also_refuses_before_allocating():
    from tensorsafe.pipeline.pipeline import Pipeline

    pipe = Pipeline.from_folder(pt.saved_folder("sd1"))
    with pytest.raises(LimitExceeded, match="max_memory_bytes"):
        pipe("a cat", steps=1, height=64, width=64, max_memory_bytes=MiB)
    with pytest.raises(UsageError, match="height 0 is outside"):
        pipe("a cat", steps=1, height=0, width=64)  # never a silent default
    with pytest.raises(LimitExceeded, match="positions"):
        pipe("a cat", steps=1, height=8192, width=8192)


def test_weights_come_from_the_headers():
    folder = pt.saved_folder("sd1")
    w = budget.component_weights(folder / "unet", 4)
    files = budget.weight_files(folder / "unet")
    assert files and w.stored <= sum(f.stat().st_size for f in files)
    assert w.compute == w.stored  # fp32 on disk, fp32 in memory
    assert budget.component_weights(folder / "unet", 2).compute == w.stored // 2


@pytest.mark.slow
def test_estimate_is_not_below_the_measured_peak(tmp_path):
    """A real render in a fresh process: the peak RSS it adds is within the estimate, and not far below it."""
    folder = pt.saved_folder("sd1")
    code = (
        f"{HWM}import sys, torch, PIL.Image, tokenizers\n"
        "torch.set_num_threads(1)\n"
        "from pathlib import Path\n"
        "import tensorsafe.pipeline.pipeline\n"
        "from tensorsafe.pipeline import render\n"
        "from tensorsafe.pipeline.preflight import estimate_folder, read_folder_configs\n"
        "folder, size = Path(sys.argv[1]), int(sys.argv[2])\n"
        "est = estimate_folder(folder, read_folder_configs(folder), size, size, 7.5, 'fp32').total\n"
        "before = status('VmRSS')\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # resets VmHWM to the current RSS
        "render(folder, 'a cat', steps=1, size=size)\n"
        "after = status('VmHWM')\n"
        "print(after - before, est)\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder), "256"], capture_output=True, text=True, check=False,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    measured, estimate = map(int, out.stdout.split())
    assert measured <= estimate <= 4 * measured, (measured, estimate)


# ---- configs ---------------------------------------------------------------------------------------------------

CONFIG_CASES = [
    ("unet/config.json", {"sample_size": 100000}, "sample_size 100000 is outside 1..2048"),
    ("unet/config.json", {"block_out_channels": "wide"}, "block_out_channels must be a list"),
    ("unet/config.json", {"block_out_channels": [32, 64, 64, 10**6]}, "block_out_channels[3] 1000000 is outside"),
    ("unet/config.json", {"norm_num_groups": 7}, "not a multiple of norm_num_groups 7"),
    ("unet/config.json", {"attention_head_dim": 3}, "its head count (attention_head_dim) 3"),
    ("unet/config.json", {"layers_per_block": 100}, "layers_per_block 100 is outside 1..16"),
    ("unet/config.json", {"transformer_layers_per_block": 10**6}, "transformer_layers_per_block 1000000"),
    ("unet/config.json", {"in_channels": 0}, "in_channels 0 is outside"),
    ("unet/config.json", {"conv_in_kernel": 4}, "conv_in_kernel 4 must be odd"),
    ("unet/config.json", {"norm_eps": -1}, "norm_eps -1 is outside"),
    ("unet/config.json", {"downsample_padding": 9}, "downsample_padding 9 is outside 0..2"),
    ("unet/config.json", {"flip_sin_to_cos": "yes"}, "flip_sin_to_cos must be true or false"),
    ("unet/config.json", {"time_embedding_dim": 0}, "time_embedding_dim 0 is outside"),
    ("unet/config.json", {"freq_shift": 1e9}, "freq_shift 1000000000.0 is outside"),
    ("vae/config.json", {"latent_channels": 0}, "latent_channels 0 is outside"),
    ("vae/config.json", {"force_upcast": "yes"}, "force_upcast must be true or false"),
    ("vae/config.json", {"latents_mean": [0.0] * 4, "latents_std": [1.0, 0.0, 1.0, 1.0]}, "latents_std[1] 0.0"),
    ("vae/config.json", {"norm_num_groups": 5}, "not a multiple of norm_num_groups 5"),
    ("vae/config.json", {"scaling_factor": 0}, "scaling_factor 0 is outside"),
    ("vae/config.json", {"block_out_channels": [32] * 20}, "block_out_channels must be a list of 1..8"),
    ("vae/config.json", {"latents_mean": [0.0]}, "latents_mean must list one number per latent channel"),
    ("text_encoder/config.json", {"hidden_act": "relu"}, "hidden_act 'relu' is not one of"),
    ("text_encoder/config.json", {"hidden_size": ...}, "hidden_size is missing"),
    ("text_encoder/config.json", {"vocab_size": 10**9}, "vocab_size 1000000000 is outside"),
    ("text_encoder/config.json", {"num_attention_heads": 5}, "hidden_size 32 is not a multiple of"),
    ("text_encoder/config.json", {"max_position_embeddings": 10**7}, "max_position_embeddings 10000000"),
    ("text_encoder/config.json", {"eos_token_id": 10**7}, "eos_token_id 10000000 is outside"),
    ("text_encoder/config.json", {"projection_dim": 0}, "projection_dim 0 is outside"),
    ("text_encoder/config.json", {"layer_norm_eps": 0}, "layer_norm_eps 0 is outside"),
    ("text_encoder/config.json", {"architectures": "CLIPTextModel"}, "architectures must be a list"),
    ("text_encoder/config.json", {"num_hidden_layers": 10**4}, "num_hidden_layers 10000 is outside"),
    ("text_encoder/config.json", {"intermediate_size": -1}, "intermediate_size -1 is outside"),
    ("scheduler/scheduler_config.json", {"final_sigmas_type": "max"}, "final_sigmas_type 'max' is not one of"),
    ("scheduler/scheduler_config.json", {"clip_sample": "yes"}, "clip_sample must be true or false"),
    ("scheduler/scheduler_config.json", {"clip_sample_range": -1}, "clip_sample_range -1 is outside"),
    ("scheduler/scheduler_config.json", {"beta_start": 0}, "beta_start 0 is outside"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 10**12}, "num_train_timesteps 1000000000000"),
    ("scheduler/scheduler_config.json", {"beta_end": 2.0}, "beta_end 2.0 is outside"),
    ("scheduler/scheduler_config.json", {"beta_schedule": "cosine"}, "beta_schedule 'cosine' is not one of"),
    ("scheduler/scheduler_config.json", {"trained_betas": [0.1, 0.2]}, "trained_betas must list 1000 numbers"),
    ("scheduler/scheduler_config.json", {"steps_offset": 5000}, "steps_offset 5000 is outside"),
]


@pytest.mark.parametrize(("rel", "changes", "fragment"), CONFIG_CASES, ids=[f"{c[0].split('/')[0]}-{'-'.join(c[1])}"
                                                                          for c in CONFIG_CASES])
def test_config_values_out_of_range_are_refused_naming_the_file(tmp_path, rel, changes, fragment):
    folder = _copy(tmp_path)
    path = _edit(folder, rel, **changes)
    start = time.perf_counter()
    with pytest.raises(ParseError) as info:
        render(folder, "a cat", steps=1, size=64)
    assert fragment in str(info.value) and str(info.value).startswith(f"{path}: ")
    assert time.perf_counter() - start < 1.0
    from tensorsafe.pipeline.pipeline import Pipeline

    with pytest.raises(ParseError, match=str(path)):  # the lower level checks the same way
        Pipeline.from_folder(folder)


def test_config_refusals_through_the_cli_are_one_line_without_torch(tmp_path):
    folder = _copy(tmp_path)
    _edit(folder, "unet/config.json", sample_size=100000)
    rc, err, rss, torch_loaded = _cli(["render", str(folder), "-p", "x", "-o", str(tmp_path / "a.png")])
    _one_line_exit_2(rc, err, "unet/config.json: sample_size 100000 is outside")
    assert not torch_loaded and rss < 300 * MiB
    _edit(folder, "unet/config.json", sample_size=8)
    _edit(folder, "scheduler/scheduler_config.json", num_train_timesteps=10**12)
    rc, err, _, torch_loaded = _cli(["render", str(folder), "-p", "x", "-o", str(tmp_path / "a.png")])
    _one_line_exit_2(rc, err, "num_train_timesteps 1000000000000 is outside 1..100000")
    assert not torch_loaded


@pytest.mark.parametrize(("args", "fragment"), [
    (["--size", "100000"], "size 100000 is outside 1..16384"),
    (["--size", "0"], "size 0 is outside"),
    (["--size", "60"], "size 60 must be a positive multiple of 8"),
    (["--size", "8192"], "attend over 1,048,576 positions"),
    (["--size", "64", "--max-memory", "1M"], "over the limit of 1.0 MiB"),
    (["--guidance", "nan"], "guidance nan is outside"),
    (["--seed", str(2 ** 70)], "seed"),
])
def test_cli_option_refusals_are_one_line_and_exit_2(tmp_path, args, fragment):
    rc, err, rss, torch_loaded = _cli(["render", str(pt.saved_folder("sd1")), "-p", "x", *args, "-o",
                                       str(tmp_path / "a.png")])
    _one_line_exit_2(rc, err, fragment)
    assert not torch_loaded and rss < 300 * MiB
    assert not (tmp_path / "a.png").exists()


def test_cli_malformed_sizes_are_usage_errors(tmp_path):
    rc, err, _, _ = _cli(["render", str(pt.saved_folder("sd1")), "-p", "x", "--size", "-8", "-o",
                          str(tmp_path / "a.png")])
    assert rc == 2 and "Traceback" not in err and "WIDTHxHEIGHT" in err
    rc, err, _, _ = _cli(["render", str(pt.saved_folder("sd1")), "-p", "x", "--max-memory", "lots", "-o",
                          str(tmp_path / "a.png")])
    assert rc == 2 and "Traceback" not in err and "--max-memory" in err


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"size": 0}, "size 0 is outside"),
    ({"size": -64}, "size -64 is outside"),
    ({"size": (64, 0)}, "height 0 is outside"),
    ({"size": 64.5}, "size must be an integer"),
    ({"size": True}, "size must be an integer"),
    ({"steps": 0}, "steps 0 is outside 1..1000"),
    ({"steps": 10**6}, "steps 1000000 is outside"),
    ({"guidance": -1.0}, "guidance -1.0 is outside"),
    ({"guidance": float("inf")}, "guidance inf is outside"),
    ({"seed": 2 ** 70}, "seed"),
    ({"strength": 0.0}, "strength 0.0 is outside"),
    ({"strength": 1.5}, "strength 1.5 is outside"),
    ({"prompt": "x" * 200_001}, "prompt has 200,001 characters"),
    ({"max_memory_bytes": 0}, "max_memory_bytes 0 is outside"),
])
def test_options_out_of_range_are_usage_errors(kwargs, fragment):
    args = {"prompt": "a cat", "steps": 1, "size": 64, **kwargs}
    with pytest.raises(UsageError) as info:
        render(pt.saved_folder("sd1"), args.pop("prompt"), **args)
    assert fragment in str(info.value)


def test_single_file_sizes_are_checked_before_converting(tmp_path, monkeypatch):
    from tensorsafe.converter import run

    monkeypatch.setattr(run, "convert", lambda *a, **k: pytest.fail("converted before checking the size"))
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"not read")
    with pytest.raises(UsageError, match="size 100000 is outside"):
        render(single, "a cat", size=100000)


def test_ddim_steps_past_the_last_timestep_are_refused():
    from tensorsafe.pipeline.schedulers import make_scheduler

    sched = make_scheduler("ddim", {"steps_offset": 1, "timestep_spacing": "leading"})
    sched.set_timesteps(999 // 2)
    with pytest.raises(UsageError, match="reach timestep 1000"):
        sched.set_timesteps(1000)


def test_running_out_of_memory_anyway_is_a_render_error(monkeypatch):
    from tensorsafe.pipeline.pipeline import Pipeline

    def boom(self, *a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(Pipeline, "__call__", boom)
    with pytest.raises(RenderError, match="ran out of memory"):
        render(pt.saved_folder("sd1"), "a cat", steps=1, size=64)


def test_validated_activations_are_the_encoders():
    from tensorsafe.pipeline.text_encoder import ACTIVATIONS
    from tensorsafe.pipeline.validate import ACTIVATION_NAMES

    assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)


# ---- tokenizer tables ------------------------------------------------------------------------------------------

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
GOOD_VOCAB = {"a": 0, "b": 1, "ab": 2, "a</w>": 3, "b</w>": 4, "ab</w>": 5, BOS: 6, EOS: 7}
GOOD_MERGES = "#version: 0.2\na b\na b</w>\n"


def _tokenizer_folder(tmp_path: Path, vocab=None, merges: str | None = None) -> Path:
    folder = tmp_path / "tokenizer"
    folder.mkdir(exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(GOOD_VOCAB if vocab is None else vocab))
    (folder / "merges.txt").write_text(GOOD_MERGES if merges is None else merges)
    return folder


def test_consistent_small_tables_load(tmp_path):
    tok = CLIPTokenizer.from_folder(_tokenizer_folder(tmp_path))
    assert tok("ab")[:3] == [6, 5, 7]


@pytest.mark.parametrize(("vocab", "merges", "fragment"), [
    (None, "a b\nzz qq\n", "merge 2 (zz qq) names 'zz'"),
    ({k: v for k, v in GOOD_VOCAB.items() if k != "ab</w>"} | {"x": 5}, None, "names 'ab</w>'"),
    (GOOD_VOCAB | {"b": 0}, None, "id 0 is given to both"),
    (GOOD_VOCAB | {"b": 10**9}, None, "has id 1000000000, outside 0..7"),
    (GOOD_VOCAB | {"b": -1}, None, "has id -1"),
    ({k: v for k, v in GOOD_VOCAB.items() if k != EOS} | {"x": 7}, None, "eos token '<|endoftext|>' is not in"),
    (None, "a b c\n", "line 1: a merge is two tokens"),
    ({}, None, "empty"),
])
def test_inconsistent_tables_are_refused_naming_the_file(tmp_path, vocab, merges, fragment):
    folder = _tokenizer_folder(tmp_path, vocab, merges)
    with pytest.raises(ParseError) as info:
        CLIPTokenizer.from_folder(folder)
    assert fragment in str(info.value)
    assert str(folder) in str(info.value)


def test_inconsistent_tokenizer_json_is_refused(tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": GOOD_VOCAB, "merges": ["a zz"]}}))
    with pytest.raises(ParseError, match=r"tokenizer\.json: merge 1 \(a zz\) names 'zz'"):
        CLIPTokenizer.from_folder(folder)
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": GOOD_VOCAB, "merges": [["a"]]}}))
    with pytest.raises(ParseError, match="not a pair of tokens"):
        CLIPTokenizer.from_folder(folder)


def test_oversized_tokenizer_file_is_refused_unread(tmp_path, monkeypatch):
    from tensorsafe.pipeline import tokenizer

    monkeypatch.setattr(tokenizer, "MAX_TOKENIZER_FILE_BYTES", 16)
    with pytest.raises(ParseError, match="over the 16-byte limit"):
        CLIPTokenizer.from_folder(_tokenizer_folder(tmp_path))


def test_broken_tokenizer_in_a_folder_is_one_line_from_the_cli(tmp_path):
    folder = _copy(tmp_path)
    with (folder / "tokenizer" / "merges.txt").open("a") as f:
        f.write("zzqq xxyy\n")
    with pytest.raises(ParseError, match="names 'zzqq'"):
        render(folder, "a cat", steps=1, size=64)
    rc, err, _, _ = _cli(["render", str(folder), "-p", "x", "--size", "64", "-o", str(tmp_path / "a.png")],
                         cap_bytes=8 << 30)
    _one_line_exit_2(rc, err, "merges.txt", "names 'zzqq'")


# ---- properties ------------------------------------------------------------------------------------------------

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(allow_nan=True),
                   st.text(max_size=5), st.lists(st.integers(-2, 3000), max_size=10))
UNET_KEYS = ["block_out_channels", "layers_per_block", "attention_head_dim", "cross_attention_dim", "norm_num_groups",
             "transformer_layers_per_block", "sample_size", "in_channels", "down_block_types", "only_cross_attention",
             "reverse_transformer_layers_per_block", "conv_in_kernel", "time_embedding_dim", "freq_shift"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(UNET_KEYS), VALUES, max_size=3))
def test_hostile_unet_configs_are_refused_or_build(changes):
    """Whatever a config says, it is refused with a typed error or the UNet builds (on the meta device)."""
    import torch

    from tensorsafe.pipeline.unet import UNet2DConditionModel

    base = dict(pt.sd_tiny.unet_kwargs("sd1"), cross_attention_dim=32)
    try:
        cfg = unet_config({**base, **changes})
    except TensorsafeError:
        return
    with torch.device("meta"):
        UNet2DConditionModel(cfg)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                                        "scaling_factor", "latents_mean", "in_channels"]), VALUES, max_size=3))
def test_hostile_vae_configs_are_refused_or_build(changes):
    import torch

    from tensorsafe.pipeline.vae import AutoencoderKL

    try:
        cfg = vae_config({**pt.sd_tiny.VAE_KWARGS, **changes})
    except TensorsafeError:
        return
    with torch.device("meta"):
        AutoencoderKL(cfg)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(alphabet="ab</w>", min_size=1, max_size=4), st.integers(-2, 12), max_size=10),
       st.lists(st.tuples(st.text(alphabet="ab", min_size=1, max_size=2), st.text(alphabet="ab</w>", min_size=1,
                                                                                   max_size=3)), max_size=5))
def test_hostile_tokenizer_tables_are_refused_or_load(vocab, merges):
    vocab = {**vocab, BOS: len(vocab), EOS: len(vocab) + 1} if vocab else vocab
    try:
        CLIPTokenizer(vocab, merges)
    except ParseError:
        return
