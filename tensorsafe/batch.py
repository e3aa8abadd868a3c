"""Scan or validate many files on any ``concurrent.futures.Executor``: a process pool on one
machine, a distributed engine (dask, ray, ...) across many.

Files travel to workers in chunks, because one future per small file costs more than scanning
it; results stream back as each chunk finishes. A chunk whose worker fails (the process died,
ran out of memory, a result could not be pickled) is retried file by file, so the file at fault
ends as an error result (never clean) and every other file is still judged: one bad file never
stops the batch.

    from concurrent.futures import ProcessPoolExecutor
    from tensorsafe.batch import collect, scan_many

    with ProcessPoolExecutor(8) as pool:
        for result in scan_many(["./models"], executor=pool):   # as each chunk finishes
            print(result.path, result.verdict)
    report = collect(scan_many(["./models"], jobs=8, ordered=True))
"""
from __future__ import annotations

import functools
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Union

from tensorsafe.api import scan
from tensorsafe.limits import DEFAULT_LIMITS, ScanLimits
from tensorsafe.listing import iter_files
from tensorsafe.pickles.policy import Policy
from tensorsafe.policy_file import describe, resolve_policy
from tensorsafe.report import FileResult, Finding, Report

if TYPE_CHECKING:
    from tensorsafe.limits import HeaderLimits
    from tensorsafe.policy_file import PolicyConfig

DEFAULT_CHUNK_SIZE = 16
"""Files per task: large enough that a tiny file does not pay a round trip of its own, small
enough that a chunk holding one slow checkpoint does not hold up many others."""
ATTEMPTS_PER_FILE = 2
"""Runs of a file on its own after its chunk failed, before it is reported as an error."""
PENDING_PER_WORKER = 4
"""Tasks kept in flight per worker: enough to hide the round trip, few enough to bound memory."""

ExecutorLike = Union[Executor, Callable[[], Executor]]
ItemScanner = Callable[[str], "list[FileResult]"]


# -- what runs on a worker (top-level functions, so every executor can pickle them) -------------
def scan_item(item: str, policy: Policy, limits: ScanLimits | None, explain: bool,
              allow_empty: bool = False) -> list[FileResult]:
    """Scan one path exactly as :func:`tensorsafe.scan` does (the driver's policy, its limits)."""
    return scan([item], policy, limits, explain=explain, allow_empty=allow_empty).files


def validate_item(item: str, limits: HeaderLimits | None, deep: bool, overrides: Mapping[str, int] | None) -> list[FileResult]:
    """Validate one file exactly as :func:`tensorsafe.validate` does."""
    from tensorsafe.safetensors.validator import validate_file

    return [validate_file(item, limits, deep=deep, overrides=overrides)]


def run_chunk(fn: ItemScanner, items: list[str], attempt: int = 0) -> list[list[FileResult]]:
    """The results of ``fn`` for each item; an item that raises becomes an error result.

    ``attempt`` only makes a retry a different task to engines that cache tasks by their arguments.
    """
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:  # a bug marks this item, not the batch
            out.append([error_result(item, exc, worker_failed=False)])
    return out


def error_result(item: str, exc: BaseException, *, worker_failed: bool = True) -> FileResult:
    """A result that says the file was not judged (IO-01 when it could not be read, else ARC-05):
    its worker failed, or (``worker_failed=False``) scanning it raised."""
    rule_id = "IO-01" if isinstance(exc, OSError) else "ARC-05"
    cause = f"{type(exc).__name__}: {str(exc) or type(exc).__name__}"
    message = f"not judged: the worker failed ({cause})" if worker_failed else f"not judged: {cause}"
    return FileResult(path=item, kind="other", findings=[Finding(item, rule_id, message)])


# -- the driver -----------------------------------------------------------------------------------
@dataclass
class _Task:
    seqs: list[int]
    items: list[str]
    attempt: int = 0


