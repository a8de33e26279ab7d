"""Nodes of the `pruning` pipeline (METHOD.md section 6): wiring only, the work is in
`pemt_pipeline.pruning`. `params:pruning` is parsed once (`parse_pruning_config`); the other
parameter sections each node takes are parsed by that node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from torch import Tensor

from pemt_pipeline import pruning
from pemt_pipeline.datasets.model_file import TrainingCheckpoint
from pemt_pipeline.evaluation.probe import ProbeConfig
from pemt_pipeline.evaluation.video import VideoEvalConfig
from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import TrainedModel
from pemt_pipeline.pruning import PruningConfig
from pemt_pipeline.training.losses import LossConfig


def parse_pruning_config(params: dict[str, Any]) -> PruningConfig:
    return PruningConfig.from_dict(params)


def load_source(checkpoint: TrainingCheckpoint) -> tuple[TrainedModel, dict[str, Tensor]]:
    return pruning.load_pruning_source(checkpoint.state, str(checkpoint.path))


def embed_batches(base: TrainedModel, manifest: pd.DataFrame, clip_shards: ShardStore, cfg: PruningConfig,
                  augment: dict[str, Any]) -> list[dict[str, Tensor]]:
    """`clip_shards` orders the node after ingestion; the manifest names its shards."""
    return pruning.embed_batches(base, manifest, cfg, AugmentConfig.from_dict(augment))


def prune_models(base: TrainedModel, objective_state: dict[str, Tensor], batches: list[dict[str, Tensor]],
                 cfg: PruningConfig, loss: dict[str, Any]) -> tuple[dict[str, TrainedModel], dict[str, Any]]:
    return pruning.prune_models(base, objective_state, batches, cfg, LossConfig.from_dict(loss))


def measure_base(base: TrainedModel, manifest: pd.DataFrame, evaluation: dict[str, Any], augment: dict[str, Any],
                 cfg: PruningConfig) -> dict[str, Any]:
    return pruning.measure(base, manifest, cfg, VideoEvalConfig.from_dict(evaluation),
                           ProbeConfig.from_dict(evaluation.get("probe")), AugmentConfig.from_dict(augment))


def measure_pruned(pruned: dict[str, Callable[[], TrainedModel]], manifest: pd.DataFrame, evaluation: dict[str, Any],
                   augment: dict[str, Any], cfg: PruningConfig) -> dict[str, dict[str, Any]]:
    return pruning.measure_models(pruned, manifest, cfg, VideoEvalConfig.from_dict(evaluation),
                                  ProbeConfig.from_dict(evaluation.get("probe")), AugmentConfig.from_dict(augment))


def collect_results(base: dict[str, Any], pruned: dict[str, dict[str, Any]], logs: dict[str, dict[str, Any]],
                    cfg: PruningConfig, checkpoint: TrainingCheckpoint) -> dict[str, Any]:
    return pruning.collect_results(base, pruned, logs, cfg, checkpoint.name)
