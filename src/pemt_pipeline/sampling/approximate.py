"""Approximate negative table with faiss nearest-neighbour indexes (NegativeConfig.mode="approximate").

Each step of the exact rules (`table.py`) is approximated as follows, per batch of anchors:

* Normalisation statistics. A uniform sample of `sample_size` candidates (own video excluded)
  gives sample estimates of d_min, d_max and of the quantile cuts q_lo, q_hi (order statistics of
  the sample at t_s = floor(S * (1 - interval) / 2)). The index results refine the wanted end:
  d_min = min(sample min, nearest found) for similar, d_max = max(sample max, farthest found) for
  dissimilar; the other end stays the sample's (an underestimated d_max moves the range cut of
  `similar` down by alpha times its error: the main source of lost recall, see the benchmark).
* trim="range", similar: the K nearest kept candidates are found with an IVF-Flat L2 index
  (`nlist` lists, default ~4*sqrt(N), `n_probe` visited; k-means of 10 iterations on
  `train_size` vectors): it is asked for K * oversample + (largest video's clips)
  neighbours, own-video ones are dropped, then the range cut on the estimated d_min/d_max, and the
  first K kept remain.
* trim="range", dissimilar: farthest-neighbour search as maximum inner product: with
  c' = [c, ||c||^2 / lam] and q' = [-2a, lam], <q', c'> = ||a - c||^2 - ||a||^2, so an
  inner-product IVF index over c' (default ~sqrt(N) lists) returns the farthest candidates (lam
  only balances the extra coordinate for the index's k-means). Then as for similar, from the far
  end.
* random: K candidates drawn uniformly from the sample members inside the estimated interval.
* trim="quantile", similar/dissimilar: a quantile cut at rank t ~ M*(1-interval)/2 (25k of 1M
  candidates) cannot be located by a neighbour search without counting every nearer candidate,
  and a sample places it only to within about M*sqrt(p(1-p)/S) ranks. These variants therefore
  take the K nearest (farthest) *sample* members inside the estimated interval: the right
  distribution (candidates just beyond the estimated cut), not the exact table's identities.
  Use trim="range" or exact mode when the exact candidates matter.

Memory: O(N*d), not bounded by max_block_mb: a float32 copy of the embeddings for the queries
plus the index's own copy (N*(d+1) floats for dissimilar); query batches are sized by
max_block_mb. faiss runs on CPU; the sample products use torch on the configured device.

Measured (benchmarks/bench_negatives.py, clustered synthetic set, K=32, n_probe=16): 21x faster
than exact at N=1M, but recall@K of the exact range/similar table only 0.82 at 100k and 0.33 at
1M: the range cut d_min + alpha*(d_max - d_min) lands inside the dense band of same-class
candidates, and the sampled d_max moves it by more candidates the larger N (an exhaustive flat
index gives 0.998 at 100k). An exact per-anchor d_max (e.g. a farthest-list scan bounded by the
triangle inequality on the IVF lists) is the missing piece.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .blockwise import pick_random, pick_smallest, resolve_device
from .config import NegativeConfig, first_bad_row
from .table import TableParts, range_bounds, trim_count

FAISS_REQUIREMENT = "faiss-cpu==1.15.1"


def import_faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"approximate mode needs faiss: pip install '{FAISS_REQUIREMENT}'") from exc
    return faiss


def load_matrix(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings as one C-contiguous float32 array (the index copies them anyway)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    first_bad_row(x, 0)
    return x


def auto_nlist(n: int, cfg: NegativeConfig, inner_product: bool) -> int:
    """About 4*sqrt(N) lists for the L2 index, sqrt(N) for the inner-product one (its probing by
    largest centroid product degrades with many small lists); at least 16 vectors a list."""
    per = 1.0 if inner_product else 4.0
    return int(cfg.nlist or max(1, min(round(per * math.sqrt(n)), n // 16)))


def build_index(faiss, data: np.ndarray, inner_product: bool, cfg: NegativeConfig,
                rng: np.random.Generator):
    """IVF-Flat (or flat) index over data [N, D] with L2 or inner-product metric."""
    n, dim = data.shape
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    nlist = auto_nlist(n, cfg, inner_product)
    if cfg.index == "flat" or nlist < 2:
        index = faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim) if inner_product else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        index.cp.seed, index.cp.niter = int(cfg.seed), 10
        index.cp.min_points_per_centroid = 1  # k-means on train_size points, not 39 per list
        take = rng.choice(n, size=min(n, max(cfg.train_size, 16 * nlist)), replace=False)
        index.train(data[np.sort(take)])
        index.nprobe = int(min(cfg.n_probe, nlist))
    for lo in range(0, n, 65536):
        index.add(data[lo:lo + 65536])
    return index


def far_augment(x: np.ndarray, lam: float) -> np.ndarray:
    """[N, d] -> [N, d+1] rows [c, ||c||^2 / lam] for the farthest-neighbour (MIPS) index."""
    sq = np.einsum("nd,nd->n", x, x, dtype=np.float64)
    return np.concatenate([x, (sq / lam)[:, None].astype(np.float32)], axis=1)


def far_scale(x: np.ndarray, rng: np.random.Generator) -> float:
    """lam such that ||c||^2 / lam spreads like one embedding coordinate (index quality only)."""
    s = x[rng.choice(len(x), size=min(len(x), 8192), replace=False)].astype(np.float64)
    spread = np.std((s * s).sum(1))
    return float(spread / max(np.sqrt(s.var(0).mean()), 1e-12)) if spread > 0 else 1.0


class ApproximateBuilder:
    def __init__(self, embeddings: np.ndarray, vid: np.ndarray, cfg: NegativeConfig):
        self.faiss = import_faiss()
        self.cfg, self.emb, self.vid = cfg, embeddings, vid
        self.x = load_matrix(embeddings)  # [N, d]
        self.n, self.d = self.x.shape
        self.device = resolve_device(cfg.device)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        _, inv, counts = np.unique(vid, return_inverse=True, return_counts=True)
        self.max_own = int(counts.max())
        self.m = self.n - counts[inv]  # [N] candidates per clip
        self.index = self._index()

    def _index(self):
        """The index of the wanted end (range trimming): L2 for similar, inner product on
        [c, ||c||^2/lam] for dissimilar; None otherwise."""
        if self.cfg.trim != "range" or self.cfg.variant == "random":
            return None
        if self.cfg.variant == "similar":
            return build_index(self.faiss, self.x, False, self.cfg, self.rng)
        self.lam = far_scale(self.x, self.rng)
        return build_index(self.faiss, far_augment(self.x, self.lam), True, self.cfg, self.rng)

    def batch_size(self) -> int:
        s = min(self.n, self.cfg.sample_size)
        per = s * 16 + self.k_search() * 32 + self.cfg.k * self.d * 8 + 256
        return int(max(1, min(8192, self.cfg.max_block_mb * 2**20 // per)))

    def k_search(self) -> int:
        return int(min(self.n, self.cfg.k * self.cfg.oversample + self.max_own))

    def run(self, anchor_rows: np.ndarray, progress: bool) -> pd.DataFrame:
        anchor_rows = anchor_rows[self.m[anchor_rows] > 0]
        parts, step = TableParts(self.cfg), self.batch_size()
        with tqdm(total=len(anchor_rows), unit="anchor", disable=not progress,
                  desc=f"negatives ({self.cfg.variant}, approximate)") as bar:
            for lo in range(0, len(anchor_rows), step):
                self._batch(anchor_rows[lo:lo + step], parts)
                bar.update(min(step, len(anchor_rows) - lo))
        return parts.frame()

    def _sample(self, a: torch.Tensor, rows: np.ndarray):
        """[B, S] sample distances (NaN = own video), sample row ids."""
        s = min(self.n, self.cfg.sample_size)
        ids = np.arange(self.n) if s >= self.n else np.sort(self.rng.choice(self.n, s, replace=False))
        c = torch.from_numpy(self.x[ids]).to(self.device)
        d2 = (a.square().sum(1)[:, None] + c.square().sum(1)[None]
              - 2.0 * a @ c.T)  # [B, S]
        dist = d2.clamp_min(0).sqrt()
        own = torch.from_numpy(self.vid[rows][:, None] == self.vid[ids][None]).to(self.device)
        return dist.masked_fill(own, math.nan), torch.from_numpy(ids).to(self.device)

    def _batch(self, rows: np.ndarray, parts: TableParts) -> None:
        cfg = self.cfg
        a = torch.from_numpy(self.x[rows]).to(self.device)  # [B, d]
        sample, ids = self._sample(a, rows)
        dmin = sample.nan_to_num(nan=math.inf).amin(1).double()
        dmax = sample.nan_to_num(nan=-math.inf).amax(1).double()
        k = torch.full((len(rows),), cfg.k, device=self.device)
        if cfg.trim == "quantile":
            lo, hi = self._sample_quantiles(sample)
        elif self.index is not None:
            found, found_ids = self._search(rows)  # [B, k_search] (NaN = own video / missing)
            if cfg.variant == "similar":
                dmin = torch.minimum(dmin, found.nan_to_num(nan=math.inf).amin(1).double())
            else:
                dmax = torch.maximum(dmax, found.nan_to_num(nan=-math.inf).amax(1).double())
            lo, hi = range_bounds(dmin, dmax, cfg.interval)
            pos, dist, valid = self._pick(found, found_ids, lo, hi, k)
            return self._emit(parts, rows, pos, dist, valid, dmin, dmax)
        else:
            lo, hi = range_bounds(dmin, dmax, cfg.interval)
        if cfg.variant == "random":
            pos, dist, valid, _ = pick_random(sample, ids, lo.float(), hi.float(), k, cfg.k,
                                              self.gen)
        else:
            pos, dist, valid = self._pick(sample, ids.expand(len(rows), -1), lo, hi, k)
        self._emit(parts, rows, pos, dist, valid, dmin, dmax)

    def _pick(self, dist, ids, lo, hi, k):
        """The K nearest (similar) or farthest (dissimilar) of dist [B, L] inside [lo, hi]."""
        dist = dist.nan_to_num(nan=math.inf if self.cfg.variant == "similar" else -math.inf)
        if self.cfg.variant == "similar":
            return pick_smallest(dist, ids, lo.float(), hi.float(), k, self.cfg.k)
        pos, val, valid = pick_smallest(-dist, ids, -hi.float(), -lo.float(), k, self.cfg.k)
        return pos, -val, valid

    def _sample_quantiles(self, sample: torch.Tensor):
        """Sample order statistics at t_s = floor(S_valid * (1 - interval) / 2) from each end."""
        s_valid = (~torch.isnan(sample)).sum(1)
        t = torch.from_numpy(trim_count(s_valid.cpu().numpy(), self.cfg.interval)).to(sample.device)
        ordered = sample.nan_to_num(nan=math.inf).sort(dim=1).values
        lo = ordered.gather(1, t[:, None])[:, 0]
        hi = ordered.gather(1, (s_valid - 1 - t).clamp_min(0)[:, None])[:, 0]
        return lo.double(), hi.double()

    def _search(self, rows: np.ndarray):
        """Nearest (similar) or farthest (dissimilar) neighbours -> distances [B, k_search] (NaN
        for own video / missing) and row ids."""
        q = self.x[rows]
        if self.cfg.variant == "similar":
            score, ids = self.index.search(q, self.k_search())
            d2 = score.astype(np.float64)
        else:
            qa = np.concatenate([-2.0 * q, np.full((len(q), 1), self.lam, np.float32)], axis=1)
            score, ids = self.index.search(np.ascontiguousarray(qa, dtype=np.float32),
                                           self.k_search())
            d2 = score.astype(np.float64) + np.einsum("nd,nd->n", q, q, dtype=np.float64)[:, None]
        drop = (ids < 0) | (self.vid[np.maximum(ids, 0)] == self.vid[rows][:, None])
        dist = np.where(drop, np.nan, np.sqrt(np.maximum(d2, 0.0)))
        return (torch.from_numpy(dist).float().to(self.device),
                torch.from_numpy(np.maximum(ids, 0)).to(self.device))

    def _emit(self, parts, rows, pos, dist, valid, dmin, dmax) -> None:
        valid = valid.cpu().numpy()
        cand = np.where(valid, pos.cpu().numpy(), 0)
        parts.add(rows, cand, valid, dist.double().cpu().numpy(), dmin.cpu().numpy(),
                  dmax.cpu().numpy())


def approximate_table(embeddings: np.ndarray, vid: np.ndarray, cfg: NegativeConfig,
                      progress: bool, anchor_rows: np.ndarray) -> pd.DataFrame:
    return ApproximateBuilder(embeddings, vid, cfg).run(anchor_rows, progress)
