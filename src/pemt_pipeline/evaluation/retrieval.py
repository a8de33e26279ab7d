"""Cross-modal retrieval metrics (no Kedro): audio->video and video->audio on held-out videos."""

from __future__ import annotations

from typing import Any

import numpy as np

# the two retrieval directions: video queries against audio items, and audio queries against video
RETRIEVAL_DIRECTIONS = ("video_to_audio", "audio_to_video")
DIRECTION_LABEL = {"video_to_audio": "video → audio", "audio_to_video": "audio → video"}


def cosine_scores(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """[n_q, n_g] cosine similarities of feature rows."""
    q, g = (np.asarray(v, dtype=np.float64) for v in (query, gallery))
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return q @ g.T


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true match in scores [n, n] (row = query, column = gallery
    item, the true match on the diagonal); ties count against the query."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or len(s) == 0:
        raise ValueError(f"retrieval scores must be a square [n, n] matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("retrieval scores hold NaN or infinite values")
    return (s >= np.diag(s)[:, None]).sum(1)


def retrieval_metrics(scores: np.ndarray, ks=(1, 5, 10)) -> dict[str, Any]:
    """recall@k (share of queries whose match ranks <= k), median rank, and their chance levels
    for a random ranking of n items (recall@k = k/n, median rank = (n+1)/2)."""
    r = ranks(scores)
    n = len(r)
    out: dict[str, Any] = {"n": n}
    for k in ks:
        out[f"recall@{k}"] = float((r <= k).mean())
        out[f"chance_recall@{k}"] = min(1.0, k / n)
    out["median_rank"] = float(np.median(r))
    out["chance_median_rank"] = (n + 1) / 2
    return out
