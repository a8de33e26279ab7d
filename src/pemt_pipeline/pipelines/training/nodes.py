"""Nodes of the `training` pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.features import ClipEmbeddings
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import ModelConfig, TrainedModel
from pemt_pipeline.training.distributed import train_model
from pemt_pipeline.training.loop import TrainInputs, prepare_inputs, training_configs
from pemt_pipeline.training.refresh import RefreshConfig


def prepare_training(manifest: pd.DataFrame, clip_shards: ShardStore, clip_embeddings: ClipEmbeddings,
                     negatives_table: pd.DataFrame, params: dict[str, Any], model_params: dict[str, Any],
                     negatives_params: dict[str, Any], embedding_params: dict[str, Any]) -> TrainInputs:
    """Parse the training and model parameters (and the negatives and embedding ones, which a
    refresh of the negative table uses: training.refresh_negatives_every); check that manifest,
    embeddings and negative table agree; keep the training splits (the manifest names the shards of
    `clip_shards`)."""
    train_cfg, loss, augment = training_configs(params)
    refresh = RefreshConfig.from_params(negatives_params, embedding_params)
    return prepare_inputs(manifest, clip_embeddings.clips, negatives_table, ModelConfig.from_dict(model_params), loss,
                          augment, train_cfg, refresh)


def pretrain(inputs: TrainInputs) -> tuple[TrainedModel, str, dict[str, Any]]:
    """Train (in this process or as DDP workers), resuming from the last checkpoint; return the
    final model with its CPP head, the checkpoint the loop wrote, and a summary."""
    trained, summary = train_model(inputs)
    return trained, summary["checkpoint"], summary
