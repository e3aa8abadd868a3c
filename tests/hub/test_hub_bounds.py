"""hf:// reads against a misbehaving fake Hub (tests/fake_hub.py ``Faults``): every remote read ends by
the file's deadline, every listing is bounded, every size source must agree, and every server answer
ends in one readable IO-02/IO-03 line with exit 2, never a traceback, a hang or CLEAN.

The CLI runs in a subprocess under an address-space cap and a wall-clock limit, so that a hang or a
memory blow-up fails the test instead of stalling the suite.
"""
from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorsafe.hub.scan import scan_hub
from tensorsafe.limits import ScanLimits
from tensorsafe.hub.remote import RemoteBuffer
from tests import pickle_ops as op
from tests.fake_hub import FakeHub, Faults

ROOT = Path(__file__).resolve().parents[2]
MEMORY_CAP = 3 << 30
BENIGN = pickle.dumps({"epoch": 3, "step": 1200, "lr": 0.0001, "note": "optimizer state " * 4}, protocol=2)
"""A first pickle that passes; ``pickle.dumps`` only writes it."""
EVIL = BENIGN + op.call_system()
"""The benign pickle, then a second one that calls os.system("true"): CLEAN only when judged on a prefix."""


@pytest.fixture
def evil_repo(hub, tmp_path) -> FakeHub:
    (tmp_path / "state.pkl").write_bytes(EVIL)
    hub.add_repo("me/evil", {"state.pkl": tmp_path / "state.pkl"})
    return hub


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def cli(hub: FakeHub, tmp_path: Path, *args: str, limit: float = 60) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, seconds) of ``tensorsafe ARGS`` against the fake Hub; a traceback fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tensorsafe", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=limit, preexec_fn=_cap_memory, check=False)
    seconds = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return proc.returncode, out, seconds


