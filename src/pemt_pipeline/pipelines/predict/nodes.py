"""Nodes of the `predict` pipeline: the folder goes through ingestion's library (the project's
`ingestion` parameters, its own shard folder), then `pemt_pipeline.finetuning.predict_videos`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.finetuning import PredictConfig, predict_videos
from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import FinetunedModel


def ingest_folder(source: VideoSource, ingestion: dict[str, Any],
                  params: dict[str, Any]) -> tuple[ShardStore, pd.DataFrame, pd.DataFrame]:
    """Ingest the folder as the model's training videos were (the project's clip and audio settings)
    into `predict.shard_dir`: its shards, manifest and rejects (every bad file a row with its reason)."""
    cfg = PredictConfig.from_dict(params)
    ingest = IngestConfig.from_dict({**ingestion, "shard_dir": cfg.shard_dir})
    index = build_index(source, ingest.extensions, ingest.test_fraction, ingest.split_seed,
                        follow_symlinks=ingest.follow_symlinks)
    manifest, rejects, _ = ingest_all(index, ingest)
    return ShardStore(ingest.shard_dir), manifest, rejects


def predict(finetuned: FinetunedModel, manifest: pd.DataFrame, predict_shards: ShardStore, params: dict[str, Any],
            augment: dict[str, Any]) -> pd.DataFrame:
    """One row per ingested video: video_id, path, label_1, score_1, ..., label_k, score_k (the manifest
    names the shards of `predict_shards`)."""
    return predict_videos(finetuned, manifest, AugmentConfig.from_dict(augment), PredictConfig.from_dict(params))
