"""Render progress people see: a tqdm bar on a terminal, a few plain lines in a log (CI, a pipe, a file).

A bar redrawn with carriage returns turns a CI log into one long line of noise, and a render that
prints nothing for minutes looks hung; so when stderr is not a terminal, progress is a line at the
first step, at about every tenth of the steps and at the last, each with the time per step and the
time left, so that a slow CPU render says early how long it will take.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tensorsafe.report import printable

Reporter = Callable[[int, int], None]
LINES = 10  # progress lines in a log, at most (plus the first)


def step_reporter(quiet: bool = False, stream: TextIO | None = None, label: str = "render") -> Reporter | None:
    """A ``progress(done, total)`` callback for :func:`tensorsafe.pipeline.render`, or None when quiet."""
    if quiet:
        return None
    stream = sys.stderr if stream is None else stream
    label = printable(label)  # drawn raw by tqdm and the log lines
    isatty = getattr(stream, "isatty", None)
    return TerminalBar(stream, label) if isatty is not None and isatty() else PlainLines(stream, label)


class TerminalBar:
    """tqdm's bar, opened at the first step (so nothing is drawn while the model loads)."""

    def __init__(self, stream: TextIO, label: str):
        self.stream, self.label, self.bar = stream, label, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=self.stream, dynamic_ncols=True, desc=self.label)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


class PlainLines:
    """``render: step 3/20 (15%), 1.20 s/step, about 20 s left`` at the first step, each tenth and the last.

    The time per step is measured from the end of the first step, so loading the model and encoding
    the prompt do not count as denoising time."""

    def __init__(self, stream: TextIO, label: str, clock: Callable[[], float] = time.monotonic):
        self.stream, self.label, self.clock = stream, label, clock
        self.first: float | None = None  # when the first step ended
        self.shown = -1  # the last tenth printed

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        tenth = done * LINES // max(total, 1)
        first_call = self.first is None
        if first_call:
            self.first, self.first_done = now, done
        if not first_call and done < total and tenth == self.shown:
            return
        self.shown = tenth
        head = f"{self.label}: step {done}/{total} ({100 * done // max(total, 1)}%)"
        if done - self.first_done < 1:
            print(head, file=self.stream, flush=True)
            return
        per_step = (now - self.first) / (done - self.first_done)
        tail = "done" if done >= total else f"about {duration(per_step * (total - done))} left"
        print(f"{head}, {per_step:.2f} s/step, {tail}", file=self.stream, flush=True)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 2 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def render_notes(settings: dict) -> list[str]:
    """Lines after ``rendered ...``: the task and its inputs, and how to ask for the model's full size."""
    notes = []
    task = settings.get("task", "text2img")
    if task != "text2img":
        made = settings.get("generated_inputs", [])
        text = f"  {task}, strength {settings.get('strength')}"
        if "image_guidance" in settings:
            text += f", image guidance {settings['image_guidance']}"
        if made:
            text += f"; made up: {', '.join(made)} (give --{' --'.join(n.replace('_', '-') for n in made)})"
        notes.append(text)
    native = settings.get("native_size")
    if native:
        width, height = settings["size"]
        notes.append(f"  {width}x{height}: the default on a CPU, to keep a first render short; the model's own "
                     f"size is {native}x{native}: add --size {native} (about {round((native / width) ** 2)}x the "
                     "time), or --device cuda")
    return notes


def check_render_note(png) -> str:
    """`` (inpaint, made-up image and mask)`` for the check render's line; empty for text-to-image."""
    from PIL import Image

    with Image.open(png) as image:
        settings = json.loads(image.info.get("tensorsafe", "{}"))
    task, made = settings.get("task", "text2img"), settings.get("generated_inputs", [])
    if task == "text2img":
        return ""
    return f" ({task}, made-up {' and '.join(name.replace('_', ' ') for name in made)})" if made else f" ({task})"
