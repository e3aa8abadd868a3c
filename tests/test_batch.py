"""``scan_many`` / ``--jobs``: the same results as a sequential scan, on any executor, streamed,
and one file that breaks its worker never stops the batch."""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from tests.cli_runner import invoke
from safetensors.numpy import save as st_save

import tensorsafe
from tensorsafe.batch import collect, scan_many, validate_many
from tests import pickle_ops as op

SYSTEM = op.call_system()
BENIGN = op.proto(2) + op.EMPTY_DICT + op.STOP
CUSTOM = op.proto(2) + op.global_("mylab.schedules", "Cosine") + op.EMPTY_TUPLE + op.REDUCE + op.STOP
MARK = "CRASH"
"""Files whose name holds this make the test executors below fail (die or raise) on them."""


def _torch_zip(pickle_bytes: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4))
    return buf.getvalue()


@pytest.fixture
def mixed(tmp_path):
    """A folder of clean, malicious and unparseable files, and a repository whose pyproject
    allows an import (never read as policy: it lies inside the scanned folder)."""
    root = tmp_path / "mixed"
    files = {
        "clean.pkl": BENIGN, "evil.pkl": SYSTEM, "broken.pkl": op.proto(2) + b"\xff",
        "ckpt_evil.pt": _torch_zip(SYSTEM), "ckpt_ok.pt": _torch_zip(BENIGN), "array.npy": _npy(),
        "weights.safetensors": st_save({"w": np.ones((2, 2), dtype=np.float32)}),
        "notes.txt": b"just text\n", "config.json": b'{"a": 1}', "custom.bin": CUSTOM,
        "sub/deeper/evil2.bin": SYSTEM, "sub/clean2.pkl": BENIGN,
        "repo/pyproject.toml": b'[tool.tensorsafe]\nallow = ["mylab.schedules.Cosine"]\n',
        "repo/weights/custom.bin": CUSTOM,
    }
    for i in range(6):
        files[f"many/{i:02d}.pkl"] = BENIGN if i % 3 else SYSTEM
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "repo" / ".git").mkdir()
    return root


def _summary(fr: tensorsafe.FileResult):
    return (fr.path, fr.kind, fr.size, fr.pickles, fr.verdict, tuple(fr.findings), tuple(fr.imports))


def _expected(root) -> list:
    return [_summary(fr) for fr in tensorsafe.scan(root).files]


def test_the_fixture_folder_holds_every_verdict(mixed):
    by_name = {os.path.relpath(fr.path, mixed): fr.verdict for fr in tensorsafe.scan(mixed).files}
    assert by_name["evil.pkl"] == by_name["ckpt_evil.pt"] == by_name["custom.bin"] == "fail"
    assert by_name["broken.pkl"] == "error"
    assert by_name["clean.pkl"] == "clean"
    assert by_name["repo/weights/custom.bin"] == "fail"  # its repository's pyproject is not the scan's policy


@pytest.mark.parametrize("make", [
    pytest.param(lambda: ProcessPoolExecutor(2), id="process-pool"),
    pytest.param(lambda: ThreadPoolExecutor(3), id="thread-pool"),
])
def test_executors_give_the_sequential_results(mixed, make):
    expected = _expected(mixed)
    with make() as pool:
        ordered = [_summary(fr) for fr in scan_many(mixed, executor=pool, chunk_size=3, ordered=True)]
        streamed = [_summary(fr) for fr in scan_many([mixed], executor=pool, chunk_size=4)]
    assert ordered == expected
    assert sorted(streamed) == sorted(expected)


def test_jobs_owns_a_process_pool_and_collects_a_report(mixed):
    report = collect(scan_many(mixed, jobs=2, chunk_size=5, ordered=True))
    assert [_summary(fr) for fr in report.files] == _expected(mixed)
    assert report.exit_code == tensorsafe.scan(mixed).exit_code == 1


def test_an_explicit_policy_reaches_the_workers(mixed):
    from tensorsafe.pickles.policy import DEFAULT_POLICY

    policy = DEFAULT_POLICY.extended(allow=["mylab.schedules.Cosine"])
    results = {os.path.relpath(fr.path, mixed): fr.verdict for fr in scan_many(mixed, policy, jobs=2)}
    assert results["custom.bin"] == "clean" and results["evil.pkl"] == "fail"


