"""One writer at a time: `pemt_pipeline.locking.exclusive` between processes, and the Kedro run lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pemt_pipeline.hooks import LOCK_FILE, RunGuard, RunLockedError
from pemt_pipeline.locking import WAIT_ENV, LockedError, exclusive, wait_seconds
from tests.conftest import run_kedro

HOLD = textwrap.dedent("""
    import sys, time
    from pemt_pipeline.locking import exclusive
    with exclusive(sys.argv[1], "the test outputs", float(sys.argv[2])):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
""")


def _holder(lock: Path, hold_s: float = 60.0, wait_s: float = 0.0) -> subprocess.Popen:
    """A process holding `lock` for `hold_s` seconds (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(wait_s), str(hold_s)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def _free(lock: Path) -> bool:
    """Whether another process can take `lock` at once."""
    code = f"from pemt_pipeline.locking import exclusive\nwith exclusive({str(lock)!r}, 'probe', 0): pass"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_second_run_stops_at_once_naming_the_holder(tmp_path):
    lock = tmp_path / "data" / ".lock"
    first = _holder(lock)
    try:
        with pytest.raises(LockedError) as info:
            with exclusive(lock, "the test outputs", wait_s=0):
                pytest.fail("got a lock another process holds")
        message = str(info.value)
        assert message.startswith("the test outputs is locked by another run: ")
        assert f"pid {first.pid} on " in message and "command `-c " in message and str(lock) in message
        record = json.loads(lock.with_name(".lock.holder").read_text())
        assert record["pid"] == first.pid and record["what"] == "the test outputs"
    finally:
        _stop(first)


def test_a_waiting_run_gets_the_lock_when_the_holder_ends(tmp_path):
    lock = tmp_path / ".lock"
    first = _holder(lock, hold_s=1.5)
    try:
        with pytest.raises(LockedError, match=r"\(waited 0.2 s\)"):
            with exclusive(lock, "the test outputs", wait_s=0.2):
                pass
        start = time.monotonic()
        with exclusive(lock, "the test outputs", wait_s=60):
            assert time.monotonic() - start > 0.5  # it waited for the first one to let go
            assert json.loads(lock.with_name(".lock.holder").read_text())["pid"] == os.getpid()
        assert not lock.with_name(".lock.holder").exists()  # the record goes with the holder
        assert first.wait(timeout=30) == 0
    finally:
        _stop(first)


def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    lock = tmp_path / ".lock"
    first = _holder(lock)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert json.loads(lock.with_name(".lock.holder").read_text())["pid"] == first.pid  # stale record left
    with exclusive(lock, "the test outputs", wait_s=0):  # the OS lock died with the process
        assert json.loads(lock.with_name(".lock.holder").read_text())["pid"] == os.getpid()


def test_a_stale_record_is_not_taken_for_the_holder(tmp_path):
    """The holder has the OS lock but has not written its record yet; the record left by a killed
    earlier holder is reported as such."""
    lock = tmp_path / ".lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock.with_name(".lock.holder").write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename,
                                                          "started": "earlier", "command": "kedro run"}))
    code = (f"import sys, time; from filelock import FileLock; l = FileLock({str(lock)!r}); l.acquire(); "
            "print('held', flush=True); time.sleep(60)")
    raw = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert raw.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"not recorded itself yet \(the last recorded holder, pid {dead} "):
            with exclusive(lock, "the test outputs", wait_s=0):
                pass
    finally:
        _stop(raw)


def test_reentrant_in_one_process_and_nested_locks(tmp_path):
    run_lock, folder_lock = tmp_path / "run.lock", tmp_path / "shards" / "folder.lock"
    with exclusive(run_lock, "the run", 0):
        with exclusive(run_lock, "the run again", 0):  # the same process: re-entrant
            with exclusive(folder_lock, "the shard folder", 0):  # another path: nests
                assert not _free(run_lock) and not _free(folder_lock)
            assert _free(folder_lock)
        assert not _free(run_lock)  # the outer hold is still there
    assert _free(run_lock)


def test_wait_setting(monkeypatch):
    monkeypatch.delenv(WAIT_ENV, raising=False)
    assert wait_seconds() == 0
    for text, value in (("30", 30.0), ("-1", -1.0), ("inf", float("inf"))):
        monkeypatch.setenv(WAIT_ENV, text)
        assert wait_seconds() == value
    monkeypatch.setenv(WAIT_ENV, "soon")
    with pytest.raises(ValueError, match=r"PEMT_LOCK_WAIT_S must be a number of seconds .*got 'soon'"):
        wait_seconds()


# --------------------------------------------------------------------------- the Kedro run lock
class _Pipeline:
    def inputs(self) -> set[str]:
        return set()

    def all_outputs(self) -> set[str]:
        return set()


class _Parameters:
    def load(self) -> dict:
        return {}


def test_run_guard_holds_the_lock_for_the_run_only(tmp_path):
    guard, lock = RunGuard(), tmp_path / LOCK_FILE
    for end in (guard.after_pipeline_run, guard.on_pipeline_error):
        guard.before_pipeline_run({"project_path": str(tmp_path)}, _Pipeline(), {"parameters": _Parameters()})
        assert not _free(lock)
        end()
        assert _free(lock)


def test_kedro_run_stops_when_another_run_holds_the_lock(project, monkeypatch):
    monkeypatch.delenv(WAIT_ENV, raising=False)
    first = _holder(project / LOCK_FILE)
    try:
        before = sorted(p.name for p in (project / "data").rglob("*"))
        with pytest.raises(RunLockedError) as info:
            run_kedro(project, ["ingestion"])
        assert f"the project's data folder is locked by another run: pid {first.pid} " in str(info.value)
        assert f"{WAIT_ENV}=<seconds>" in str(info.value)
        assert sorted(p.name for p in (project / "data").rglob("*")) == before  # no node ran
    finally:
        _stop(first)