def bounded(seconds: float, url: str, **kwargs):
    """``scan_hub(url, **kwargs)`` in a daemon thread; not done within ``seconds`` fails the test (a hang)."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(scan_hub(url, **kwargs)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"scan of {url} still running after {seconds} s"
    return out[0]


def _io_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "IO-03" in line or "IO-02" in line]


# -- the honest server: the control every lie below is measured against --------------------------------------------
def test_honest_server_finds_the_second_pickle(evil_repo, tmp_path):
    code, out, _ = cli(evil_repo, tmp_path, "scan", "hf://me/evil/state.pkl")
    assert code == 1 and "os.system" in out, out


# -- 1. time: one deadline for every request, retry and wait of a file ----------------------------------------------
@pytest.mark.slow
def test_slow_drip_body_is_stopped_by_the_deadline(evil_repo, tmp_path):
    """One byte a second never trips a read timeout; the deadline (--timeout 3) stops it."""
    evil_repo.faults = Faults(drip_seconds=1.0)
    code, out, seconds = cli(evil_repo, tmp_path, "scan", "--timeout", "3", "hf://me/evil/state.pkl", limit=60)
    assert code == 2 and "CLEAN" not in out, out
    assert any("IO-02" in line for line in _io_lines(out)), out
    assert seconds < 15, seconds


def test_deadline_bounds_the_library_scan_too(evil_repo):
    evil_repo.faults = Faults(drip_seconds=0.5)
    started = time.monotonic()
    fr = bounded(20, "hf://me/evil/state.pkl", limits=ScanLimits(timeout_seconds=1.5)).files[0]
    assert fr.verdict == "error" and "IO-02" in [f.rule_id for f in fr.findings]
    assert time.monotonic() - started < 8


def test_retry_after_past_the_deadline_is_not_slept(evil_repo, monkeypatch):
    monkeypatch.setattr("tensorsafe.hub.client.HTTP_RETRIES", 2)
    evil_repo.faults = Faults(get_status=429, retry_after="999999999")
    started = time.monotonic()
    fr = bounded(20, "hf://me/evil/state.pkl", limits=ScanLimits(timeout_seconds=5)).files[0]
    assert fr.verdict == "error" and [f.rule_id for f in fr.findings] == ["IO-03"]
    assert "retry" in fr.findings[0].message and time.monotonic() - started < 3


def test_retries_stop_at_the_deadline(evil_repo, monkeypatch):
    """Backoff between retries of a 503 (1 s, 2 s, 4 s ...) is cut by the deadline."""
    monkeypatch.setattr("tensorsafe.hub.client.HTTP_RETRIES", 50)
    evil_repo.faults = Faults(get_status=503)
    started = time.monotonic()
    fr = bounded(20, "hf://me/evil/state.pkl", limits=ScanLimits(timeout_seconds=2.5)).files[0]
    assert fr.verdict == "error" and time.monotonic() - started < 6


# -- 2. listings: bounded pages and files, and said so ---------------------------------------------------------------
def test_endless_pagination_ends_with_exit_2_naming_the_limit(hub, tmp_path):
    hub.add_repo("me/forever", {})
    hub.faults = Faults(listing_forever=True)
    code, out, seconds = cli(hub, tmp_path, "scan", "hf://me/forever", limit=90)
    assert code == 2 and "MAX_LISTING_PAGES" in out and "CLEAN" not in out, out
    assert hub.pages_served == 1_000 and seconds < 60


def test_page_and_file_bounds_are_keywords(hub, tmp_path):
    hub.add_repo("me/forever", {})
    hub.faults = Faults(listing_forever=True)
    fr = bounded(20, "hf://me/forever", max_pages=5).files[0]
    assert fr.verdict == "error" and "MAX_LISTING_PAGES" in fr.findings[0].message and hub.pages_served == 5
    hub.faults = Faults()
    for i in range(4):
        (tmp_path / f"{i}.pkl").write_bytes(BENIGN)
    hub.add_repo("me/four", {f"m{i}.pkl": tmp_path / f"{i}.pkl" for i in range(4)})
    fr = scan_hub("hf://me/four", max_files=3).files[0]
    assert fr.verdict == "error" and "MAX_LISTING_FILES" in fr.findings[0].message
    assert [f.verdict for f in scan_hub("hf://me/four", max_files=4).files] == ["clean"] * 4


def test_endless_pagination_is_also_bound_by_the_deadline(hub):
    hub.add_repo("me/forever", {})
    hub.faults = Faults(listing_forever=True)
    started = time.monotonic()
    fr = bounded(20, "hf://me/forever", limits=ScanLimits(timeout_seconds=0.5), max_pages=10 ** 9).files[0]
    assert fr.verdict == "error" and fr.findings[0].rule_id == "IO-02"
    assert time.monotonic() - started < 5


def test_next_page_on_another_host_is_refused(hub, monkeypatch):
    from tensorsafe.hub import http as hub_http
    hub.add_repo("me/forever", {})
    hub.faults = Faults(listing_forever=True)
    real = hub_http.urljoin
    monkeypatch.setattr(hub_http, "urljoin", lambda base, url: real(base, url).replace("127.0.0.1", "localhost"))
    fr = scan_hub("hf://me/forever").files[0]
    assert fr.verdict == "error" and "another host" in fr.findings[0].message and hub.pages_served == 1


# -- 3. every size source agrees, or nothing is judged ------------------------------------------------------------
def test_head_and_ranges_that_hide_the_tail_disagree_with_the_listing(evil_repo, tmp_path):
    """HEAD and every Content-Range agree on the benign prefix; only the listing tells the truth."""
    evil_repo.faults = Faults(pretend_size=len(BENIGN))
    code, out, _ = cli(evil_repo, tmp_path, "scan", "hf://me/evil/state.pkl")
    assert code == 2 and "the listing" in out and "CLEAN" not in out, out


def test_head_and_listing_that_understate_disagree_with_content_range(evil_repo, tmp_path):
    """HEAD and the listing say the benign prefix's size; the Content-Range total says the truth."""
    short = len(BENIGN)
    evil_repo.faults = Faults(head_size=str(short), listing_size={"state.pkl": short})
    code, out, _ = cli(evil_repo, tmp_path, "scan", "hf://me/evil/state.pkl")
    assert code == 2 and "Content-Range total" in out and "CLEAN" not in out, out


def test_content_range_total_disagreeing_with_head(evil_repo, tmp_path):
    evil_repo.faults = Faults(range_total=len(EVIL) + 1)
    code, out, _ = cli(evil_repo, tmp_path, "scan", "hf://me/evil/state.pkl")
    assert code == 2 and "Content-Range total" in out, out


def test_lfs_size_disagreeing_with_the_listing_size(evil_repo):
    evil_repo.faults = Faults(listing_lfs_size={"state.pkl": len(BENIGN)})
    fr = scan_hub("hf://me/evil").files[0]
    assert fr.verdict == "error" and "LFS" in fr.findings[0].message


def test_linked_size_disagreeing_with_content_length(evil_repo):
    evil_repo.faults = Faults(linked_size=str(len(BENIGN)))
    fr = scan_hub("hf://me/evil/state.pkl").files[0]
    assert fr.verdict == "error" and "X-Linked-Size" in fr.findings[0].message