# -- failures ---------------------------------------------------------------------------------
class _Failing:
    """Makes an executor's worker fail on marked files: ``die`` (process exits) or ``raise``."""

    def __init__(self, how: str):
        self.how = how

    def submit(self, fn, *args, **kwargs):
        return super().submit(_call_failing, self.how, fn, *args, **kwargs)


def _call_failing(how: str, fn, *args, **kwargs):
    items = args[1]  # run_chunk(fn, items, attempt)
    if any(MARK in item for item in items):
        if how == "die":
            os._exit(3)
        raise MemoryError("simulated worker failure")
    return fn(*args, **kwargs)


class DyingPool(_Failing, ProcessPoolExecutor):
    def __init__(self, workers: int):
        _Failing.__init__(self, "die")
        ProcessPoolExecutor.__init__(self, workers)


class RaisingPool(_Failing, ThreadPoolExecutor):
    def __init__(self, workers: int):
        _Failing.__init__(self, "raise")
        ThreadPoolExecutor.__init__(self, workers)


def _with_culprit(root):
    (root / f"{MARK}.pkl").write_bytes(BENIGN)  # clean bytes: only the worker failure can fail it
    expected = {s[0]: s for s in _expected(root)}
    return str(root / f"{MARK}.pkl"), expected


def _check_only_culprit_failed(results, culprit, expected, exc_name):
    got = {fr.path: fr for fr in results}
    assert set(got) == set(expected)
    bad = got.pop(culprit)
    assert bad.verdict == "error" and [f.rule_id for f in bad.findings] == ["ARC-05"]
    assert exc_name in bad.findings[0].message
    assert {p: _summary(fr) for p, fr in got.items()} == {p: s for p, s in expected.items() if p != culprit}


def test_a_worker_that_dies_marks_only_its_file(mixed):
    culprit, expected = _with_culprit(mixed)
    results = list(scan_many(mixed, executor=functools.partial(DyingPool, 2), chunk_size=4))
    _check_only_culprit_failed(results, culprit, expected, "BrokenProcessPool")


def test_a_worker_that_raises_marks_only_its_file(mixed):
    culprit, expected = _with_culprit(mixed)
    with RaisingPool(2) as pool:
        results = list(scan_many(mixed, executor=pool, chunk_size=4, ordered=True))
    assert [fr.path for fr in results] == list(expected)
    _check_only_culprit_failed(results, culprit, expected, "MemoryError")


def test_a_broken_executor_we_do_not_own_still_answers_for_every_file(mixed):
    culprit, expected = _with_culprit(mixed)
    with DyingPool(2) as pool:
        results = list(scan_many(mixed, executor=pool, chunk_size=2))
    assert sorted(fr.path for fr in results) == sorted(expected)
    for fr in results:  # judged as usual, or not judged and said so: never a false clean
        assert _summary(fr) == expected[fr.path] or (fr.verdict == "error" and fr.findings[0].rule_id == "ARC-05")
    assert next(fr for fr in results if fr.path == culprit).verdict == "error"


