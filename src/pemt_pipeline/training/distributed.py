"""Several processes (GPUs, machines) for training: DDP workers started by the project's one
launcher (`pemt_pipeline.distributed`, torch's elastic launcher), never by running `kedro run` once
per rank.

One machine, N GPUs:     kedro run --env paper --pipelines training --params training.nproc_per_node=N
Several machines (M):    on every machine, the same command plus
                         --params training.nnodes=M,training.rdzv_endpoint=<host of machine 0>:29500
Global rank 0 writes checkpoints, metrics and the final model. Without CUDA the workers use the
gloo backend on the CPU (how the tests run two processes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemt_pipeline import distributed
from pemt_pipeline.distributed import RankContext
from pemt_pipeline.models import TrainedModel, load_trained
from pemt_pipeline.training.loop import TrainInputs, run_training


def train(inputs: TrainInputs) -> dict:
    """Run training in this process, or launch `nnodes x nproc_per_node` DDP workers and wait for them.
    Returns the summary of global rank 0 (on machines other than the first: of their first worker)."""
    return launch(run_training, inputs)


def launch(run: Callable[[Any, RankContext], dict], inputs: Any) -> dict:
    """`pemt_pipeline.distributed.launch` of a training loop: its launch settings are `inputs.train`
    (pretraining's TrainConfig, fine-tuning's FinetuneRun)."""
    return distributed.launch(run, inputs, inputs.train)


def train_model(inputs: TrainInputs) -> tuple[TrainedModel, dict]:
    """`train`, then the final model with its CPP head and parameter counts in the summary. The
    model comes from the final checkpoint (`summary["checkpoint"]`), which rank 0 wrote: with DDP the
    trained weights live in the worker processes."""
    summary = train(inputs)
    trained = load_trained(summary["checkpoint"])
    summary["parameters"] = trained.model.parameter_counts()
    return trained, summary
