"""Right answers for odd inputs (issue 14): files that are not safetensors, --config tokenizers,
missing parent folders, library-worded errors, and Ctrl-C."""
from __future__ import annotations

import gzip
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from tests.cli_runner import invoke

from tensorsafe.safetensors import HeaderFormatError, validate_file
from tensorsafe.safetensors.inspect import inspect_file

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _torch_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"step": 1}, protocol=2))
        z.writestr("archive/version", "3\n")


ODD_FILES = {
    "model.pt": (_torch_zip, "a PyTorch zip checkpoint"),
    "legacy.bin": (lambda p: p.write_bytes(pickle.dumps(TORCH_LEGACY_MAGIC, protocol=2) + pickle.dumps(1001)),
                   "a legacy torch.save checkpoint"),
    "model.gguf": (lambda p: p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0)), "a GGUF model"),
    "config.json": (lambda p: p.write_text(json.dumps({"_class_name": "UNet2DConditionModel", "x": [1, 2]})),
                    "JSON text"),
    "weights.gz": (lambda p: p.write_bytes(gzip.compress(b"\0" * 1000)), "gzip-compressed data"),
    "data.pkl": (lambda p: p.write_bytes(pickle.dumps([1, 2, 3], protocol=4)), "a pickle"),
    "README.md": (lambda p: p.write_text("# a model card\n\nnothing to see here\n"), "text"),
    "pointer": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64
                                       + "\nsize 1234\n"), "a Git LFS pointer"),
}


@pytest.fixture(params=sorted(ODD_FILES))
def odd_file(request, tmp_path) -> tuple[Path, str]:
    make, looks = ODD_FILES[request.param]
    path = tmp_path / request.param
    make(path)
    return path, looks


def test_validate_names_what_a_non_safetensors_file_is(odd_file):
    path, looks = odd_file
    result = validate_file(path)
    assert len(result.findings) == 1
    finding = result.findings[0]
    assert finding.rule_id.startswith("ST-F")
    assert finding.message.startswith(f"not a safetensors file (looks like {looks}")
    assert "declared header length" not in finding.message


def test_validate_cli_says_not_safetensors_and_exits_2(odd_file):
    path, looks = odd_file
    run = invoke(["validate", str(path)])
    assert run.exit_code == 2, run.output
    assert f"not a safetensors file (looks like {looks}" in run.output
    assert "over the 100,000,000-byte limit" not in run.output


@pytest.mark.parametrize("name", ["model.gguf", "config.json", "README.md", "weights.gz"])
def test_inspect_says_not_safetensors(tmp_path, name):
    make, looks = ODD_FILES[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(HeaderFormatError, match=rf"not a safetensors file \(looks like {looks}\)"):
        inspect_file(path)
    run = invoke(["inspect", str(path)])
    assert run.exit_code == 2
    assert f"not a safetensors file (looks like {looks})" in run.output
    assert "Traceback" not in run.output


def test_unknown_bytes_are_not_safetensors_either(tmp_path):
    path = tmp_path / "blob.dat"
    path.write_bytes(bytes(range(7, 255)) * 3)
    message = validate_file(path).findings[0].message
    assert message.startswith("not a safetensors file (its bytes, starting 07 08 09")


def test_a_file_named_safetensors_keeps_its_format_error(tmp_path):
    """A .safetensors file was meant to be one: the format error stays, with the hint when we know better."""
    rand = tmp_path / "random.safetensors"
    rand.write_bytes(bytes(range(251, 0, -1)) * 4)
    finding = validate_file(rand).findings[0]
    assert finding.rule_id == "ST-F02" and "declared header length" in finding.message
    assert "looks like" not in finding.message
    gguf = tmp_path / "mislabelled.safetensors"
    ODD_FILES["model.gguf"][0](gguf)
    finding = validate_file(gguf).findings[0]
    assert finding.rule_id == "ST-F02" and "declared header length" in finding.message
    assert finding.message.endswith("the bytes look like a GGUF model, not safetensors")


def test_a_file_that_starts_like_safetensors_keeps_its_format_error(tmp_path):
    header = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    path = tmp_path / "truncated.bin"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    finding = validate_file(path).findings[0]
    assert finding.rule_id.startswith("ST-F")
    assert "not a safetensors file" not in finding.message


# -- convert --config DIR takes DIR's tokenizers --------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table (the base of every byte-level BPE vocabulary)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def _small_clip_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer of 516 ids (a tiny text encoder has 1000 embeddings; CLIP's has 49408)."""
    base = _bytes_to_unicode()
    merges = [("c", "a"), ("ca", "t</w>")]
    tokens = base + [c + "</w>" for c in base] + ["ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": 77,
                                                              "tokenizer_class": "CLIPTokenizer"}))


