"""``tensorsafe convert`` from the command line: summaries, exit codes, and nothing ever lost."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
from tests.cli_runner import invoke

from tests import pickle_ops as op


@pytest.fixture
def tiny_ckpt(fixtures_dir):
    return fixtures_dir / "tiny-sd1.ckpt"


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tensorsafe-" in p.name)


def test_convert_summary_and_layout(tmp_path, tiny_ckpt):
    dst = tmp_path / "out"
    result = invoke(["convert", str(tiny_ckpt), str(dst)])
    assert result.exit_code == 0, result.output
    assert "family: sd1" in result.output and "evidence: key" in result.output
    assert json.loads((dst / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/config.json", "text_encoder/model.safetensors",
                "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        assert (dst / rel).is_file(), rel


def test_existing_destination_is_not_touched(tmp_path, tiny_ckpt):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep")
    result = invoke(["convert", str(tiny_ckpt), str(dst)])
    assert result.exit_code == 2 and "--overwrite" in result.output and "Traceback" not in result.output
    assert (dst / "mine.txt").read_text() == "keep"
    assert invoke(["convert", "-q", "--overwrite", str(tiny_ckpt), str(dst)]).exit_code == 0
    assert not (dst / "mine.txt").exists() and (dst / "unet").is_dir()
    assert _leftovers(tmp_path) == []


def test_malicious_checkpoint_is_refused(tmp_path):
    src = tmp_path / "evil.ckpt"
    src.write_bytes(op.call_system())
    result = invoke(["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "fails its scan" in result.output and "evil.ckpt" in result.output
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "storage-past-eof"])
def test_damaged_source_gives_one_line_and_no_output(tmp_path, tiny_ckpt, damage):
    data = tiny_ckpt.read_bytes()
    src = tmp_path / "bad.ckpt"
    if damage == "truncate":
        src.write_bytes(data[: len(data) // 2])
    else:  # the end record claims the archive is bigger than it is: storages run past the file
        src.write_bytes(data[:-4096] + data[-4096:].replace(b"PK\x05\x06", b"PK\x05\x07"))
    before = src.read_bytes()
    result = invoke(["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "bad.ckpt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    assert src.read_bytes() == before


def test_full_disk_leaves_nothing(tmp_path, tiny_ckpt, monkeypatch):
    from tensorsafe.converter import writer

    real = writer.write_safetensors
    calls = {"n": 0}

    def failing(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(writer, "write_safetensors", failing)
    monkeypatch.setattr("tensorsafe.converter.execute.write_safetensors", failing)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    result = invoke(["convert", "--overwrite", str(tiny_ckpt), str(dst)])
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert (dst / "old.txt").read_text() == "old" and sorted(p.name for p in dst.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path) == []


SLOW_CONVERT = """
import sys, time
from tensorsafe.converter import execute, writer
real = writer.write_safetensors
def slow(*a, **k):
    print("writing", flush=True)
    time.sleep(30)
    return real(*a, **k)
execute.write_safetensors = slow
from tensorsafe.cli.main import main
main(["convert", sys.argv[1], sys.argv[2]])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_kill_during_write_leaves_no_partial_output(tmp_path, tiny_ckpt, sig):
    dst = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(tiny_ckpt), str(dst)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert proc.stdout.readline().strip() == "writing"
    assert _leftovers(tmp_path), "the output is staged beside the destination while it is written"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not dst.exists() and _leftovers(tmp_path) == []


def test_inspect_shows_the_family_and_its_evidence(tiny_ckpt, tmp_path):
    result = invoke(["inspect", "--json", str(tiny_ckpt)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["format"] == "pytorch-zip" and doc["totals"]["tensors"] > 900
    assert doc["model"]["family"] == "sd1" and doc["model"]["components"] == ["unet", "vae", "text_encoder"]
    assert any("input_blocks.0.0.weight has shape [32, 4, 3, 3]" in e for e in doc["model"]["evidence"])
    text = invoke(["inspect", str(tiny_ckpt)]).output
    assert "Stable Diffusion family: sd1" in text and "assumed: prediction type epsilon" in text
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(op.call_system())
    refused = invoke(["inspect", str(evil)])
    assert refused.exit_code == 2 and "fails its scan" in refused.output
