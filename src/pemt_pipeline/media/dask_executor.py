"""Run a function over items on a Dask cluster, in supervised subprocesses of the Dask workers:
`workers.run_supervised`'s guarantees, across machines.

`dask_client(address, local_workers)` connects to the scheduler at `address` (``tcp://host:8786``)
or, when it is None, starts a `distributed.LocalCluster` of `local_workers` single-threaded worker
processes for the call. `run_on_dask(client, fn, items, ...)` yields ``(index, result)`` in
completion order, as `run_supervised` does: the result is ``fn(items[index])`` or a `TaskFailure`.

Rules:

- Items go out in the given order (sort them longest first), in batches of consecutive items, one
  task per batch with decreasing priority, and at most `BATCHES_PER_THREAD` (2) batches per worker
  thread in flight (the next goes as one finishes): a worker has its next batch while it runs one,
  so it does not idle for the round trip through the scheduler between batches (about 20 ms a
  batch on a busy machine, 1.19x the pool's time on the demo with one worker when it held one),
  yet holds no more of the list than that. A batch has up to
  `max_batch` items, fewer as the items run out (half the remaining items per worker thread), so
  that the last tasks are single items and no worker is left with a long tail. Results
  come back a batch at a time. Why batches: forking a subprocess from a Dask worker that has
  imported torch costs about 0.1 s, as much as ingesting a small video, and a fresh subprocess
  runs its first items slower than a warm one (caches, copy-on-write): a batch pays that once.
- On the Dask worker, a batch runs in one subprocess under `run_supervised` (`timeout_s`,
  `memory_limit_mb`; a fresh subprocess after a failure), kept for the next batch of the same run
  on that worker thread (`workers.WorkerPool`: forked once, warm caches): a crash (FFmpeg), an overrun or a memory
  blow-up is that item's `TaskFailure`, with the same reasons and details as the local pool. The
  subprocess is forked from the Dask worker (a Nanny's worker is a daemonic process, which
  multiprocessing forbids children: the task lifts that flag), starts in the driver's working folder
  when the worker has it (so relative paths mean what they mean in the driver), runs `initializer`,
  and is killed with the Dask worker if that dies (Linux: PR_SET_PDEATHSIG).
- A Dask worker that dies while holding a batch (running it or next in line; killed, out of memory,
  machine lost): the scheduler runs it on another worker until
  ``distributed.scheduler.allowed-failures`` (default 3) workers died on it. Then each of its items
  goes again alone (an item the lost batch had finished is then quick for an idempotent `fn`:
  ingestion finds its shard up to date), and from then on one batch per worker thread is in flight,
  so that an item going alone is not next in line behind another on a worker; an item that kills
  its workers alone is ``TaskFailure("worker_died")`` naming Dask and the last worker.
  Tasks are never retried for raising (``retries=0``): `fn` catches its own errors.
- Anything else stops the run with an error, as the cluster's fault rather than an item's: a
  worker that cannot run the project's code (not installed there), that does not see a path of
  `shared_paths`, a task the scheduler cancelled (restarted, connection lost). On an error or
  Ctrl-C in the driver, the batches not started are cancelled; those running finish on their workers.
- `fn`, the items and the results travel between machines: they must be picklable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import dask
from dask.utils import funcname
from distributed import Client, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from pemt_pipeline.media.workers import TaskFailure, WorkerPool, run_supervised

T = TypeVar("T")
R = TypeVar("R")

WORKERS_WAIT_S = 60.0  # how long a scheduler without workers is given to get one
MAX_BATCH = 16  # items per task at most (module docstring)
BATCHES_PER_THREAD = 2  # batches in flight per worker thread (module docstring)
_PR_SET_PDEATHSIG = 1


def cluster_threads(client: Client) -> int:
    """Worker threads of the cluster now (the items in flight at most)."""
    return sum(client.nthreads().values())


@contextlib.contextmanager
def _quiet(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """The logger `name` at `level` or above while the block runs."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def dask_client(address: str | None, local_workers: int, parameter: str = "the scheduler address",
                connect_timeout_s: float = 30.0) -> Iterator[Client]:
    """A client of the scheduler at `address` (waiting up to `WORKERS_WAIT_S` for a worker), or of a
    LocalCluster of `local_workers` single-threaded worker processes started here and closed after.
    Errors name `parameter` (the setting that gave `address`)."""
    if address is None:
        # no statistical profiler on its workers: it costs a few % of a core each, and nobody reads it here;
        # the in-process scheduler's INFO lines (clients, workers coming and going) would drown the run's log
        with dask.config.set({"distributed.worker.profile.enabled": False}), _quiet("distributed"), \
                LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(address, timeout=connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address!r} ({parameter}): {exc}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError:
            raise RuntimeError(f"the Dask scheduler at {address!r} ({parameter}) has no worker after "
                               f"{WORKERS_WAIT_S:g} s; start some: dask worker {address} --nthreads 1") from None
        yield client


