"""Test-only kill points: a run stops as a crash would (SIGKILL) at an exact point of its work, so
a test interrupts it deterministically instead of racing a timer. Unset or empty: no effect.

- PEMT_KILL_AFTER_CHECKPOINT=<step>: training (rank 0), right after writing the checkpoint of that
  step (a multiple of checkpoint_every, or the last step);
- PEMT_KILL_AFTER_SHARDS=<n>: ingestion, right after its n-th newly written shard, with its
  worker processes (the whole process group);
- PEMT_KILL_AFTER_TABLE_PARTS=<n>: a partitioned negative table's write, right after its n-th
  part is in the temporary folder (`sampling/tablefile.py`).
"""

from __future__ import annotations

import os
import signal

KILL_AFTER_CHECKPOINT = "PEMT_KILL_AFTER_CHECKPOINT"
KILL_AFTER_SHARDS = "PEMT_KILL_AFTER_SHARDS"
KILL_AFTER_TABLE_PARTS = "PEMT_KILL_AFTER_TABLE_PARTS"


def kill_point(variable: str) -> int | None:
    """The count the environment variable names; None when unset or empty."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{variable} must be a whole number, got {value!r}")
    return int(value)


def kill_at(point: int | None, count: int, process_group: bool = False) -> None:
    """SIGKILL this process (or its process group) when `count` has reached the kill point."""
    if point is not None and count == point:
        if process_group:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