def test_a_bad_policy_table_in_a_scanned_repository_is_never_read(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[tool.tensorsafe]\nallow = [1\n')
    (repo / "a.pkl").write_bytes(BENIGN)
    (tmp_path / "b.pkl").write_bytes(SYSTEM)
    seq = {os.path.relpath(fr.path, tmp_path): fr.verdict for fr in tensorsafe.scan(tmp_path).files}
    got = {os.path.relpath(fr.path, tmp_path): fr.verdict for fr in scan_many(tmp_path, jobs=2)}
    assert got == seq
    assert got["b.pkl"] == "fail" and got[os.path.join("repo", "a.pkl")] == "clean"


# -- streaming --------------------------------------------------------------------------------
class GatedPool(ThreadPoolExecutor):
    """Holds back the chunk of the marked file until the test opens the gate."""

    def __init__(self):
        super().__init__(2)
        self.gate = threading.Event()
        self.opened_by_timeout = False

    def submit(self, fn, *args, **kwargs):
        def gated():
            if any(MARK in item for item in args[1]) and not self.gate.wait(timeout=10):
                self.opened_by_timeout = True
            return fn(*args, **kwargs)
        return super().submit(gated)


@pytest.mark.parametrize("ordered", [False, True])
def test_results_stream_back_while_a_slow_file_is_still_running(tmp_path, ordered):
    for i in range(8):
        (tmp_path / f"f{i}.pkl").write_bytes(SYSTEM if i % 2 else BENIGN)
    (tmp_path / f"z{MARK}.pkl").write_bytes(BENIGN)  # last in input order
    with GatedPool() as pool:
        stream = scan_many(tmp_path, executor=pool, chunk_size=1, ordered=ordered, max_pending=16)
        first = [next(stream) for _ in range(8)]
        assert not pool.gate.is_set() and not pool.opened_by_timeout  # the slow file is still held
        pool.gate.set()
        rest = list(stream)
    assert MARK not in "".join(fr.path for fr in first)
    assert [fr.path for fr in rest] == [str(tmp_path / f"z{MARK}.pkl")]
    if ordered:
        assert [fr.path for fr in first] == [str(tmp_path / f"f{i}.pkl") for i in range(8)]


def test_many_paths_are_read_lazily(tmp_path):
    (tmp_path / "a.pkl").write_bytes(BENIGN)
    taken = []

    def paths():
        for i in range(10_000):
            taken.append(i)
            yield tmp_path / "a.pkl"

    with ThreadPoolExecutor(2) as pool:
        stream = scan_many(paths(), executor=pool, chunk_size=2, max_pending=2)
        assert next(stream).verdict == "clean"
        assert len(taken) < 100
        stream.close()


def test_bad_arguments_are_refused_at_the_call(tmp_path):
    with pytest.raises(ValueError):
        scan_many(tmp_path, chunk_size=0)
    with pytest.raises(ValueError):
        scan_many(tmp_path, jobs=2, executor=ThreadPoolExecutor(1))


# -- the CLI ----------------------------------------------------------------------------------
def _without_seconds(doc: dict) -> dict:
    for fr in doc["files"]:
        fr.pop("seconds", None)
    return doc


@pytest.mark.parametrize("fmt", ["--text", "--json"])
def test_cli_jobs_gives_the_same_report(mixed, fmt):
    one = invoke(["scan", fmt, "-v", "--jobs", "1", str(mixed)])
    two = invoke(["scan", fmt, "-v", "--jobs", "2", str(mixed)])
    assert one.exit_code == two.exit_code == 1
    if fmt == "--json":
        assert _without_seconds(json.loads(two.output)) == _without_seconds(json.loads(one.output))
    else:
        assert two.output == one.output and "evil.pkl: FAIL" in one.output


def test_cli_validate_jobs_gives_the_same_report(tmp_path):
    for i in range(5):
        (tmp_path / f"w{i}.safetensors").write_bytes(st_save({f"t{i}": np.zeros((i + 1,), dtype=np.float32)}))
    (tmp_path / "cut.safetensors").write_bytes(st_save({"t": np.zeros(4, dtype=np.float32)})[:-3])
    one = invoke(["validate", "-v", str(tmp_path)])
    two = invoke(["validate", "-v", "-j", "0", str(tmp_path)])
    assert one.exit_code == two.exit_code == 2 and two.output == one.output
    assert [fr.path for fr in validate_many(tmp_path, jobs=2, ordered=True)] == \
        [fr.path for fr in tensorsafe.validate(tmp_path).files]


# -- a distributed engine: dask on a local cluster ---------------------------------------------
def test_dask_distributed_executor(mixed):
    from distributed import Client, LocalCluster

    expected = _expected(mixed)
    started = time.monotonic()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        with client.get_executor() as executor:
            results = [_summary(fr) for fr in scan_many(mixed, executor=executor, chunk_size=3, ordered=True)]
        workers = {w["host"] for w in client.scheduler_info()["workers"].values()}
    assert results == expected
    assert workers == {"127.0.0.1"}
    assert time.monotonic() - started < 60
