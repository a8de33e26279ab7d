"""The content-aware negative table (METHOD.md section 4): rules, brute-force reference, entry point.

For every anchor clip a, the candidates are all clips of *other* videos (M_a of them); d is the
raw l2 distance ||x_a - x_c|| in the chosen embedding space.

Normalisation (per anchor, min-max over all of that anchor's candidates)
    d~ = (d - d_min) / (d_max - d_min), in [0, 1];  d~ = 0 for every candidate when d_max = d_min.
    Per anchor, because the paper normalises the distances "of a positive": dense and sparse regions
    of the space then get the same [0, 1] scale, and the probabilities do not depend on the
    embedding's overall scale.

Trimming ("the 95% interval"), two documented readings, `NegativeConfig.trim`:
    quantile (default): the central `interval` share of the anchor's candidates, by empirical order
        statistics. With t = floor(M_a * (1 - interval) / 2), q_lo = d_(t+1) and q_hi = d_(M_a - t)
        (the (t+1)-th smallest and largest distance), a candidate is kept iff q_lo <= d <= q_hi:
        the t nearest and the t farthest are dropped (all of them when distances tie at a cut are
        kept). This is the statistical reading of "a 95% interval of the distances"; min-max
        normalisation is affine, so trimming normalised or raw distances is the same.
    range: the central `interval` of the normalised scale: kept iff alpha <= d~ <= 1 - alpha,
        alpha = (1 - interval) / 2, i.e. d within alpha*(d_max - d_min) of neither extreme. It drops
        only true near-duplicates and outliers relative to the anchor's own spread, and, unlike
        quantile trimming, its cut depends only on d_min and d_max, which a nearest-neighbour index
        finds: approximate mode reproduces the exact table only with trim="range" (see
        `approximate.py`).

Selection: the K "best-qualified" kept candidates, and their probabilities (eps = cfg.eps > 0 keeps
every kept candidate drawable, e.g. the far edge of `similar` where 1 - d~ = 0):
    similar     the K nearest kept candidates, p proportional to 1 - d~ + eps
    dissimilar  the K farthest kept candidates, p proportional to d~ + eps
    random      K kept candidates drawn uniformly without replacement, p uniform
  With quantile trimming the kept set has M_a - 2t >= 1 members; an anchor keeps min(K, kept) of
  them. Probabilities are normalised to sum to 1 per anchor. Anchors without candidates (their
  video holds every clip) are absent from the table. All distances equal: d~ = 0, all weights equal,
  p uniform.

Computation: `blockwise.py` (exact: blocks of anchors against streamed candidate chunks, memory
bounded by max_block_mb whatever N is) and `approximate.py` (faiss index). This module's
`reference_table` builds the same table from the full N x N matrix (tests, benchmark baseline).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .config import NegativeConfig, check_inputs, first_bad_row
from .tablefile import COLUMNS, NegativeTable, TableSink, sorted_columns


def trim_count(m: np.ndarray, interval: float) -> np.ndarray:
    """t = floor(M * (1 - interval) / 2): candidates dropped at each end (quantile trimming)."""
    m = np.asarray(m, dtype=np.int64)
    return np.floor(m * (1.0 - interval) / 2.0 + 1e-9).astype(np.int64)


def range_bounds(dmin, dmax, interval: float):
    """Raw-distance bounds of range trimming: d_min + alpha*(d_max-d_min), d_max - alpha*(...)."""
    alpha = (1.0 - interval) / 2.0
    span = dmax - dmin
    return dmin + alpha * span, dmax - alpha * span


def normalise(d, dmin, dmax):
    """Per-anchor min-max normalisation to [0, 1] (0 where d_max == d_min). Broadcasts [B,K]/[B,1]."""
    d, dmin, dmax = (np.asarray(v, dtype=np.float64) for v in (d, dmin, dmax))
    span = dmax - dmin
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, np.clip((d - dmin) / safe, 0.0, 1.0), 0.0)


def weights(dn: np.ndarray, variant: str, eps: float) -> np.ndarray:
    """Unnormalised sampling weights of normalised distances."""
    if variant == "similar":
        return 1.0 - dn + eps
    if variant == "dissimilar":
        return dn + eps
    return np.ones_like(dn)


def probabilities(d: np.ndarray, valid: np.ndarray, dmin, dmax, variant: str, eps: float):
    """[B, K] raw distances (valid mask) -> [B, K] float64 probabilities summing to 1 per row."""
    w = np.where(valid, weights(normalise(d, dmin, dmax), variant, eps), 0.0)
    total = w.sum(axis=1, keepdims=True)
    return w / np.where(total > 0, total, 1.0)


def frame(anchor, candidate, probability, distance) -> pd.DataFrame:
    """The table: sorted by anchor, then descending probability (ties keep their given order)."""
    return pd.DataFrame(sorted_columns(anchor, candidate, probability, distance), copy=False)


def empty_frame() -> pd.DataFrame:
    return frame(*(np.zeros(0) for _ in COLUMNS))


class TableParts:
    """Accumulates per-block selections [B, K] and turns them into the table: in memory, or spilled
    to part files past `partition_rows` rows (`tablefile.TableSink`)."""

    def __init__(self, cfg: NegativeConfig, partition_rows: int | None = None):
        self.cfg = cfg
        self.sink = TableSink(partition_rows, cfg.k)

    def add(self, anchors: np.ndarray, cands: np.ndarray, valid: np.ndarray, dist: np.ndarray,
            dmin: np.ndarray, dmax: np.ndarray) -> None:
        """anchors [B] ids, cands [B, K] ids, valid [B, K], dist [B, K] raw distances, dmin/dmax [B]."""
        rows, cols = np.nonzero(valid)
        dist = np.asarray(dist, dtype=np.float64)
        p = probabilities(dist, valid, dmin[:, None], dmax[:, None], self.cfg.variant, self.cfg.eps)
        self.sink.add(anchors[rows].astype(np.int64), cands[rows, cols].astype(np.int64),
                      p[rows, cols].astype(np.float32), dist[rows, cols].astype(np.float32))

    def result(self) -> NegativeTable:
        return self.sink.result()

    def frame(self) -> pd.DataFrame:
        return self.result().frame()


def anchor_ids(anchors: np.ndarray | None, n: int) -> np.ndarray:
    if anchors is None:
        return np.arange(n, dtype=np.int64)
    ids = np.unique(np.asarray(anchors, dtype=np.int64))
    if len(ids) and (ids[0] < 0 or ids[-1] >= n):
        raise ValueError(f"anchors must be row ids in [0, {n}), got range [{ids[0]}, {ids[-1]}]")
    return ids


def reference_table(embeddings: np.ndarray, video_index: np.ndarray, cfg: NegativeConfig,
                    use_mm: bool = False) -> pd.DataFrame:
    """Brute force: the full N x N distance matrix, sorted rows, the rules above applied literally.

    For tests and the benchmark's naive baseline (memory N^2). use_mm=False computes distances from
    differences (slow, exact); True uses torch.cdist's matrix-product path. The random variant
    draws with numpy from cfg.seed (it cannot match the blockwise draws, only their rules)."""
    vid = check_inputs(embeddings, video_index)
    x = torch.from_numpy(np.array(embeddings, dtype=np.float32))  # a private copy
    first_bad_row(x.numpy(), 0)
    mode = "use_mm_for_euclid_dist" if use_mm else "donot_use_mm_for_euclid_dist"
    dist = torch.cdist(x, x, compute_mode=mode)  # [N, N]
    own = torch.from_numpy(vid[:, None] == vid[None, :])
    sd, si = dist.masked_fill(own, float("inf")).sort(dim=1, stable=True)  # [N, N] ascending
    m = (~own).sum(1).numpy()
    sd, si = sd.numpy(), si.numpy()
    pick, valid = _reference_pick(sd, m, cfg)
    rows = np.flatnonzero(m > 0)
    dmin = sd[rows, 0].astype(np.float64)
    dmax = sd[rows, m[rows] - 1].astype(np.float64)
    parts = TableParts(cfg)
    parts.add(rows, np.take_along_axis(si[rows], pick[rows], 1), valid[rows],
              np.take_along_axis(sd[rows], pick[rows], 1), dmin, dmax)
    return parts.frame()


def _reference_pick(sd: np.ndarray, m: np.ndarray, cfg: NegativeConfig):
    """Per sorted row: the [start, end) range of kept ranks, then the variant's K of them
    -> [N, K] columns of the sorted rows, valid mask."""
    n, k = len(m), cfg.k
    cand = np.zeros((n, k), dtype=np.int64)
    valid = np.zeros((n, k), dtype=bool)
    rng = np.random.default_rng(cfg.seed)
    for i in range(n):
        if m[i] == 0:
            continue
        row = sd[i, :m[i]]
        if cfg.trim == "quantile":
            t = int(trim_count(m[i], cfg.interval))
            lo, hi = row[t], row[m[i] - 1 - t]
        else:
            lo, hi = range_bounds(row[0], row[-1], cfg.interval)
        start, end = np.searchsorted(row, lo, "left"), np.searchsorted(row, hi, "right")
        kept = np.arange(start, end)
        if cfg.variant == "similar":
            pick = kept[:k]
        elif cfg.variant == "dissimilar":
            pick = kept[::-1][:k]
        else:
            pick = rng.permutation(kept)[:k]
        cand[i, :len(pick)] = pick
        valid[i, :len(pick)] = True
    return cand, valid
