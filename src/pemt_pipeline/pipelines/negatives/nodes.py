"""Nodes of the `negatives` pipeline."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pemt_pipeline.features import ClipEmbeddings
from pemt_pipeline.sampling import NegativeConfig, NegativeTable, embedding_space, negative_table


def build_negatives(clip_embeddings: ClipEmbeddings, params: dict[str, Any]) -> tuple[NegativeTable, dict[str, Any]]:
    """For each clip, its K best-qualified negatives from other videos with sampling probabilities
    (built in part files past negatives.partition_rows rows)."""
    params = dict(params)
    space = params.pop("space")
    cfg = NegativeConfig.from_dict(params)
    clips = clip_embeddings.clips
    embeddings = embedding_space(clip_embeddings.visual, clip_embeddings.audio, space)
    video_index = pd.factorize(clips["video_id"])[0]
    start = time.perf_counter()
    table = negative_table(embeddings, video_index, cfg)
    seconds = time.perf_counter() - start
    summary = {"clips": len(clips), "anchors": table.anchors, "rows": table.rows,
               "candidates_per_anchor": {"min": table.per_anchor[0], "max": table.per_anchor[1]}
               if table.per_anchor else {}, "partitioned": table.partitioned, "space": space,
               "variant": cfg.variant, "mode": cfg.mode, "k": cfg.k, "wall_seconds": round(seconds, 3)}
    return table, summary
