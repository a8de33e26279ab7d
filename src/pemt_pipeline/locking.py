"""One writer at a time: an exclusive, inter-process file lock around work that writes shared outputs.

`exclusive(lock_path, what, wait_s)` takes an OS lock (`filelock`: flock on Unix), so the lock dies
with its holder, even one killed with SIGKILL: a crashed run never blocks the next one. Next to the
lock, `<lock>.holder` records who holds it (pid, host, start time, command line) so that a run that
cannot get it says which run is in its way. That side file is only informative: a stale one (its
holder killed) is overwritten by the next holder and reported as such, never trusted as a lock.

Within one process the lock is re-entrant per path (a run that holds it may call code that takes
it again), and locks on different paths nest freely (the run lock, then a per-folder lock).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from pemt_pipeline.atomic import atomic_open

logger = logging.getLogger(__name__)

WAIT_ENV = "PEMT_LOCK_WAIT_S"  # seconds a run waits for another run's lock (see `wait_seconds`)

_held: dict[str, int] = {}  # resolved lock path -> pid of this process, while it holds that lock
_guard = threading.Lock()


class LockedError(RuntimeError):
    """Another process holds the lock (and did not release it within the wait)."""


def wait_seconds(default: float = 0.0) -> float:
    """The wait set by the PEMT_LOCK_WAIT_S environment variable: seconds (0: stop at once if another
    run holds the lock; a negative number or `inf`: wait as long as it takes); `default` if unset."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{WAIT_ENV} must be a number of seconds (0: do not wait, -1 or inf: wait "
                         f"forever), got {text!r}") from None
    if math.isnan(value):
        raise ValueError(f"{WAIT_ENV} must be a number of seconds, got {text!r}")
    return value


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, what: str, wait_s: float = 0.0, hint: str = "") -> Iterator[Path]:
    """Hold the exclusive lock `lock_path` (created with its folder if needed) for the `with` block.

    wait_s: seconds to wait when another process holds it (0: fail at once; negative or inf: wait
    forever). Then a `LockedError` says `what` is locked, by whom (pid, host, start, command) and
    for how long it waited, followed by `hint` (e.g. how to wait longer). Re-entrant within a process."""
    path = Path(lock_path).resolve()
    key = str(path)
    with _guard:
        nested = _held.get(key) == os.getpid()
    if nested:  # this process holds it already (the outer `with` releases it)
        yield path
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(key, thread_local=False)
    forever = wait_s < 0 or math.isinf(wait_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if wait_s == 0:
            raise LockedError(_locked_message(path, what, 0.0, hint)) from None
        logger.warning("%s is locked by %s; waiting %s", what, _holder_text(path),
                       "until it is released" if forever else f"up to {wait_s:g} s")
        try:
            lock.acquire(timeout=-1 if forever else wait_s)
        except Timeout:
            raise LockedError(_locked_message(path, what, wait_s, hint)) from None
    holder = _holder_path(path)
    try:
        _write_holder(holder, what)
        with _guard:
            _held[key] = os.getpid()
        yield path
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            if _read_holder(holder).get("pid") == os.getpid():
                holder.unlink()
        lock.release()


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def _write_holder(holder: Path, what: str) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}
    with atomic_open(holder, "w") as f:  # whole record or none, for a reader racing this write
        f.write(json.dumps(record) + "\n")


def _read_holder(holder: Path) -> dict:
    try:
        record = json.loads(holder.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _holder_text(lock_path: Path) -> str:
    """Who holds the lock, from the side file (which may be stale or not written yet)."""
    record = _read_holder(_holder_path(lock_path))
    if not record:
        return "a process that has not recorded itself yet"
    desc = (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}, "
            f"command `{record.get('command')}`")
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return f"a process that has not recorded itself yet (the last recorded holder, {desc}, has exited)"
    return desc


def _locked_message(lock_path: Path, what: str, waited: float, hint: str) -> str:
    waited_text = "" if waited == 0 else f" (waited {waited:g} s)"
    return (f"{what} is locked by another run{waited_text}: {_holder_text(lock_path)}; lock file {lock_path}"
            + (f". {hint}" if hint else ""))