@pytest.fixture(scope="module")
def sd2_with_own_tokenizer(tmp_path_factory):
    """A tiny SD2 diffusers folder whose tokenizer fits its 1000-token text encoder, and it as one file."""
    import shutil

    from tensorsafe.converter.run import convert
    from tests.converter.test_convert_end_to_end import _reference_folder

    tmp = tmp_path_factory.mktemp("sd2tok")
    reference, _ = _reference_folder(tmp, "sd2", 4)
    shutil.rmtree(reference / "tokenizer")
    _small_clip_tokenizer(reference / "tokenizer")
    single = tmp / "model.safetensors"
    convert(reference, single)
    return reference, single


def test_config_folder_supplies_the_tokenizer(tmp_path, sd2_with_own_tokenizer):
    from tensorsafe.converter.run import convert

    reference, single = sd2_with_own_tokenizer
    convert(single, tmp_path / "out", config=str(reference))
    ours = {p.name: p.read_bytes() for p in (tmp_path / "out" / "tokenizer").iterdir()}
    theirs = {p.name: p.read_bytes() for p in (reference / "tokenizer").iterdir()}
    assert ours == theirs


def test_converted_model_with_its_own_tokenizer_renders(tmp_path, sd2_with_own_tokenizer):
    """With the bundled tokenizer (49408 ids) the 1000-embedding text encoder cannot encode a prompt."""
    from tensorsafe.converter.run import convert
    from tensorsafe.pipeline import render

    reference, single = sd2_with_own_tokenizer
    convert(single, tmp_path / "out", config=str(reference))
    image = render(tmp_path / "out", "a cat", steps=1, size=(32, 32))
    assert image.size == (32, 32)


