"""Run a function over items in supervised worker processes: a crash, an overrun or a memory blow-up
costs one item, never the run.

`run_supervised(fn, items, workers, timeout_s=..., memory_limit_mb=...)` yields ``(index, result)``
as each item finishes (completion order), where the result is ``fn(items[index])`` or a
`TaskFailure` naming what went wrong with that item. Every index is yielded exactly once.

Rules:

- Workers are processes started with the "fork" start method. `fn`, `items` and `initializer` reach
  them through the fork (they need not be picklable, and must not change during the run: a fresh
  worker sees them as they are when it starts); only the index of an item goes to a worker and
  only the result comes back (the result must be picklable). `initializer` runs once in each worker.
- Each worker holds one item at a time, so a failure belongs to exactly one item. Items are handed
  out in the given order (sort them longest first).
- The parent watches every item in flight, waking at least every `poll_s` seconds while a memory
  limit is set. A worker that dies, overruns or goes over the memory limit is killed (SIGKILL) if
  still alive, its item is reported as a failure, and a fresh worker takes the next item.
- A run always supervises in subprocesses, even with one worker and no limits: a segfault in
  native code (FFmpeg) or the out-of-memory killer then costs one item, not the run. To debug
  `fn` in-process (pdb, profilers), call it directly.
- `pool=WorkerPool()` keeps the workers for the next call instead of stopping them: they are forked
  once, take `initializer` once, and receive each item with `fn` pickled (``(fn, item)`` must then
  be picklable); a worker that failed is replaced as always, and a call with another `initializer`
  (another object) starts fresh ones. For callers that run many short batches (a Dask worker, `dask_executor`),
  where a fork per batch and cold caches would cost as much as the items. `pool.close()` stops them.
- Workers ignore SIGINT: on Ctrl-C the parent gets the KeyboardInterrupt and stops them. When the
  generator finishes, is closed (``close()``, `contextlib.closing`, garbage collection) or the
  parent raises, every worker is stopped and joined. A worker whose parent disappears sees its pipe
  close and exits. Workers are daemonic: `fn` may start subprocesses but not `multiprocessing`
  processes.

Failure reasons (`TaskFailure.reason`):

| reason       | meaning |
|--------------|---------|
| worker_died  | the worker ended while it held the item: killed by a signal or exited (``os._exit``) |
| timeout      | the item took longer than `timeout_s`; the worker was killed |
| memory_limit | the worker's own memory went over `memory_limit_mb`; the worker was killed |
| worker_error | `fn` raised (it is expected to catch its own errors) or its result could not be pickled |

The detail of ``worker_died`` names the signal: SIGKILL is most often the out-of-memory killer,
SIGSEGV, SIGBUS or SIGABRT a crash in native code (FFmpeg).

Memory is measured on Linux only, from /proc: the resident set (``/proc/<pid>/statm``, cheap) on
every poll and, when that is over the limit, the memory the worker does not share with other
processes (``Private_Clean + Private_Dirty`` of ``/proc/<pid>/smaps_rollup``), so that the pages the
fork shares with the parent do not count. That read costs milliseconds for a big process, so while
the resident set stays below the limit plus the parent's size it is repeated at most every
10 x workers x its cost (e.g. every 0.3 s per worker for a 500 MB parent and 2 workers); a worker
growing fast is caught on the next poll. A worker over the limit after it finished an item is
replaced quietly (memory a previous item left behind must not be blamed on the next). On other
systems the memory limit is not enforced and a warning says so. There is no RLIMIT_AS: torch and
FFmpeg reserve far more address space than they use. MB here means 2**20 bytes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


@dataclass(frozen=True)
class TaskFailure:
    """Why an item produced no result: `reason` is a code of the module docstring's table."""

    reason: str
    detail: str


def _size(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 30):.1f} GB" if n_bytes >= 1 << 30 else f"{n_bytes / MB:.0f} MB"


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _private_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_"))
    except (OSError, ValueError, IndexError):
        return None