class _Pool:
    """The executor in use; one that tensorsafe made from a factory is replaced when it breaks."""

    def __init__(self, executor: ExecutorLike | None, jobs: int | None):
        if executor is None and jobs not in (None, 1):
            executor = functools.partial(ProcessPoolExecutor, jobs or os.cpu_count() or 1)
        given = executor is not None and hasattr(executor, "submit")  # an executor, not a factory of one
        self.factory: Callable[[], Executor] | None = None if executor is None or given else executor  # type: ignore[assignment]
        self.executor: Executor | None = executor if given else None  # type: ignore[assignment]
        self.generation = 0
        if self.factory is not None:
            self.executor = self.factory()

    def restart(self, generation: int) -> bool:
        """Replace a broken executor we own (once per break); False when it is not ours to replace."""
        if self.factory is None:
            return False
        if generation == self.generation:
            if self.executor is not None:
                self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self.factory()
            self.generation += 1
        return True

    def close(self, finished: bool) -> None:
        if self.factory is not None and self.executor is not None:
            self.executor.shutdown(wait=finished, cancel_futures=True)


def workers_of(executor: Executor | None) -> int:
    """How many tasks the executor runs at once, as far as it tells (process/thread pools, dask)."""
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    client = getattr(executor, "_client", None)  # distributed.cfexecutor.ClientExecutor
    try:
        return max(1, sum(client.nthreads().values()))  # type: ignore[union-attr]  # no client: AttributeError
    except Exception:
        return os.cpu_count() or 1


