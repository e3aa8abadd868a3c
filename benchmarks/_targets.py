"""How every benchmark ends: each target printed as met or MISS, and an exit status that says it.

A benchmark whose process exits 0 after missing its target reads as a pass in CI and in a shell
loop; here a missed target is exit 1 and named. A ``--quick`` run is a smoke run on tiny inputs,
where start-up dominates and the targets (about real sizes) mean nothing: its targets are printed
but not enforced, and it says so. A failed run (a command that crashed, a wrong answer) fails even
a quick run.
"""
from __future__ import annotations

from collections.abc import Iterable


def finish(targets: Iterable[tuple[str, bool]], *, quick: bool, failures: Iterable[str] = ()) -> int:
    """Print the targets and failures; the process exit status: 1 if a failure, or a missed target
    on a full run; else 0."""
    targets, failures = list(targets), list(failures)
    print("\nTargets" + (" (--quick: printed, not enforced; run without --quick to check them):" if quick else ":"))
    for text, ok in targets:
        print(f"  [{'met ' if ok else 'MISS'}] {text}")
    for text in failures:
        print(f"  [FAIL] {text}")
    missed = [text for text, ok in targets if not ok]
    if failures:
        print(f"\nFAILED: {len(failures)} run(s) failed")
        return 1
    if missed and not quick:
        print(f"\nTARGET MISSED ({len(missed)} of {len(targets)}): " + "; ".join(missed))
        return 1
    print("\nall targets met" if not missed else f"\n{len(missed)} target(s) missed on a --quick run (not enforced)")
    return 0