def _die_with_parent(parent_pid: int) -> None:
    """In a supervised subprocess: be killed when the Dask worker that forked it dies (Linux), so an
    orphan neither runs on nor keeps the worker's connections open."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the worker died before the line above
            os._exit(1)


def _prepare_child(parent_pid: int, workdir: str | None, initializer: Callable[[], None] | None) -> None:
    _die_with_parent(parent_pid)
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)
    if initializer is not None:
        initializer()


_kept: dict[int, tuple[bytes, Callable[[], None], WorkerPool]] = {}  # worker thread -> its subprocess


def _kept_subprocess(workdir: str | None, initializer: Callable[[], None] | None) -> tuple[Callable, WorkerPool]:
    """On a Dask worker: this thread's kept subprocess (`WorkerPool`) and its initializer, the same
    objects while the run's settings are the same (a new run's replace them)."""
    key = pickle.dumps((workdir, initializer))
    thread = threading.get_ident()
    if thread not in _kept or _kept[thread][0] != key:
        if thread in _kept:
            _kept[thread][2].close()
        prepare = functools.partial(_prepare_child, os.getpid(), workdir, initializer)
        _kept[thread] = (key, prepare, WorkerPool())
    return _kept[thread][1], _kept[thread][2]


def _run_batch(fn: Callable[[T], R], batch: Sequence[T], timeout_s: float, memory_limit_mb: float,
               initializer: Callable[[], None] | None, workdir: str | None) -> list[R | TaskFailure]:
    """On a Dask worker: ``fn`` over `batch` in a supervised subprocess; results in batch order."""
    this = multiprocessing.current_process()
    if this.daemon:  # a Nanny's worker: daemonic, so multiprocessing would refuse it children
        this.daemon = False
    prepare, pool = _kept_subprocess(workdir, initializer)
    results: list[R | TaskFailure | None] = [None] * len(batch)
    run = run_supervised(fn, batch, 1, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb, initializer=prepare,
                         pool=pool)
    with contextlib.closing(run):
        for k, result in run:
            results[k] = result
    return results


def _missing(paths: Sequence[str], workdir: str) -> list[str]:
    """On a Dask worker: the paths it does not see (relative ones resolved against `workdir`)."""
    return [p for p in paths if not os.path.exists(os.path.join(workdir, p))]


def _check_workers(client: Client, paths: Sequence[str], workdir: str) -> None:
    local = [str(p) for p in paths if "://" not in str(p) and os.path.exists(p)]
    try:
        missing = client.run(_missing, local, workdir)
    except Exception as exc:  # noqa: BLE001 - whatever the worker raised, say what it means
        raise RuntimeError(f"a Dask worker cannot run the project's code ({type(exc).__name__}: {exc}); every "
                           "machine needs the project installed (make bootstrap, same requirements.lock)") from None
    blind = {worker: found for worker, found in missing.items() if found}
    if blind:
        worker, found = next(iter(blind.items()))
        raise RuntimeError(f"{len(blind)} Dask worker(s), e.g. {worker}, do not see {found[0]!r} (relative paths are "
                           f"resolved against the driver's folder {workdir}): every machine needs the source videos "
                           "and the shard folder at the same paths as here (a shared filesystem)")


def _killed(exc: KilledWorker) -> TaskFailure:
    worker = getattr(exc.last_worker, "address", exc.last_worker)
    return TaskFailure("worker_died", f"the Dask worker {worker} died while running it, the last of "
                                      f"{exc.allowed_failures + 1} Dask worker(s) that died on it "
                                      "(distributed.scheduler.allowed-failures)")


def run_on_dask(client: Client, fn: Callable[[T], R], items: Sequence[T], *, timeout_s: float = 0,
                memory_limit_mb: float = 0, initializer: Callable[[], None] | None = None,
                shared_paths: Sequence[str] = (), workdir: str | None = None, max_batch: int = MAX_BATCH
                ) -> Iterator[tuple[int, R | TaskFailure]]:
    """Yield ``(index of item, fn(item) or TaskFailure)`` as each batch of items finishes on the cluster.

    `timeout_s`, `memory_limit_mb` and `initializer` are `run_supervised`'s, per item; every worker
    must see `shared_paths` (those that exist here; URLs are not checked), resolved against
    `workdir` (default: this process's working folder), where each item starts. See the module
    docstring for the rules.
    """
    if timeout_s < 0 or memory_limit_mb < 0 or max_batch < 1:
        raise ValueError("timeout_s and memory_limit_mb must be >= 0 (0: no limit) and max_batch >= 1")
    workdir = workdir or os.getcwd()
    if items:
        _check_workers(client, shared_paths, workdir)
    prefix, token = funcname(fn), uuid.uuid4().hex[:8]
    pending = deque(range(len(items)))
    alone: set[int] = set()  # items of a lost batch, which go again one by one
    batches: dict = {}  # future -> its items' indices
    done = as_completed(loop=client.loop)

    def top_up() -> None:
        threads = max(1, cluster_threads(client))  # now: a worker may have died or joined
        in_flight = threads if alone else BATCHES_PER_THREAD * threads  # after a loss: one each (docstring)
        while pending and len(batches) < in_flight:
            first = pending.popleft()
            batch = [first]
            if first not in alone:
                size = min(max_batch, max(1, len(pending) // (2 * threads)))
                while pending and len(batch) < size and pending[0] not in alone:
                    batch.append(pending.popleft())
            future = client.submit(_run_batch, fn, [items[i] for i in batch], timeout_s, memory_limit_mb,
                                   initializer, workdir, key=f"{prefix}-{token}-{first}-{len(batch)}",
                                   priority=len(items) - first, retries=0, pure=False)
            batches[future] = batch
            done.add(future)

    try:
        top_up()
        for future in done:
            batch = batches.pop(future)
            try:
                results = future.result()
            except KilledWorker as exc:
                if len(batch) > 1 or batch[0] not in alone:  # which item killed its workers? each alone, first
                    alone.update(batch)
                    pending.extendleft(reversed(batch))
                    results = []
                else:
                    results = [_killed(exc)]
            except asyncio.CancelledError:
                raise RuntimeError(f"the Dask scheduler cancelled items {batch} (restarted, or the connection to "
                                   "it was lost)") from None
            except Exception as exc:  # noqa: BLE001 - the task itself failed: the cluster's fault (docstring)
                raise RuntimeError(f"items {batch} failed on their Dask worker: {type(exc).__name__}: {exc}") \
                    from exc
            del future
            for i, result in zip(batch, results):
                yield i, result
            top_up()
    finally:
        if batches:
            client.cancel(list(batches))
