"""The all-clear fast path of ST-P05 (tensor names) never hides a finding: whenever the exact
per-name rule reports something, the fast path says "run the exact rule"."""
from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tensorsafe.limits import HeaderLimits
from tensorsafe.safetensors.policy_rules import _all_names_plain, name_problem

SMALL = HeaderLimits(max_name_bytes=6)
_ALPHABET = st.sampled_from(["a", "b", "/", ".", "\\", ":", "\n", "\0", "\x7f", "\t", " ", "é", "\u200b", "C:"])
_TEXT = st.lists(_ALPHABET, max_size=8).map("".join)


@settings(max_examples=600, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=5))
@example(["a", ""])
@example([""])
@example(["/a"])
@example(["a", "/b"])
@example(["a/../b"])
@example(["abcdefg"])
def test_names_fast_path_hides_no_finding(names):
    if _all_names_plain(tuple(names), SMALL.max_name_bytes):
        assert [n for n in names if name_problem(n, SMALL.max_name_bytes)] == []


def test_the_fast_path_takes_plain_names():
    assert _all_names_plain(("model.layers.0.weight", "lm_head.weight"), 1024)
