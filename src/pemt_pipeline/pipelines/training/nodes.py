"""Nodes of the `training` pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.features import ClipEmbeddings
from pemt_pipeline.models import ModelConfig, TrainedModel, load_trained
from pemt_pipeline.training.distributed import train
from pemt_pipeline.training.loop import TrainInputs, prepare_inputs, training_configs


def prepare_training(manifest: pd.DataFrame, clip_embeddings: ClipEmbeddings, negatives_table: pd.DataFrame,
                     params: dict[str, Any], model_params: dict[str, Any]) -> TrainInputs:
    """Parse the training and model parameters; check that manifest, embeddings and negative table
    agree; keep the training splits."""
    train_cfg, loss, augment = training_configs(params)
    return prepare_inputs(manifest, clip_embeddings.clips, negatives_table, ModelConfig.from_dict(model_params), loss,
                          augment, train_cfg)


def pretrain(inputs: TrainInputs) -> tuple[TrainedModel, dict[str, Any]]:
    """Train (in this process or as DDP workers), resuming from the last checkpoint; return the
    final model with its CPP head, and a summary."""
    summary = train(inputs)
    trained = load_trained(summary["checkpoint"])
    summary["parameters"] = trained.model.parameter_counts()
    return trained, summary
