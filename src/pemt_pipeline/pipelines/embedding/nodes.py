"""Nodes of the `embedding` pipeline."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pemt_pipeline.features import ClipEmbeddings, EmbedConfig, embed_clips
from pemt_pipeline.media.shards import ShardStore
from pemt_pipeline.models import ModelConfig


def embed_all_clips(
    manifest: pd.DataFrame, clip_shards: ShardStore, params: dict[str, Any], model_params: dict[str, Any]
) -> tuple[ClipEmbeddings, dict[str, Any]]:
    """Embed every clip of the manifest with the visual and audio CNNs (in this process, or in
    `embedding.nproc_per_node` x `embedding.nnodes` worker processes); return the store and a summary.

    `clip_shards` is an input so that the pipeline runs after ingestion; the manifest names the shards.
    """
    cfg = EmbedConfig.from_dict(params)
    start = time.perf_counter()
    store = embed_clips(manifest, ModelConfig.from_dict(model_params), cfg)
    seconds = time.perf_counter() - start
    meta = store.meta
    summary = {"clips": meta["n_clips"], "videos": meta["n_videos"], "dims": meta["dims"],
               "source": cfg.checkpoint or f"random init, seed {cfg.seed}", "processes": cfg.world_size,
               "wall_seconds": round(seconds, 3), "clips_per_second": round(meta["n_clips"] / seconds, 1)}
    return store, summary