def test_config_folder_without_a_tokenizer_gets_the_bundled_one_and_says_so(tmp_path, sd2_with_own_tokenizer):
    import shutil

    from tensorsafe.converter.run import convert
    from tensorsafe.converter.tokenizer import tokenizer_files

    reference, single = sd2_with_own_tokenizer
    configs = tmp_path / "configs"
    shutil.copytree(reference, configs, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer"))
    result = convert(single, tmp_path / "out", config=str(configs))
    assert (tmp_path / "out" / "tokenizer" / "vocab.json").read_bytes() == tokenizer_files("!")["vocab.json"]
    assert any("bundled CLIP tokenizer" in n for n in result.notes)


def test_config_tokenizer_folder_without_vocabulary_is_refused(tmp_path, sd2_with_own_tokenizer):
    import shutil

    from tensorsafe.converter.run import convert
    from tensorsafe.errors import ParseError

    reference, single = sd2_with_own_tokenizer
    configs = tmp_path / "configs"
    shutil.copytree(reference, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    (configs / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ParseError, match="needs vocab.json and merges.txt"):
        convert(single, tmp_path / "out", config=str(configs))
    assert not (tmp_path / "out").exists()


def test_config_tokenizer_symlink_out_of_the_folder_is_refused(tmp_path, sd2_with_own_tokenizer):
    import shutil

    from tensorsafe.converter.run import convert
    from tensorsafe.errors import ContainmentError

    reference, single = sd2_with_own_tokenizer
    configs = tmp_path / "configs"
    shutil.copytree(reference, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy me")
    (configs / "tokenizer" / "added_tokens.json").symlink_to(secret)
    with pytest.raises(ContainmentError):
        convert(single, tmp_path / "out", config=str(configs))
    assert not (tmp_path / "out").exists()


# -- missing parent folders: refused the same way for a folder and a file destination -------------------------
@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory):
    """A tiny SD1 single file (converted from the pipeline tests' folder)."""
    from tensorsafe.converter.run import convert
    from tests import pipeline_tiny as pt

    single = tmp_path_factory.mktemp("single") / "model.safetensors"
    convert(pt.saved_folder("sd1"), single)
    return single


def test_missing_parent_is_refused_alike_for_folder_and_file(tmp_path, tiny_single):
    from tensorsafe.converter.run import convert
    from tensorsafe.errors import UsageError
    from tests import pipeline_tiny as pt

    for src, dst in ((tiny_single, tmp_path / "no" / "such" / "out"),
                     (pt.saved_folder("sd1"), tmp_path / "no" / "such" / "out.safetensors")):
        with pytest.raises(UsageError, match=r"parent folder .*such does not exist; parent folders are not created"):
            convert(src, dst)
    assert not (tmp_path / "no").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for src, dst in ((tiny_single, blocker / "out"), (pt.saved_folder("sd1"), blocker / "out.safetensors")):
        with pytest.raises(UsageError, match=r"a-file is not a folder"):
            convert(src, dst)


def test_convert_help_says_parents_are_not_created():
    text = invoke(["convert", "--help"]).output
    assert "parent folders are not created" in " ".join(text.split())


# -- library calls speak library, the CLI speaks flags -------------------------------------------------------
def test_library_error_names_the_keyword_argument(tmp_path, tiny_single):
    import tensorsafe
    from tensorsafe.errors import UsageError

    existing = tmp_path / "out"
    existing.mkdir()
    with pytest.raises(UsageError) as caught:
        tensorsafe.convert(tiny_single, existing)
    assert "overwrite=True" in str(caught.value) and "--overwrite" not in str(caught.value)
    assert "--overwrite" in caught.value.cli_message()
    with pytest.raises(UsageError) as caught:
        tensorsafe.convert(tiny_single, tmp_path / "x", ema="sometimes")
    assert "ema must be one of" in str(caught.value) and "--" not in str(caught.value)


def test_cli_error_names_the_flag(tmp_path, tiny_single):
    existing = tmp_path / "out"
    existing.mkdir()
    run = invoke(["convert", str(tiny_single), str(existing)])
    assert run.exit_code == 2
    assert "pass --overwrite to replace it" in run.output and "overwrite=True" not in run.output
    run = invoke(["convert", str(tiny_single), str(tmp_path / "y"), "--model-type", "sd9"])
    assert run.exit_code == 2 and "unknown --model-type 'sd9'" in run.output


def test_option_spelling():
    from tensorsafe.errors import UsageError, option, spell_options

    text = (f"{option('overwrite')}, {option('model_type', 'FAMILY')}, {option('ema', 'no')}, "
            f"{option('max_memory_bytes', None, cli='--max-memory')}")
    assert spell_options(text) == "overwrite=True, model_type=FAMILY, ema='no', max_memory_bytes"
    assert spell_options(text, cli=True) == "--overwrite, --model-type FAMILY, --ema no, --max-memory"
    error = UsageError(text, path="p")
    assert str(error) == "p: " + spell_options(text) and error.args == (spell_options(text),)
    assert error.cli_message() == "p: " + spell_options(text, cli=True)


def test_no_cli_flag_left_in_library_error_messages():
    """Every ``raise`` under the library packages names options through ``option()``, never as ``--flag``."""
    import re

    root = Path(__file__).resolve().parents[2] / "tensorsafe"
    files = [*root.glob("converter/**/*.py"), *root.glob("pipeline/**/*.py"), *root.glob("safetensors/**/*.py"),
             *root.glob("readers/**/*.py"), *root.glob("engine/**/*.py"), *root.glob("hub/**/*.py"),
             root / "api.py", root / "paths.py", root / "limits.py", root / "load.py", root / "checkpoint.py"]
    assert len(files) > 60 and all(f.is_file() for f in files)
    offenders = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        for m in re.finditer(r"raise \w+\((?:[^()]|\([^()]*\))*\)", source):
            if re.search(r"[\"' ]--[a-z]", m.group(0)) and "option(" not in m.group(0):
                offenders.append(f"{path.name}: {m.group(0)[:80]}")
    assert not [o for o in offenders if "--limit" not in o], offenders


# -- Ctrl-C: one line, exit 130, no traceback, no staging folder left --------------------------------------
MARK = "tensorsafe-test: started"
LAUNCH = (f"import sys, tensorsafe; sys.stderr.write({MARK!r} + '\\n'); sys.stderr.flush(); "
          "from tensorsafe.cli.entry import main; sys.argv[0] = 'tensorsafe'; main()")
"""What the console script does (``from tensorsafe.cli.entry import main; main()``), after a line that says the
interpreter is up: its own start-up (site, .pth files) runs before any code of ours can handle Ctrl-C."""
DELAYS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
"""From the start line: the first lands while ``tensorsafe.cli.main`` and the command import (an early Ctrl-C
hits); the module ``tensorsafe.cli.entry`` itself needs about a millisecond before its handler is in place."""


def _interrupt(args: list[str], delay: float, cwd: Path) -> tuple[int | None, str, bool]:
    """(exit code, stderr after the start line, whether it was still running when interrupted)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        before = []
        while (line := proc.stderr.readline()) and line.strip() != MARK:
            before.append(line)
        assert line, f"the process ended before it started: {''.join(before)}"
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, running


@pytest.fixture(scope="module")
def many_pickles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(800):  # about 3 s of scanning: every interrupt lands while it runs
        (folder / f"m{i:04}.pkl").write_bytes(pickle.dumps({"weights": list(range(5000)), "i": i}, protocol=4))
    return folder


@pytest.mark.parametrize("delay", DELAYS)
def test_ctrl_c_during_scan_exits_130_with_one_line(many_pickles, tmp_path, delay):
    rc, err, running = _interrupt(["scan", str(many_pickles)], delay, tmp_path)
    assert running, "the scan finished before the interrupt: make the folder bigger"
    assert "Traceback" not in err and "Aborted" not in err
    assert (rc, err) == (130, "tensorsafe: interrupted\n")


@pytest.mark.parametrize("delay", DELAYS)
def test_ctrl_c_during_convert_leaves_no_staging_folder(tiny_single, tmp_path, delay):
    dst = tmp_path / "out"
    rc, err, running = _interrupt(["convert", "-q", str(tiny_single), str(dst)], delay, tmp_path)
    assert "Traceback" not in err
    if running:
        assert (rc, err) == (130, "tensorsafe: interrupted\n") or (rc == 0 and dst.is_dir()), (rc, err)
    assert not [p.name for p in tmp_path.iterdir() if ".tensorsafe-tmp-" in p.name or ".tensorsafe-old-" in p.name]
    if dst.exists():  # finished before the interrupt: complete
        assert (dst / "model_index.json").is_file()


def test_ctrl_c_in_a_command_is_not_exit_1(monkeypatch):
    """A KeyboardInterrupt inside a command is one line and exit 130 (exit 1 means a finding fails)."""
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tensorsafe.api.validate", boom)
    monkeypatch.setattr("tensorsafe.safetensors.validator.validate_file", boom)
    run = invoke(["validate", __file__])
    assert run.exit_code == 130 and "Aborted" not in run.output
    assert run.output.strip() == "tensorsafe: interrupted"


SWALLOWED = """
import signal, sys, weakref
from tensorsafe.cli.interrupts import _interrupt_once, redeliver_swallowed
signal.signal(signal.SIGINT, _interrupt_once)
sys.unraisablehook = redeliver_swallowed
class Owner:
    pass
owner = Owner()
def callback(ref):  # as the import system's module-lock clean-up: Python cannot raise from here
    signal.raise_signal(signal.SIGINT)
watch = weakref.ref(owner, callback)
try:
    del owner
    for i in range(10 ** 8):
        pass
    print("the Ctrl-C was lost")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_ctrl_c_landing_in_a_weakref_callback_is_delivered_again():
    """An interrupt raised inside a weakref callback (an import's lock clean-up) is "Exception ignored":
    printed with a traceback, then lost. The console entry's hook delivers it again instead."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=120)
    assert (done.stdout, done.stderr) == ("interrupted\n", "")


def test_console_script_points_at_the_interrupt_handling_entry():
    import tomllib

    data = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["tensorsafe"] == "tensorsafe.cli.entry:main"


def test_ctrl_c_in_a_terminal_reaches_the_workers_too_and_none_prints_a_traceback(many_pickles, tmp_path):
    """A terminal sends SIGINT to the whole process group: the `--jobs` workers must stay quiet."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "scan", "--jobs", "2", str(many_pickles)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while (line := proc.stderr.readline()) and line.strip() != MARK:
            pass
        time.sleep(0.4)  # the workers are up and scanning
        running = proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert running, "the scan finished before the interrupt: make the folder bigger"
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode in (0, 130), (proc.returncode, err[-2000:])  # 0: it landed while shutting down
