"""Nodes of the `ingestion` pipeline: thin adapters over `pemt_pipeline.media`."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pemt_pipeline.media.folder import VideoSource, build_index
from pemt_pipeline.media.ingest import IngestConfig, ingest_all
from pemt_pipeline.media.shards import ShardStore


def index_videos(source: VideoSource, params: dict[str, Any]) -> pd.DataFrame:
    """List the folder's media files with their ids, labels (from `ingestion.layout`) and splits."""
    cfg = IngestConfig.from_dict(params)
    return build_index(source, cfg.extensions, cfg.test_fraction, cfg.split_seed, follow_symlinks=cfg.follow_symlinks,
                       layout=cfg.label_layout)


def ingest_videos(
    video_index: pd.DataFrame, params: dict[str, Any]
) -> tuple[ShardStore, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Decode every video into a clip shard; return the shards, manifest, rejects and a summary."""
    cfg = IngestConfig.from_dict(params)
    start = time.perf_counter()
    manifest, rejects, counts = ingest_all(video_index, cfg)
    summary = {
        "videos": len(video_index),
        **counts,
        "reject_reasons": rejects["reason"].value_counts().sort_index().to_dict(),
        "clips": int(manifest["n_clips"].sum()) if len(manifest) else 0,
        "video_seconds": round(float(manifest["duration_s"].sum()), 3) if len(manifest) else 0.0,
        "silent_audio": int(manifest["silent_audio"].sum()) if len(manifest) else 0,
        "audio_synthesized": int(manifest["audio_synthesized"].sum()) if len(manifest) else 0,
        "timestamp_gaps": int(manifest["timestamp_gap_s"].notna().sum()) if len(manifest) else 0,
        "frame_codec": cfg.frame_codec,
        "shard_bytes": int(manifest["shard_bytes"].sum()) if len(manifest) else 0,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "params_hash": cfg.params_hash,
    }
    return ShardStore(cfg.shard_dir), manifest, rejects, summary