def _serve(conn, parent_ends, fn, items, initializer) -> None:
    """Worker loop: receive an index (of the inherited `items`, run with `fn`) or ``(index, fn,
    item)`` (a `WorkerPool`'s), send back ("ok" | "error", index, payload); None or EOF stops."""
    for end in parent_ends:  # so that the pipes close when the parent goes away
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        try:
            initializer()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
            conn.send(("init_error", -1, f"{type(exc).__name__}: {exc}"))
            return
    while True:
        try:
            index = conn.recv()
        except (EOFError, OSError):
            return
        if index is None:
            return
        try:
            if isinstance(index, tuple):
                index, task, item = index
                message = ("ok", index, task(item))
            else:
                message = ("ok", index, fn(items[index]))
        except Exception as exc:  # noqa: BLE001 - one item's error must not stop the worker
            message = ("error", index, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(message)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send(("error", index, f"the result could not be sent back: {type(exc).__name__}: {exc}"))


class _Worker:
    """One worker process, its end of the pipe and the item it holds (None when idle)."""

    def __init__(self, context, fn, items, initializer, others: list[_Worker]):
        self.conn, child = context.Pipe()
        self.inherited = _rss_bytes(os.getpid()) or 0  # the most it can share with the parent
        self.next_exact = 0.0  # when smaps_rollup may be read again
        parent_ends = [self.conn] + [w.conn for w in others]
        self.process = context.Process(target=_serve, args=(child, parent_ends, fn, items, initializer),
                                       name="pemt-worker", daemon=True)
        self.process.start()
        child.close()
        self.index: int | None = None
        self.started = 0.0

    def give(self, index: int, sent: tuple | None = None) -> bool:
        """Hand over item `index` (`sent`: ``(fn, item)`` to pickle to a `WorkerPool`'s worker)."""
        try:
            self.conn.send(index if sent is None else (index, *sent))
        except OSError:  # already dead: the sentinel says so on the next wait
            return False
        self.index, self.started = index, time.monotonic()
        return True

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def memory_over(self, limit: float, pause_factor: float) -> int:
        """The worker's own memory if over `limit`, else 0 (module docstring). Reading smaps_rollup
        costs milliseconds for a big process: it waits `pause_factor` times its last cost."""
        pid = self.process.pid
        rss = _rss_bytes(pid)
        if rss is None or rss <= limit:
            return 0
        surely_over = rss - self.inherited > limit
        if not surely_over and time.monotonic() < self.next_exact:
            return 0
        start = time.monotonic()
        private = _private_bytes(pid)
        self.next_exact = time.monotonic() + pause_factor * (time.monotonic() - start)
        used = rss if private is None else private
        return used if used > limit else 0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def _death(worker: _Worker) -> str:
    code, pid = worker.process.exitcode, worker.process.pid
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            what = f"was killed by signal {-code}"
        else:
            why = ("; often the out-of-memory killer" if sig == signal.SIGKILL
                   else "; a crash in native code, e.g. FFmpeg" if sig in _CRASH_SIGNALS else "")
            what = f"was killed by signal {-code} ({sig.name}{why})"
    else:
        what = f"exited with code {code}"
    return f"the worker (pid {pid}) {what} after {worker.elapsed():.1f} s on this item"


class WorkerPool:
    """Worker processes kept between `run_supervised` calls (``pool=``; module docstring). Not
    thread-safe: one call at a time. `close()` stops them (also when the pool is collected)."""

    def __init__(self):
        self.workers: list[_Worker] = []
        self.initializer: Callable[[], None] | None = None

    def take(self, initializer: Callable[[], None] | None, count: int) -> list[_Worker]:
        """Up to `count` kept workers, for a call with `initializer` (another one: none are kept)."""
        if initializer is not self.initializer:
            self.close()
            self.initializer = initializer
        live = [w for w in self.workers if w.process.is_alive()]
        _shutdown([w for w in self.workers if w not in live[:count]])
        self.workers = []
        return live[:count]

    def keep(self, workers: list[_Worker]) -> None:
        """Keep the idle live workers of a finished call; stop the rest."""
        self.workers = [w for w in workers if w.index is None and w.process.is_alive()]
        _shutdown([w for w in workers if w not in self.workers])

    def close(self) -> None:
        _shutdown(self.workers)
        self.workers = []

    def __del__(self):
        self.close()


def run_supervised(fn: Callable[[T], R], items: Sequence[T], workers: int, *, timeout_s: float = 0,
                   memory_limit_mb: float = 0, initializer: Callable[[], None] | None = None,
                   poll_s: float = 0.05, pool: WorkerPool | None = None) -> Iterator[tuple[int, R | TaskFailure]]:
    """Yield ``(index of item, fn(item) or TaskFailure)`` as each item finishes, in completion order.

    `workers` processes (at most one per item) run `fn`; `timeout_s` and `memory_limit_mb` are per
    item / per worker limits (0: none); `initializer` runs once in each worker; `poll_s` is the
    longest wait between two checks of the limits; `pool` keeps the workers for the next call. See
    the module docstring for the rules.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if timeout_s < 0 or memory_limit_mb < 0 or poll_s <= 0:
        raise ValueError("timeout_s and memory_limit_mb must be >= 0 (0: no limit) and poll_s > 0")
    limit = memory_limit_mb * MB
    if limit and _rss_bytes(os.getpid()) is None:
        warnings.warn("the worker memory limit is not enforced: it needs Linux's /proc", RuntimeWarning,
                      stacklevel=2)
        limit = 0
    context = multiprocessing.get_context("fork")
    pending = deque(range(len(items)))
    kept = pool
    pool: list[_Worker] = kept.take(initializer, workers) if kept is not None else []

    def give(w: _Worker, index: int) -> bool:
        return w.give(index) if kept is None else w.give(index, (fn, items[index]))

    try:
        while pending or any(w.index is not None for w in pool):
            for w in pool:
                if w.index is None and pending and give(w, pending[0]):
                    pending.popleft()
            while pending and len(pool) < workers:
                pool.append(_Worker(context, None, None, initializer, pool) if kept is not None
                            else _Worker(context, fn, items, initializer, pool))
                if give(pool[-1], pending[0]):
                    pending.popleft()

            busy = [w for w in pool if w.index is not None]
            if limit:
                wait_s = poll_s
            elif timeout_s and busy:
                wait_s = max(0.0, min(timeout_s - w.elapsed() for w in busy)) + 0.001
            else:
                wait_s = None
            ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool], wait_s))

            for w in list(pool):  # results, and workers that ended
                alive, finished = w.process.sentinel not in ready, False
                try:
                    while w.conn.poll():
                        kind, index, payload = w.conn.recv()
                        if kind == "init_error":
                            raise RuntimeError(f"the worker initializer failed: {payload}")
                        w.index, finished = None, True
                        yield index, (payload if kind == "ok" else TaskFailure("worker_error", payload))
                except (EOFError, OSError):
                    alive = False
                if alive and finished and limit and w.memory_over(limit, 10 * len(pool)):
                    alive = False  # memory left over from that item: replace the worker quietly
                if not alive:
                    pool.remove(w)
                    w.kill()
                    if w.index is not None:
                        yield w.index, TaskFailure("worker_died", _death(w))

            for w in list(pool):  # limits of the items in flight
                if w.index is None or w.conn.poll():  # a result that just came is read on the next turn
                    continue
                pid, failure = w.process.pid, None
                if timeout_s and w.elapsed() > timeout_s:
                    failure = TaskFailure("timeout", f"took longer than the {timeout_s:g} s limit; the worker "
                                                     f"(pid {pid}) was killed")
                elif limit and (used := w.memory_over(limit, 10 * len(pool))):
                    failure = TaskFailure("memory_limit", f"the worker's memory reached {_size(used)}, over the "
                                                          f"{_size(limit)} limit; the worker (pid {pid}) was "
                                                          f"killed after {w.elapsed():.1f} s")
                if failure is not None:
                    pool.remove(w)
                    w.kill()
                    yield w.index, failure
    finally:
        if kept is not None:
            kept.keep(pool)
        else:
            _shutdown(pool)


def _shutdown(pool: list[_Worker], grace_s: float = 1.0) -> None:
    """Stop every worker: idle ones are asked to exit, busy ones (and any still alive after
    `grace_s`) are killed; all are joined."""
    for w in pool:
        if w.index is None:
            try:
                w.conn.send(None)
            except OSError:
                pass
        elif w.process.is_alive():
            w.process.kill()
    deadline = time.monotonic() + grace_s
    for w in pool:
        w.process.join(max(0.0, deadline - time.monotonic()))
        w.kill()
