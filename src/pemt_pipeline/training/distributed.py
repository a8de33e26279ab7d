"""Several processes (GPUs, machines): DDP workers started from Python with torch's elastic launcher
(what `torchrun` runs), never by running `kedro run` once per rank.

One machine, N GPUs:     kedro run --env paper --pipelines training --params training.nproc_per_node=N
Several machines (M):    on every machine, the same command plus
                         --params training.nnodes=M,training.rdzv_endpoint=<host of machine 0>:29500
The elastic agent of each machine starts its `nproc_per_node` workers, they meet at the rendezvous
endpoint, and global rank 0 writes checkpoints, metrics and the final model. Without CUDA the
workers use the gloo backend on the CPU (how the tests run two processes).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from pemt_pipeline.models import TrainedModel, load_trained
from pemt_pipeline.training.loop import RankContext, TrainInputs, run_training


def _worker(run: Callable[[Any, RankContext], dict], inputs: Any) -> dict:
    cfg = inputs.train
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    try:
        ctx = RankContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return run(inputs, ctx)
    finally:
        dist.destroy_process_group()


def train(inputs: TrainInputs) -> dict:
    """Run training in this process, or launch `nnodes x nproc_per_node` DDP workers and wait for them.
    Returns the summary of global rank 0 (on machines other than the first: of their first worker)."""
    return launch(run_training, inputs)


def launch(run: Callable[[Any, RankContext], dict], inputs: Any) -> dict:
    """`run(inputs, ctx)` in this process (world size 1), or in `nnodes x nproc_per_node` DDP workers
    (`inputs.train` holds the launch settings; `run` a module-level function, `inputs` picklable:
    they are sent to the workers). Shared by pretraining and fine-tuning."""
    cfg = inputs.train
    if cfg.world_size == 1:
        return run(inputs, RankContext())
    run_id = os.environ.get("PEMT_RUN_ID", f"pemt-{uuid.uuid4().hex[:8]}" if cfg.nnodes == 1 else "pemt")
    config = LaunchConfig(min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.nproc_per_node,
                          run_id=run_id,
                          rdzv_backend="c10d", rdzv_endpoint=cfg.rdzv_endpoint, max_restarts=0, monitor_interval=0.5,
                          start_method="spawn")
    results = elastic_launch(config, _worker)(run, inputs)
    return results[min(results)]


def train_model(inputs: TrainInputs) -> tuple[TrainedModel, dict]:
    """`train`, then the final model with its CPP head and parameter counts in the summary. The
    model comes from the final checkpoint (`summary["checkpoint"]`), which rank 0 wrote: with DDP the
    trained weights live in the worker processes."""
    summary = train(inputs)
    trained = load_trained(summary["checkpoint"])
    summary["parameters"] = trained.model.parameter_counts()
    return trained, summary