# -- 4. any answer: one readable IO line, exit 2 --------------------------------------------------------------------
HUGE = str(1 << 50)
MISBEHAVIOURS = {
    "head 2^50 bytes": (Faults(head_size=HUGE, listing_size={"state.pkl": 1 << 50}), "MAX_REMOTE_FILE_BYTES"),
    "head negative": (Faults(head_size="-5"), "Content-Length"),
    "head not a number": (Faults(head_size="lots"), "Content-Length"),
    "content-range malformed": (Faults(content_range=lambda s, e, n: "bytes=garbage"), "malformed Content-Range"),
    "content-range wrong start": (Faults(content_range=lambda s, e, n: f"bytes {s + 1}-{e}/{n}"), "sent 1-"),
    "fewer bytes, no EOF": (Faults(short_body=True), "the server sent 0-"),
    "206 longer than asked": (Faults(extra_body=40, pretend_size=len(BENIGN) + 10,
                                     listing_size={"state.pkl": len(BENIGN) + 10}), "Content-Length"),
    "HTTP 500": (Faults(get_status=500), "HTTP 500"),
    "HTTP 429, Retry-After huge": (Faults(get_status=429, retry_after="999999999"), "past the deadline"),
    "redirect loop": (Faults(redirect_loop=True), "MAX_REDIRECTS"),
    "listing invalid JSON": (Faults(listing_body=b'[{"type": "file", "path": '), "not valid JSON"),
    "listing not a list of files": (Faults(listing_body=b'{"type": "file"}'), "not a list of files"),
    "listing size not a number": (Faults(listing_size={"state.pkl": "141"}), "not a byte count"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MISBEHAVIOURS))
def test_every_misbehaviour_is_one_io_line_and_exit_2(evil_repo, tmp_path, name):
    evil_repo.faults, expected = MISBEHAVIOURS[name]
    code, out, seconds = cli(evil_repo, tmp_path, "scan", "--timeout", "8", "hf://me/evil")
    assert code == 2 and "CLEAN" not in out, out
    lines = _io_lines(out)
    assert len(lines) == 1 and len(lines[0]) < 400 and expected in lines[0], out
    assert seconds < 30


_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content_range=_HEADER_TEXT, head_size=st.one_of(st.none(), _HEADER_TEXT))
def test_any_content_range_or_head_size_is_exact_or_an_io_error(evil_repo, content_range, head_size):
    """Hostile header text: the scan ends in an IO error (never a verdict from unchecked bytes), unless the
    text happens to be exactly the truth."""
    truth = f"bytes 0-{len(EVIL) - 1}/{len(EVIL)}"
    evil_repo.faults = Faults(content_range=lambda s, e, n: content_range, head_size=head_size)
    fr = scan_hub("hf://me/evil/state.pkl", limits=ScanLimits(timeout_seconds=10)).files[0]
    honest = content_range == truth and (head_size is None or head_size.strip() == str(len(EVIL)))
    if honest:
        assert fr.verdict == "fail"
    else:
        assert fr.verdict == "error" and [f.rule_id for f in fr.findings] == ["IO-03"], fr.findings


# -- 5. counting --------------------------------------------------------------------------------------------------
def test_byte_counter_is_exact_under_parallel_fetches(monkeypatch):
    """Many threads finishing fetches at once: the counters lose no update. (CPython 3.11's GIL does not
    switch inside ``+=`` on an attribute, so this guards the lock rather than observing the race; a
    free-threaded build would race without it.)"""
    data = bytes(range(256)) * 4096

    class Source:
        size = len(data)

        def fetch(self, start: int, end: int) -> bytes:
            return data[start:end]

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            buf = RemoteBuffer(Source(), readahead=0)
            ranges = [(i * 8192, i * 8192 + 10) for i in range(len(data) // 8192)]
            buf.prefetch(ranges)
            assert (buf.bytes_read, buf.requests) == (10 * len(ranges), len(ranges))
            buf.close()
    finally:
        sys.setswitchinterval(old)


def test_fake_hub_counts_bytes_before_the_client_has_them(evil_repo):
    """The count lands before the bytes are written, so a fast client never compares too early."""
    seen = []
    done = threading.Event()

    def fetch() -> None:
        fr = scan_hub("hf://me/evil/state.pkl").files[0]
        seen.append((fr.bytes_read, evil_repo.bytes_served("me/evil")))
        done.set()

    for _ in range(20):
        evil_repo.reset_counts()
        done.clear()
        threading.Thread(target=fetch).start()
        assert done.wait(30)
    assert all(read == served == len(EVIL) for read, served in seen), seen
