"""Supervised workers: every item is reported once, and a crash, an overrun or a memory blow-up costs
one item (a TaskFailure with its reason), never the run."""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

from pemt_pipeline.media.workers import TaskFailure, WorkerPool, run_supervised

pytestmark = pytest.mark.timeout(60)


def _task(item):
    """item: ("ok", x) -> (x, pid); ("kill", _) SIGKILLs itself; ("segv", _) SIGSEGVs; ("exit", code);
    ("sleep", s); ("alloc", (mb, s)) allocates, touches and holds mb MB for s seconds; ("raise", msg)."""
    kind, arg = item
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "segv":
        faulthandler.disable()  # pytest's handler would print the stack
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "exit":
        os._exit(arg)
    elif kind == "sleep":
        time.sleep(arg)
    elif kind == "alloc":
        block = np.ones(arg[0] << 17)  # arg[0] MB of float64, every page written
        time.sleep(arg[1])
        return int(block.sum())
    elif kind == "raise":
        raise ValueError(arg)
    return arg, os.getpid()


def _children() -> list[int]:
    """Live (not zombie) child processes of this process, from /proc."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                found.append(int(entry))
    return found


def _run(items, workers, **kw) -> dict:
    out = list(run_supervised(_task, items, workers, **kw))
    indices = [i for i, _ in out]
    assert sorted(indices) == list(range(len(items))), "every index exactly once"
    assert not multiprocessing.active_children() and not _children(), "no worker left behind"
    return dict(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_normal_items(workers):
    items = [("ok", x) for x in range(7)]
    results = _run(items, workers)
    assert {i: r[0] for i, r in results.items()} == dict(enumerate(range(7)))
    assert len({pid for _, pid in results.values()}) == workers
    assert os.getpid() not in {pid for _, pid in results.values()}


def test_completion_order():
    order = [i for i, _ in run_supervised(_task, [("sleep", 1.0), ("ok", 1), ("ok", 2)], 2)]
    assert order[-1] == 0 and sorted(order) == [0, 1, 2]


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_worker_costs_one_item(workers):
    items = [("ok", 0), ("ok", 1), ("kill", None), ("ok", 3), ("ok", 4), ("ok", 5)]
    results = _run(items, workers)
    failure = results.pop(2)
    assert isinstance(failure, TaskFailure) and failure.reason == "worker_died"
    assert "SIGKILL" in failure.detail and "out-of-memory" in failure.detail
    assert {i: r[0] for i, r in results.items()} == {0: 0, 1: 1, 3: 3, 4: 4, 5: 5}
    if workers == 1:  # the items after the crash went to a fresh worker
        pids = [results[i][1] for i in (0, 1, 3, 4, 5)]
        assert pids[0] == pids[1] and pids[2] == pids[3] == pids[4] and pids[1] != pids[2]


def test_crash_and_exit_name_the_cause():
    results = _run([("segv", None), ("exit", 3), ("ok", 2)], 1)
    assert results[0].reason == "worker_died" and "SIGSEGV" in results[0].detail
    assert results[1].reason == "worker_died" and "exited with code 3" in results[1].detail
    assert results[2][0] == 2


def test_timeout():
    start = time.monotonic()
    results = _run([("sleep", 30), ("ok", 1), ("ok", 2)], 2, timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert results[0] == TaskFailure("timeout", results[0].detail) and "0.5 s" in results[0].detail
    assert results[1][0] == 1 and results[2][0] == 2


def test_memory_limit():
    # The parent (pytest with torch) is bigger than the limit: its pages, shared by the fork, must not count.
    start = time.monotonic()
    results = _run([("ok", 0), ("alloc", (300, 10)), ("ok", 2), ("ok", 3)], 1, memory_limit_mb=150)
    assert time.monotonic() - start < 4
    failure = results[1]
    assert failure.reason == "memory_limit" and "150 MB limit" in failure.detail
    assert [results[i][0] for i in (0, 2, 3)] == [0, 2, 3]


def test_under_memory_limit_is_kept():
    results = _run([("alloc", (50, 0.3))], 1, memory_limit_mb=100, timeout_s=20)
    assert results[0] == 50 << 17


def test_raising_fn_is_a_worker_error():
    results = _run([("raise", "bad item"), ("ok", 1)], 1)
    assert results[0] == TaskFailure("worker_error", "ValueError: bad item")
    assert results[1][0] == 1


def test_unpicklable_result_is_a_worker_error():
    results = dict(run_supervised(lambda _: (lambda: 0), [0, 1], 1))
    assert all(r.reason == "worker_error" and "could not be sent back" in r.detail for r in results.values())


def _init():
    os.environ["PEMT_WORKER_INIT"] = "yes"


def _read_init(_):
    return os.environ.get("PEMT_WORKER_INIT")


def _bad_init():
    raise OSError("no")


def test_initializer():
    assert dict(run_supervised(_read_init, [0, 1, 2], 2, initializer=_init)) == {0: "yes", 1: "yes", 2: "yes"}
    assert "PEMT_WORKER_INIT" not in os.environ
    with pytest.raises(RuntimeError, match="initializer failed: OSError: no"):
        list(run_supervised(_read_init, [0], 1, initializer=_bad_init))
    assert not _children()


def test_closed_early_leaves_no_worker():
    gen = run_supervised(_task, [("ok", 0)] + [("sleep", 30)] * 3, 2, timeout_s=60)
    assert next(gen)[0] == 0
    assert len(_children()) == 2
    gen.close()
    assert not multiprocessing.active_children() and not _children()


def test_parent_error_leaves_no_worker():
    with pytest.raises(KeyError):
        for _ in run_supervised(_task, [("ok", 0), ("sleep", 30)], 2):
            raise KeyError("the caller failed")
    assert not multiprocessing.active_children() and not _children()


def test_ctrl_c_stops_the_workers():
    def ctrl_c():  # as a terminal does: to the parent and its workers
        for pid in _children() + [os.getpid()]:
            os.kill(pid, signal.SIGINT)

    threading.Timer(0.5, ctrl_c).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(run_supervised(_task, [("sleep", 30)] * 3, 2))
    assert time.monotonic() - start < 5
    assert not multiprocessing.active_children() and not _children()


def test_no_items_and_bad_arguments():
    assert list(run_supervised(_task, [], 4)) == []
    with pytest.raises(ValueError):
        list(run_supervised(_task, [("ok", 0)], 0))
    with pytest.raises(ValueError):
        list(run_supervised(_task, [("ok", 0)], 1, timeout_s=-1))


def test_a_kept_pool_serves_later_calls_from_the_same_workers():
    pool = WorkerPool()
    try:
        first = dict(run_supervised(_task, [("ok", 0), ("ok", 1)], 1, pool=pool, initializer=_init))
        pids = {pid for _, pid in first.values()}
        assert len(pids) == 1 and _children() == list(pids)  # kept, idle, between the calls
        second = dict(run_supervised(_task, [("ok", 2), ("kill", 0), ("ok", 3)], 1, pool=pool, initializer=_init))
        assert second[0] == (2, *pids)  # the same process, no new fork
        assert isinstance(second[1], TaskFailure) and second[1].reason == "worker_died"
        assert second[2][1] not in pids  # a fresh worker replaced the killed one, and is kept
        assert _children() == [second[2][1]]
        assert dict(run_supervised(_read_init, [0], 1, pool=pool, initializer=_init)) == {0: "yes"}
        third = dict(run_supervised(_task, [("ok", 4)], 1, pool=pool, initializer=_other_init))
        assert third[0][1] != second[2][1]  # another initializer: other workers
    finally:
        pool.close()
    assert not _children()


def _other_init():
    """An initializer that does nothing (another object than `_init`)."""