def run_many(fn: ItemScanner, items: Iterable[str], *, executor: ExecutorLike | None = None,
             jobs: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE, ordered: bool = False,
             max_pending: int | None = None) -> Iterator[FileResult]:
    """Apply ``fn`` (picklable, ``str -> list[FileResult]``) to every item on the executor.

    ``executor``: an ``Executor`` (used as is, never shut down), or a zero-argument factory that
    returns one (tensorsafe owns it: replaced if it breaks, shut down at the end). ``jobs``:
    instead of an executor, a process pool of that many workers (0: one per CPU); neither, or
    ``jobs=1``: scan in this process. Results come as each chunk finishes, or in input order
    with ``ordered=True`` (still streamed; later chunks wait in memory for an earlier slow one).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if jobs is not None and jobs < 0:
        raise ValueError("jobs must be 0 (one per CPU) or more")
    if executor is not None and jobs is not None:
        raise ValueError("give executor or jobs, not both")
    return _drive(fn, items, executor, jobs, chunk_size, ordered, max_pending)


def _drive(fn: ItemScanner, items: Iterable[str], executor: ExecutorLike | None, jobs: int | None,
           chunk_size: int, ordered: bool, max_pending: int | None) -> Iterator[FileResult]:
    pool = _Pool(executor, jobs)
    if pool.executor is None:
        for item in items:
            for per_item in run_chunk(fn, [item]):
                yield from per_item
        return
    pending_limit = max_pending or PENDING_PER_WORKER * workers_of(pool.executor)
    window = pending_limit * chunk_size * 4  # ordered: how far past the oldest unfinished file to read
    source = _chunked(items, chunk_size)
    suspects: deque[_Task] = deque()  # files of failed chunks, run one at a time to find the culprit
    pending: dict[Future, tuple[_Task, int, bool]] = {}
    ready: dict[int, list[FileResult]] = {}
    next_seq = read_seq = 0
    exhausted = suspect_busy = finished = False
    try:
        while True:
            done_now: list[tuple[_Task, list[list[FileResult]]]] = []
            while True:
                if suspects:  # new chunks wait until the suspects are cleared
                    if suspect_busy:
                        break
                    task, suspect = suspects.popleft(), True
                elif exhausted or len(pending) >= pending_limit or (ordered and read_seq - next_seq >= window):
                    break
                else:
                    upcoming, suspect = next(source, None), False
                    if upcoming is None:
                        exhausted = True
                        break
                    task = upcoming
                    read_seq = task.seqs[-1] + 1
                try:
                    future = pool.executor.submit(run_chunk, fn, task.items, task.attempt)
                except Exception as exc:  # a broken executor refuses new work
                    done_now.extend(_failed(task, exc, pool, pool.generation, suspects))
                    continue
                pending[future] = (task, pool.generation, suspect)
                suspect_busy = suspect_busy or suspect
            if not pending and not done_now:
                break
            if not done_now:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task, generation, suspect = pending.pop(future)
                    suspect_busy = suspect_busy and not suspect
                    try:
                        done_now.append((task, future.result()))
                    except BaseException as exc:  # noqa: BLE001 (a cancelled future raises CancelledError)
                        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                            raise
                        done_now.extend(_failed(task, exc, pool, generation, suspects))
            for task, results in done_now:
                if not ordered:
                    for per_item in results:
                        yield from per_item
                    continue
                ready.update(zip(task.seqs, results))
                while next_seq in ready:
                    yield from ready.pop(next_seq)
                    next_seq += 1
        finished = True
    finally:
        for future in pending:
            future.cancel()
        pool.close(finished)


def _chunked(items: Iterable[str], size: int) -> Iterator[_Task]:
    task = _Task([], [])
    for seq, item in enumerate(items):
        task.seqs.append(seq)
        task.items.append(item)
        if len(task.items) == size:
            yield task
            task = _Task([], [])
    if task.items:
        yield task


def _failed(task: _Task, exc: BaseException, pool: _Pool, generation: int,
            suspects: deque[_Task]) -> list[tuple[_Task, list[list[FileResult]]]]:
    """Split a failed chunk into single files to find the one at fault; a file that fails on its
    own ``ATTEMPTS_PER_FILE`` times, or that no executor is left to run, is an error result."""
    broken = isinstance(exc, BrokenExecutor) or type(exc).__name__ == "CancelledError"
    can_retry = not broken or pool.restart(generation)
    if can_retry and len(task.items) > 1:
        suspects.extend(_Task([s], [i], 1) for s, i in zip(task.seqs, task.items))
        return []
    if can_retry and task.attempt < ATTEMPTS_PER_FILE:
        suspects.append(_Task(task.seqs, task.items, task.attempt + 1))
        return []
    return [(task, [[error_result(item, exc)] for item in task.items])]


# -- public API ---------------------------------------------------------------------------------
def expand(paths: str | os.PathLike | Iterable[str | os.PathLike], *, allow_empty: bool = False) -> Iterator[str]:
    """Files under ``paths`` in the order :func:`tensorsafe.scan` takes them; URLs
    (``scheme://...``) pass through untouched, for the worker to resolve."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        if isinstance(p, str) and "://" in p:
            yield p
        else:
            yield from (os.fspath(f) for f in iter_files([p], allow_empty=allow_empty))


def scan_many(paths: str | os.PathLike | Iterable[str | os.PathLike], policy: Policy | PolicyConfig | None = None,
              limits: ScanLimits | None = None, *, explain: bool = False, executor: ExecutorLike | None = None,
              jobs: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE, ordered: bool = False,
              max_pending: int | None = None, allow_empty: bool = False) -> Iterator[FileResult]:
    """Scan files and folders on an executor, yielding each file's result as its chunk finishes.

    The results are those of :func:`tensorsafe.scan` (same policy rules: without ``policy``, the
    built-in policy; never a policy file found near the scanned paths), in completion order, or
    input order with ``ordered=True``. Paths are read lazily, so millions of them can stream through; they must be readable where the workers run. A file whose worker
    fails is an error result (ARC-05 or IO-01), never clean, and the rest go on. See
    :func:`run_many` for ``executor``/``jobs``; :func:`collect` turns the stream into a Report.
    """
    fn = functools.partial(scan_item, policy=resolve_policy(policy), limits=limits, explain=explain,
                           allow_empty=allow_empty)
    return run_many(fn, expand(paths, allow_empty=allow_empty), executor=executor, jobs=jobs, chunk_size=chunk_size, ordered=ordered,
                    max_pending=max_pending)


def validate_many(paths: str | os.PathLike | Iterable[str | os.PathLike], limits: HeaderLimits | None = None, *, deep: bool = False,
                  overrides: Mapping[str, int] | None = None, executor: ExecutorLike | None = None,
                  jobs: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE, ordered: bool = False,
                  max_pending: int | None = None) -> Iterator[FileResult]:
    """:func:`tensorsafe.validate` on an executor, streamed like :func:`scan_many`."""
    from tensorsafe.safetensors.validator import iter_candidates

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if overrides:
        DEFAULT_LIMITS.updated(overrides)  # refuse unknown names before any file is read
    fn = functools.partial(validate_item, limits=limits, deep=deep, overrides=overrides)
    return run_many(fn, (os.fspath(p) for p in iter_candidates(paths)), executor=executor, jobs=jobs,
                    chunk_size=chunk_size, ordered=ordered, max_pending=max_pending)


def collect(results: Iterable[FileResult], policy: Policy | PolicyConfig | None = None) -> Report:
    """A Report of streamed results (in the order they came); ``policy``: the one they were scanned
    under, named in ``report.policy`` (default: the built-in policy)."""
    return Report(files=list(results), policy=describe(resolve_policy(policy)))
