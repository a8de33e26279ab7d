"""Several processes (GPUs, machines) started from Python with torch's elastic launcher (what
`torchrun` runs), never by running `kedro run` once per rank: the one launcher of pretraining,
fine-tuning and embedding.

One machine, N processes:  --params <section>.nproc_per_node=N
Several machines (M):      on every machine, the same command plus
                           --params <section>.nnodes=M,<section>.rdzv_endpoint=<host of machine 0>:29500
The elastic agent of each machine starts its `nproc_per_node` workers, they meet at the rendezvous
endpoint, and global rank 0 writes. Without CUDA the workers use the gloo backend on the CPU (how
the tests run two processes).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from pemt_pipeline.configs import at_least, one_of, require
from pemt_pipeline.devices import resolve_device

BACKENDS = ("auto", "nccl", "gloo")
RDZV_ENDPOINT = ((lambda v: v.rpartition(":")[0] != "" and v.rpartition(":")[2].isdigit()), "host:port")


class LaunchSettings:
    """Mixin of a config dataclass that declares the launch fields `nproc_per_node`, `nnodes`,
    `rdzv_endpoint` and `backend` (with its own defaults): the world size, and their checks."""

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def check_launch(self, section: str) -> None:
        """The launch fields' range checks (a `validate()` calls it): ValueErrors name `section.key`."""
        require(section, self, nproc_per_node=at_least(1), nnodes=at_least(1), backend=one_of(BACKENDS),
                rdzv_endpoint=RDZV_ENDPOINT)


@dataclass(frozen=True)
class RankContext:
    """Which process this is: global rank, number of processes, rank and processes on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the CUDA device index on its machine
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        """Global rank 0: the one that writes."""
        return self.rank == 0


def rank_device(name: str, ctx: RankContext) -> torch.device:
    """The device `name` names (`devices.resolve_device`), as this rank's GPU (cuda:<local rank>)
    when it is a CUDA device and there are several processes."""
    device = resolve_device(name)
    if device.type == "cuda" and ctx.world_size > 1:
        if ctx.local_rank >= torch.cuda.device_count():
            raise ValueError(f"{ctx.local_world_size} processes per machine, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s): lower nproc_per_node")
        device = torch.device("cuda", ctx.local_rank)
    return device


def _worker(run: Callable[[Any, RankContext], dict], inputs: Any, settings: LaunchSettings) -> dict:
    backend = settings.backend if settings.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl" and local_rank < torch.cuda.device_count():  # else `rank_device` says why
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    try:
        ctx = RankContext(dist.get_rank(), dist.get_world_size(), local_rank,
                          int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        return run(inputs, ctx)
    finally:
        dist.destroy_process_group()


def launch(run: Callable[[Any, RankContext], dict], inputs: Any, settings: LaunchSettings) -> dict:
    """`run(inputs, ctx)` in this process (world size 1), or in `nnodes x nproc_per_node` workers
    with a process group (`settings`: the launch fields; `run` a module-level function, `inputs`
    picklable: they are sent to the workers). Returns global rank 0's result (on machines other
    than the first: their first worker's)."""
    if settings.world_size == 1:
        return run(inputs, RankContext())
    nnodes = settings.nnodes
    run_id = os.environ.get("PEMT_RUN_ID", f"pemt-{uuid.uuid4().hex[:8]}" if nnodes == 1 else "pemt")
    config = LaunchConfig(min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=settings.nproc_per_node, run_id=run_id,
                          rdzv_backend="c10d", rdzv_endpoint=settings.rdzv_endpoint, max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    results = elastic_launch(config, _worker)(run, inputs, settings)
    return results[min(results)]
