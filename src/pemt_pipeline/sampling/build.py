"""The entry points of the negative table: exact (blockwise) or approximate (faiss) construction."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .approximate import approximate_table
from .blockwise import exact_table
from .config import NegativeConfig, check_inputs
from .table import anchor_ids
from .tablefile import NegativeTable


def negative_table(embeddings: np.ndarray, video_index: np.ndarray, cfg: NegativeConfig,
                   progress: bool = True, anchors: np.ndarray | None = None) -> NegativeTable:
    """The negative table of `embeddings` [N, d] (may be a read-only memmap) grouped by video_index [N].

    Columns anchor (int64 row id), candidate (int64), probability (float32; sums to 1 per
    anchor), distance (float32, raw l2; exact mode takes it from its float32 products, see
    blockwise.py), sorted by anchor then descending probability. Anchors with no candidate are
    absent. The random variant is reproducible for a given seed and block plan (max_block_mb).
    `anchors` (row ids) restricts the anchors (candidates stay all clips), e.g. to shard a build;
    default all. Past cfg.partition_rows rows the table is built in part files (`tablefile.py`),
    never whole in memory; `.write(path)` stores it, `.frame()` reads it whole."""
    return _build(embeddings, video_index, cfg, progress, anchors, cfg.partition_rows)


def build_negative_table(embeddings: np.ndarray, video_index: np.ndarray, cfg: NegativeConfig,
                         progress: bool = True, anchors: np.ndarray | None = None) -> pd.DataFrame:
    """`negative_table` held whole in memory, as a DataFrame (any size: mind the memory)."""
    return _build(embeddings, video_index, cfg, progress, anchors, None).frame()


def _build(embeddings, video_index, cfg: NegativeConfig, progress: bool, anchors,
           partition_rows: int | None) -> NegativeTable:
    vid = check_inputs(embeddings, video_index)
    ids = anchor_ids(anchors, len(vid))
    build = exact_table if cfg.mode == "exact" else approximate_table
    return build(embeddings, vid, cfg, progress, ids, partition_rows)
