"""Nodes of the `features` pipeline (wiring only; the work is `pemt_pipeline.features.export`)."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pemt_pipeline.features.dataset import AugmentConfig
from pemt_pipeline.features.export import FeatureExportConfig, FeatureStore, export_features
from pemt_pipeline.media.ingest import IngestConfig
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import TrainedModel


def export_model_features(trained: TrainedModel, manifest: pd.DataFrame, clip_shards: ShardStore,
                          params: dict[str, Any], augment: dict[str, Any],
                          ingestion: dict[str, Any]) -> tuple[FeatureStore, dict[str, Any]]:
    """Every stream of the model file's model over the manifest's videos (the manifest names the shards
    of `clip_shards`), centre-cropped as evaluation does; return the store and a summary."""
    cfg = FeatureExportConfig.from_dict(params)
    start = time.perf_counter()
    store = export_features(trained.model, manifest, AugmentConfig.from_dict(augment), cfg,
                            IngestConfig.from_dict(ingestion).span)
    seconds = time.perf_counter() - start
    meta = store.meta
    summary = {"videos": meta["n_videos"], "clips": meta["n_clips"], "streams": meta["dims"],
               "dtype": meta["dtype"], "fusion": meta["model"]["fusion"], "output_dir": cfg.output_dir,
               "wall_seconds": round(seconds, 3), "videos_per_second": round(meta["n_videos"] / seconds, 2)}
    return store, summary
