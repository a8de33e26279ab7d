"""Nodes of the `negatives` pipeline."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pemt_pipeline.features import ClipEmbeddings
from pemt_pipeline.sampling import NegativeConfig, build_negative_table, embedding_space


def build_negatives(clip_embeddings: ClipEmbeddings, params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """For each clip, its K best-qualified negatives from other videos with sampling probabilities."""
    params = dict(params)
    space = params.pop("space")
    cfg = NegativeConfig.from_dict(params)
    clips = clip_embeddings.clips
    embeddings = embedding_space(clip_embeddings.visual, clip_embeddings.audio, space)
    video_index = pd.factorize(clips["video_id"])[0]
    start = time.perf_counter()
    table = build_negative_table(embeddings, video_index, cfg)
    seconds = time.perf_counter() - start
    per_anchor = table.groupby("anchor").size()
    summary = {"clips": len(clips), "anchors": int(per_anchor.size), "rows": len(table),
               "candidates_per_anchor": {"min": int(per_anchor.min()), "max": int(per_anchor.max())}
               if len(per_anchor) else {}, "space": space, "variant": cfg.variant, "mode": cfg.mode,
               "k": cfg.k, "wall_seconds": round(seconds, 3)}
    return table, summary
