"""What a render shows while it runs and after: a bar on a terminal, plain lines in a log, the CPU default size."""
from __future__ import annotations

import io
import json

import pytest
from tests.cli_runner import invoke
from PIL import Image

from tensorsafe.cli.progress import PlainLines, TerminalBar, duration, render_notes, step_reporter
from tensorsafe.converter.run import convert
from tensorsafe.pipeline import render
from tests import pipeline_tiny as pt
from tests.pipeline_tiny import one_torch_thread  # noqa: F401  (autouse fixture)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_are_few_and_say_the_time_left():
    stream, clock = io.StringIO(), FakeClock()
    report = PlainLines(stream, "render", clock)
    clock.now += 30  # loading the model: not a denoising step
    for done in range(1, 41):
        clock.now += 2.0
        report(done, 40)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "render: step 1/40 (2%)"
    assert lines[1] == "render: step 4/40 (10%), 2.00 s/step, about 1 min 12 s left"
    assert lines[-1] == "render: step 40/40 (100%), 2.00 s/step, done"
    assert len(lines) == 11 and "\r" not in stream.getvalue()


def test_plain_lines_for_a_render_that_starts_late_and_a_single_step():
    """img2img at strength 0.3 of 10 steps reports 3 steps; one step is one line."""
    stream, clock = io.StringIO(), FakeClock()
    report = PlainLines(stream, "render", clock)
    for done in range(1, 4):
        clock.now += 1.5
        report(done, 3)
    assert stream.getvalue().splitlines() == ["render: step 1/3 (33%)", "render: step 2/3 (66%), 1.50 s/step, about 2 s left",
                                              "render: step 3/3 (100%), 1.50 s/step, done"]
    stream = io.StringIO()
    PlainLines(stream, "render", clock)(1, 1)
    assert stream.getvalue() == "render: step 1/1 (100%)\n"


def test_reporter_is_a_bar_on_a_terminal_and_lines_elsewhere():
    terminal = Terminal()
    bar = step_reporter(stream=terminal)
    assert isinstance(bar, TerminalBar)
    for done in (1, 2, 3):
        bar(done, 3)
    assert "3/3" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert isinstance(step_reporter(stream=io.StringIO()), PlainLines)
    assert step_reporter(quiet=True, stream=terminal) is None


def test_duration_words():
    assert [duration(s) for s in (0.4, 59, 61, 3600 + 125)] == ["0 s", "59 s", "1 min 1 s", "1 h 2 min"]


def test_cli_prints_progress_lines_when_not_a_terminal(tmp_path):
    out = tmp_path / "cat.png"
    result = invoke(["render", str(pt.saved_folder("sd1")), "-p", "a cat", "--steps", "3",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "render: step 1/3 (33%)"
    assert lines[2].startswith("render: step 3/3 (100%), ") and lines[2].endswith(" s/step, done")
    assert lines[3].startswith(f"rendered {pt.saved_folder('sd1')} -> {out} (64x64, 3 steps")
    quiet = invoke(["render", str(pt.saved_folder("sd1")), "-p", "a cat", "--steps", "3", "-q",
                                      "-o", str(out)])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_cli_says_what_it_made_up(tmp_path):
    result = invoke(["render", str(pt.saved_folder("sd1-inpaint")), "-p", "a cat", "--steps", "1",
                                       "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    assert "  inpaint, strength 1.0; made up: image, mask (give --image --mask)" in result.output


@pytest.mark.slow
def test_default_size_is_capped_and_the_full_size_is_offered(tmp_path, monkeypatch):
    """The cap (512 on a CPU; 32 here, under the tiny model's own 64) applies only when no size is given."""
    folder = pt.saved_folder("sd1")
    image = render(folder, "a cat", steps=1, default_max_side=32)
    settings = json.loads(image.info["tensorsafe"])
    assert image.size == (32, 32) and settings["native_size"] == 64
    assert render(folder, "a cat", steps=1, size=64, default_max_side=32).size == (64, 64)
    assert "native_size" not in json.loads(render(folder, "a cat", steps=1, default_max_side=512).info["tensorsafe"])
    single = tmp_path / "model.safetensors"
    convert(folder, single)
    assert render(single, "a cat", steps=1, config=folder, default_max_side=32).size == (32, 32)

    import tensorsafe.pipeline.sizing as sizing

    monkeypatch.setattr(sizing, "CPU_FIRST_SIDE", 32)
    out = tmp_path / "cpu.png"
    result = invoke(["render", str(folder), "-p", "a cat", "--steps", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (32, 32)
    assert ("  32x32: the default on a CPU, to keep a first render short; the model's own size is 64x64: "
            "add --size 64 (about 4x the time), or --device cuda") in result.output


@pytest.mark.parametrize("settings,expected", [
    ({"task": "text2img", "size": [64, 64]}, []),
    ({"task": "pix2pix", "strength": 1.0, "image_guidance": 1.5, "size": [64, 64]},
     ["  pix2pix, strength 1.0, image guidance 1.5"]),
    ({"task": "depth", "strength": 0.8, "generated_inputs": ["depth_map"], "size": [64, 64]},
     ["  depth, strength 0.8; made up: depth_map (give --depth-map)"]),
])
def test_render_notes(settings, expected):
    assert render_notes(settings) == expected
